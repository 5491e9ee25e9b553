"""The study definition as a whole: workload, space, sampler, pruner, budget, preset."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from service.spec import presets
from service.spec.constraints import Constraint, check_constraints
from service.spec.hyperparameters import USER_PARAM_NAME, ParamRule, defaults_for, rules_for
from service.spec.lr_range import LrFinder, LrSweep
from service.spec.objectives import MAX_OBJECTIVES, Objective, check_objectives
from service.spec.pruners import MedianPruner, Pruner
from service.spec.samplers import Sampler, TpeSampler
from service.spec.sizes import bruteforce_size, check_grid, check_seed, check_space
from service.spec.space import CategoricalParam, ConditionalParam, FloatParam, IntParam, Param, active_order, case_key
from service.spec.strict import Strict
from service.spec.workload import Workload

# Study and team names end up in URLs and in Optuna's `<team>/<study>` names, so they stay
# to a conservative, documented pattern.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
NAME_RULE = "1-63 characters: lowercase letters, digits, '_', '.', '-'; starting with a letter or digit"


class Budget(Strict):
    """The study ends when the first of its budgets runs out; trials running then finish normally."""

    n_trials: int = Field(20, ge=1, le=1_000_000)
    max_concurrent: int = Field(8, ge=1, le=10_000)
    max_retries: int = Field(0, ge=0, le=100)
    # Epochs reported across the study's trials, retries included; a claim is refused once the
    # epochs reported plus those the running trials may still train reach it.
    max_epochs: int | None = Field(None, ge=1, le=1_000_000_000)
    # Wall time of the study's trials, claim to end, summed; and a deadline for claims.
    max_seconds: float | None = Field(None, gt=0, le=1e10)
    until: datetime | None = None

    @field_validator("until")
    @classmethod
    def _zoned(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.utcoffset() is None:
            raise ValueError("needs a time zone, e.g. 2026-12-31T18:00:00Z")
        return v


STUDY_KINDS = ("search", "lr_sweep", "lr_finder")
# The LR range test that `auto_lr_range` runs first is a study of its own, named after its parent.
FINDER_SUFFIX = "-lr-finder"


class StudySpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_RULE)
    # search: sample `space` with `sampler`. lr_sweep: every lr of a log grid (`sweep`), all else
    # fixed in `workload`. lr_finder: one LR range test run (`finder`) on a built-in model.
    kind: Literal[STUDY_KINDS] = "search"  # type: ignore[valid-type]
    sweep: LrSweep | None = None
    finder: LrFinder | None = None
    # A search study that first runs the LR range test and narrows its lr range to the suggestion.
    auto_lr_range: bool = False
    # The direction of the reported curve (the validation loss) and of a single objective.
    direction: Literal["minimize", "maximize"] = "minimize"
    # Several objectives (service/spec/objectives.py): a Pareto front, no pruning.
    objectives: list[Objective] | None = Field(None, min_length=2, max_length=MAX_OBJECTIVES)
    workload: Workload = Field(default_factory=Workload)
    # Adds the recommended ranges for one optimizer to `space` (entries given in `space` or fixed
    # in `workload` win); see GET /api/v1/presets.
    preset: Literal[presets.PRESET_NAMES] | None = None  # type: ignore[valid-type]
    # Fine-tuning a pretrained model: the preset's lr range moves 1-2 orders of magnitude down.
    finetune: bool = False
    space: dict[str, Param] = Field(default_factory=dict)
    sampler: Sampler = Field(default_factory=TpeSampler)
    pruner: Pruner = Field(default_factory=lambda: MedianPruner(kind="median"))
    budget: Budget = Field(default_factory=Budget)
    # Bounds on reported metrics (service/spec/constraints.py): infeasible trials are never best.
    constraints: list[Constraint] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "search")
        if data.get("objectives") and "pruner" not in data:
            data = {**data, "pruner": {"kind": "none"}}  # Optuna prunes one objective only
        if kind in ("lr_sweep", "lr_finder"):
            # The whole curve is the point: no pruning unless asked for; and a grid for the sweep.
            data = {"pruner": {"kind": "none"}, **data}
            if kind == "lr_sweep":
                data.setdefault("sweep", {})
                data.setdefault("sampler", {"kind": "grid", "seed": 0})
            else:
                data.setdefault("finder", {})
            if data.get("preset") is not None and not data.get("space"):
                # A preset contributes its fixed values (the optimizer); the lr is the sweep's.
                applied = presets.apply({**data, "space": {}})
                return {**applied, "space": {}}
        return presets.apply(data)

    @model_validator(mode="after")
    def _kind_fits(self) -> StudySpec:
        if self.kind == "search":
            if self.sweep is not None:
                raise ValueError("sweep: only for kind lr_sweep")
            if self.finder is not None and not self.auto_lr_range:
                raise ValueError("finder: only for kind lr_finder, or with auto_lr_range: true")
            if self.auto_lr_range:
                self._check_auto_lr_range()
            return self
        if self.auto_lr_range:
            raise ValueError(f"auto_lr_range: only for kind search, not {self.kind}")
        if self.space:
            raise ValueError(f"space: a {self.kind} searches only the lr and fixes everything else; put fixed values in workload")
        rules = rules_for(self.workload.model)
        if rules is not None and "lr" not in rules:
            raise ValueError(f"kind: workload '{self.workload.model}' has no lr to sweep")
        if self.kind == "lr_sweep":
            if self.sampler.kind != "grid":
                raise ValueError(f"sampler.kind: an lr_sweep samples its grid; got {self.sampler.kind}")
            assert self.sweep is not None
            if "lr" in self.workload.fixed:
                raise ValueError("workload.lr: an lr_sweep sets the lr; remove it from the workload")
            self.budget.n_trials = len(self.sweep.grid()) * self.sweep.seeds
        else:
            if not self.workload.is_builtin:
                raise ValueError(f"kind: the LR range test runs the built-in models (mlp, cnn), not '{self.workload.model}'")
            self.budget.n_trials = 1
            self.budget.max_concurrent = 1
        return self

    def _check_multi_objective(self) -> None:
        assert self.objectives is not None
        check_objectives(self.objectives, self.workload.is_builtin, self.workload.model, self.direction)
        if self.kind != "search":
            raise ValueError(f"objectives: a {self.kind} has one objective, the loss")
        if self.pruner.kind != "none":
            raise ValueError(
                f"pruner.kind: Optuna cannot prune a multi-objective study (trial.report and its pruners take one "
                f"objective); use kind: none, not {self.pruner.kind}"
            )
        if self.sampler.kind == "cmaes":
            raise ValueError("sampler.kind: CMA-ES optimizes one objective; for several use nsga2, nsga3, tpe, gp or random")

    def directions(self) -> list[str]:
        """Optuna's directions: one per objective."""
        return [o.direction for o in self.objectives] if self.objectives else [self.direction]

    def _check_auto_lr_range(self) -> None:
        if not self.workload.is_builtin:
            raise ValueError(f"auto_lr_range: the LR range test runs the built-in models (mlp, cnn), not '{self.workload.model}'")
        lr = self.space.get("lr")
        if not isinstance(lr, FloatParam):
            raise ValueError("auto_lr_range: needs space.lr as a float parameter (not conditional, not categorical)")
        optimizer = self.space.get("optimizer")
        if isinstance(optimizer, CategoricalParam) and len(optimizer.choices) > 1:
            raise ValueError(
                "auto_lr_range: the LR range test runs one optimizer, and lr ranges differ between optimizers; "
                "fix the optimizer in workload (or give one choice)"
            )
        if len(self.name) + len(FINDER_SUFFIX) > 63:
            raise ValueError(f"name: with auto_lr_range at most {63 - len(FINDER_SUFFIX)} characters (its range test is '<name>{FINDER_SUFFIX}')")

    def search_space(self) -> dict[str, Param]:
        """The parameters the sampler draws: `space`, or the sweep's lr (and seed)."""
        if self.kind == "lr_sweep" and self.sweep is not None:
            space: dict[str, Param] = {"lr": FloatParam(type="float", low=self.sweep.low, high=self.sweep.high, log=True)}
            if self.sweep.seeds > 1:
                space["seed"] = IntParam(type="int", low=0, high=self.sweep.seeds - 1)
            return space
        return dict(self.space)

    def check_params(self, params: dict[str, Any], where: str = "params") -> dict[str, Any]:
        """Values for some of the searched parameters (an enqueued trial, a carried-over one), as
        a trial of this study could have drawn them: each in its range, a conditional's by its
        parent's value, nothing outside the space. The ones left out are sampled. Returns them
        normalised (an int written 64.0 is 64); ValueError names the first that does not fit."""
        space = self.search_space()
        for name in params:
            if name not in space:
                raise ValueError(f"{where}.{name}: not a searched parameter of this study; searched: {', '.join(sorted(space)) or 'none'}")
        fixed = {**defaults_for(self.workload.model), **self.workload.fixed}
        checked: dict[str, Any] = {}
        for name in active_order(space):
            if name not in params:
                continue
            param = space[name]
            if isinstance(param, ConditionalParam):
                if param.on in space and param.on not in params:
                    raise ValueError(f"{where}.{name}: its range depends on {param.on}; give {param.on} too")
                parent = params.get(param.on, fixed.get(param.on))
                case = param.case_for(parent)
                if case is None:
                    raise ValueError(f"{where}.{name}: not a parameter when {param.on} is {parent!r}")
                param = case
            try:
                checked[name] = param.check_value(params[name])
            except ValueError as exc:
                raise ValueError(f"{where}.{name}: {exc}") from None
        return checked

    def with_lr_range(self, low: float, high: float) -> StudySpec:
        """This spec with its lr distribution narrowed (auto_lr_range)."""
        lr = self.space["lr"]
        assert isinstance(lr, FloatParam)
        space = {**self.space, "lr": lr.model_copy(update={"low": low, "high": high})}
        return self.model_copy(update={"space": space})

    def finder_spec(self) -> StudySpec:
        """The LR range test study that `auto_lr_range` runs first: this workload, with every
        other searched parameter fixed at its middle (geometric for log ranges) or first choice."""
        fixed = dict(self.workload.fixed)
        for name, p in self.space.items():
            if name == "lr":
                continue
            if isinstance(p, CategoricalParam):
                fixed[name] = p.choices[0]
            elif isinstance(p, (FloatParam, IntParam)):
                # In logs and halves: the product or the sum of two extreme bounds overflows.
                mid = 10 ** ((math.log10(p.low) + math.log10(p.high)) / 2) if p.log else p.low / 2 + p.high / 2
                fixed[name] = round(mid) if isinstance(p, IntParam) else mid
            elif isinstance(p, ConditionalParam):
                continue  # cases depend on a parent; the workload's default holds for the test
        workload = self.workload.model_dump(exclude_none=True)
        workload = {k: v for k, v in workload.items() if k not in fixed}
        workload.update(fixed)
        return StudySpec.model_validate(
            {
                "name": self.name + FINDER_SUFFIX,
                "kind": "lr_finder",
                "direction": self.direction,
                "workload": workload,
                "finder": (self.finder or LrFinder()).model_dump(),
                "budget": {"n_trials": 1, "max_concurrent": 1, "max_retries": self.budget.max_retries},
            }
        )

    @model_validator(mode="after")
    def _space_fits_workload(self) -> StudySpec:
        model = self.workload.model
        rules = rules_for(model)
        fixed = self.workload.fixed
        for name, param in self.space.items():
            where = f"space.{name}"
            if rules is None:
                if not re.fullmatch(USER_PARAM_NAME, name):
                    raise ValueError(f"{where}: a parameter name must match {USER_PARAM_NAME}")
            elif name not in rules:
                raise ValueError(f"{where}: unknown parameter for workload '{model}'; allowed: {', '.join(sorted(rules))}")
            if name in fixed:
                raise ValueError(f"{where}: '{name}' is both fixed in workload and searched in space; keep one")
            rule = None if rules is None else rules[name]
            if isinstance(param, ConditionalParam):
                self._check_conditional(where, name, param, rule)
            elif rule is not None:
                _check_param_against_rule(where, param, rule)
        if self.sampler.kind == "grid":
            for name, param in self.space.items():
                if isinstance(param, ConditionalParam):
                    raise ValueError(f"space.{name}: the grid sampler needs a fixed grid; it cannot take a conditional")
                if isinstance(param, FloatParam) and param.step is None:
                    raise ValueError(f"space.{name}: the grid sampler needs a step on float parameters (or a categorical)")
        return self

    @model_validator(mode="after")
    def _within_limits(self) -> StudySpec:
        """What a claim will build from this definition fits in the API process (limits.py)."""
        check_space(self.space)
        check_constraints(self.constraints, self.workload.is_builtin, self.workload.model)
        if self.objectives:
            self._check_multi_objective()
        if rules_for(self.workload.model) is None:
            _check_env_names([*self.space, *self.workload.fixed])
        if self.sampler.kind == "grid" and self.kind == "search":
            check_grid(self.space)  # an lr_sweep's grid has its own bound (LrSweep)
        if self.sampler.kind == "bruteforce":
            # Every combination once, then the study is done: what Optuna's sampler does inside
            # study.optimize (it stops the study), decided here by the budget instead.
            fixed = {**defaults_for(self.workload.model), **self.workload.fixed}
            self.budget.n_trials = min(self.budget.n_trials, bruteforce_size(self.space, fixed))
        check_seed(self.sampler.seed, self.budget.n_trials)
        return self

    def _check_conditional(self, where: str, name: str, param: ConditionalParam, rule: ParamRule | None) -> None:
        parent = self.space.get(param.on)
        if param.on == name:
            raise ValueError(f"{where}.on: a parameter cannot depend on itself")
        if isinstance(parent, ConditionalParam):
            raise ValueError(f"{where}.on: '{param.on}' is itself conditional; a parent must be categorical or fixed")
        if parent is not None and not isinstance(parent, CategoricalParam):
            raise ValueError(f"{where}.on: '{param.on}' must be a categorical parameter to branch on")
        if parent is not None:
            allowed = [case_key(c) for c in parent.choices]
        elif param.on in self.workload.fixed or param.on in defaults_for(self.workload.model):
            parent_rule = (rules_for(self.workload.model) or {}).get(param.on)
            if parent_rule is not None and parent_rule.kind == "categorical":
                allowed = [case_key(c) for c in parent_rule.choices]
            else:
                allowed = None  # a fixed value of a user workload: any key may match it
        else:
            raise ValueError(f"{where}.on: '{param.on}' is neither in the space nor fixed in the workload")
        for key, case in param.cases.items():
            if allowed is not None and key not in allowed:
                raise ValueError(f"{where}.cases.{key}: '{key}' is not a value of '{param.on}'; allowed: {', '.join(allowed)}")
            if rule is not None:
                _check_param_against_rule(f"{where}.cases.{key}", case, rule)


