"""The study definition as a whole: workload, space, sampler, pruner, budget, preset."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.spec import presets
from service.spec.hyperparameters import USER_PARAM_NAME, ParamRule, defaults_for, rules_for
from service.spec.space import CategoricalParam, ConditionalParam, FloatParam, IntParam, Param, case_key
from service.spec.workload import Workload

# Study and team names end up in URLs and in Optuna's `<team>/<study>` names, so they stay
# to a conservative, documented pattern.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
NAME_RULE = "1-63 characters: lowercase letters, digits, '_', '.', '-'; starting with a letter or digit"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampler(_Strict):
    kind: Literal["tpe", "random", "grid", "qmc", "cmaes"] = "tpe"
    seed: int | None = None


class MedianPruner(_Strict):
    kind: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class NoPruner(_Strict):
    kind: Literal["none"]


Pruner = Annotated[Union[MedianPruner, NoPruner], Field(discriminator="kind")]


class Budget(_Strict):
    n_trials: int = Field(20, ge=1, le=1_000_000)
    max_concurrent: int = Field(8, ge=1, le=10_000)
    max_retries: int = Field(0, ge=0, le=100)


class StudySpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description=NAME_RULE)
    direction: Literal["minimize", "maximize"] = "minimize"
    workload: Workload = Field(default_factory=Workload)
    # Adds the recommended ranges for one optimizer to `space` (entries given in `space` or fixed
    # in `workload` win); see GET /api/v1/presets.
    preset: Literal[presets.PRESET_NAMES] | None = None  # type: ignore[valid-type]
    # Fine-tuning a pretrained model: the preset's lr range moves 1-2 orders of magnitude down.
    finetune: bool = False
    space: dict[str, Param] = Field(default_factory=dict)
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=lambda: MedianPruner(kind="median"))
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        return presets.apply(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _space_fits_workload(self) -> StudySpec:
        model = self.workload.model
        rules = rules_for(model)
        fixed = self.workload.fixed
        for name, param in self.space.items():
            where = f"space.{name}"
            if rules is None:
                if not re.match(USER_PARAM_NAME, name):
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