def _check_env_names(names: list[str]) -> None:
    """A plugin or command reads its parameters as HPO_PARAM_<NAME>: two names that differ only
    in case would be one variable there (the review's `LR` fixed beside `lr` searched)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.upper(), name)
        if other != name:
            raise ValueError(f"space.{name}: '{name}' and '{other}' differ only in case; both would be HPO_PARAM_{name.upper()}")


def _check_param_against_rule(where: str, param: Any, rule: ParamRule) -> None:
    if rule.kind == "categorical" and not isinstance(param, CategoricalParam):
        raise ValueError(f"{where}: must be categorical; expected {rule.allowed()}")
    if isinstance(param, CategoricalParam):
        bad = [c for c in param.choices if not rule.accepts(c)]
        if bad:
            raise ValueError(f"{where}.choices: {bad} not allowed; expected {rule.allowed()}")
        return
    if rule.kind == "int" and isinstance(param, FloatParam):
        raise ValueError(f"{where}.type: must be int (or categorical); expected {rule.allowed()}")
    assert isinstance(param, (FloatParam, IntParam))
    for bound in ("low", "high"):
        value = getattr(param, bound)
        if not rule.accepts(value):
            raise ValueError(f"{where}.{bound}: {value} is outside the allowed range; expected {rule.allowed()}")
