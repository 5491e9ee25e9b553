"""A study after it was created: trials queued with given params, budgets raised, a stopped or
finished study resumed, and a new study cloned from one, with its trials carried over.

Callers own the transaction and hold the study's row lock (studies.get(..., lock=True)), which
claims take too: the budget checks here cannot race a claim."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service.db.models import StudyRecord, Team
from service.engine import studies
from service.engine.coordination import TrialViews
from service.engine.factories import distributions_for
from service.engine.storage import CARRIED_KEY, optuna_errors
from service.errors import InvalidRequest
from service.spec import StudySpec

# What a PATCH may change: how much more to run and how wide, and whether claims go on.
PATCHABLE = ("budget", "stopped")
CLONE_HINT = "clone it with the change instead: POST /api/v1/studies/{name}/clone"


def enqueue(session: Session, storage: BaseStorage, views: TrialViews, record: StudyRecord, params_list: list[dict[str, Any]]) -> list[int]:
    """Trials with these params, claimed before any sampled one (Optuna's enqueue_trial: WAITING
    trials with fixed params; a claim pops the oldest first). Params left out are sampled. They
    count against n_trials like any trial handed out. Returns their numbers."""
    spec = studies.spec_of(record)
    if spec.kind != "search":
        raise InvalidRequest(f"kind: trials are enqueued in search studies; a {spec.kind} runs its own trials")
    checked = []
    for i, params in enumerate(params_list):
        try:
            checked.append(spec.check_params(params, where=f"trials.{i}.params"))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
    started = _started(session, storage, views, record)
    if started + len(checked) > spec.budget.n_trials:
        raise InvalidRequest(
            f"budget.n_trials: {started} of the study's {spec.budget.n_trials} trials are handed out or queued, "
            f"so {len(checked)} more do not fit; raise it first (PATCH {{\"budget\": {{\"n_trials\": {started + len(checked)}}}}})"
        )
    numbers = []
    with optuna_errors():
        study_id = storage.get_study_id_from_name(record.optuna_name)
        for params in checked:
            # What Study.enqueue_trial adds, through the storage so the number comes back.
            template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": params})
            numbers.append(storage.get_trial_number_from_id(storage.create_new_trial(study_id, template_trial=template)))
    return numbers


def _started(session: Session, storage: BaseStorage, views: TrialViews, record: StudyRecord) -> int:
    """The trials handed out or queued, as the claims count them: the flat view's originals
    (read incrementally, on this transaction's connection), not a read of every trial."""
    with optuna_errors():
        study_id = views.optuna_study_id(storage, record.id, record.optuna_name)
        view = views.study_trials(storage, study_id, conn=session.connection())
    with view.lock:
        return view.originals


def refuse_fixed_fields(name: str, body: dict[str, Any]) -> None:
    """A PATCH names only what may change; the space, sampler, pruner, workload... are what the
    study's trials were sampled and judged under."""
    for key in body:
        if key in PATCHABLE:
            continue
        if key in StudySpec.model_fields:
            raise InvalidRequest(
                f"{key}: cannot change on an existing study (its trials were sampled and judged under it); "
                + CLONE_HINT.format(name=name)
            )
        raise InvalidRequest(f"{key}: not a field of a study update; allowed: {', '.join(PATCHABLE)}")


def update(
    session: Session, storage: BaseStorage, views: TrialViews, record: StudyRecord, budget: dict[str, int] | None, stopped: bool | None
) -> None:
    """Raise (or lower, down to what is handed out) the budgets, change max_concurrent, and
    stop or resume: a resumed study's claims go on until its (raised) n_trials is reached."""
    if budget:
        spec = studies.spec_of(record)
        if "n_trials" in budget and spec.kind != "search":
            raise InvalidRequest(f"budget.n_trials: a {spec.kind}'s trials follow from its definition; clone it to change them")
        data = spec.model_dump(mode="json")
        data["budget"].update(budget)
        changed = StudySpec.model_validate(data)  # a ValidationError is the API's 422, naming the field
        started = _started(session, storage, views, record)
        if changed.budget.n_trials < started:
            raise InvalidRequest(f"budget.n_trials: {started} trials are handed out or queued already; at least {started}")
        record.spec = changed.model_dump(mode="json")
        with optuna_errors():
            # optuna-dashboard shows the definition next to the study: it stays the current one.
            study_id = storage.get_study_id_from_name(record.optuna_name)
            storage.set_study_user_attr(study_id, "hpo_definition", record.spec)
    if stopped is True:
        studies.stop(session, record)
    elif stopped is False:
        studies.resume(session, record)


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, mapping by mapping (JSON merge patch: null removes a key), except
    that an entry of `space` is replaced whole: a parameter that changes type keeps nothing of
    its old range."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif key == "space" and isinstance(value, dict) and isinstance(out.get("space"), dict):
            space = dict(out["space"])
            for name, param in value.items():
                if param is None:
                    space.pop(name, None)
                else:
                    space[name] = param
            out["space"] = space
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def clone(
    session: Session, storage: BaseStorage, team: Team, record: StudyRecord, name: str, changes: dict[str, Any], carry: bool
) -> tuple[StudyRecord, int, int]:
    """A new study of the team from this one's definition with `changes`; with `carry`, this
    study's finished trials that fit the new space go with it (Optuna's add_trials),
    so its sampler starts informed. Returns (the new study, trials carried, trials left out)."""
    data = merged(studies.spec_of(record).model_dump(mode="json"), {**changes, "name": name})
    spec = StudySpec.model_validate(data)  # a ValidationError is the API's 422, naming the field
    new = studies.create(session, storage, team, spec)
    carried = left_out = 0
    if carry:
        carried, left_out = carry_trials(storage, new.optuna_name, spec, studies.all_trials(storage, record), record.optuna_name)
    return new, carried, left_out


def carry_trials(storage: BaseStorage, optuna_name: str, spec: StudySpec, trials: list[FrozenTrial], origin: str) -> tuple[int, int]:
    """Copies of the finished (complete, pruned, failed) trials whose params fit `spec`'s space, marked with where
    they came from (CARRIED_KEY: they inform the sampler and the pruner, and do not count against
    n_trials). Returns (carried, left out)."""
    copies = []
    left_out = 0
    for t in trials:
        if not t.state.is_finished():
            continue  # running or waiting: it would never finish in the other study
        try:
            params = spec.check_params(t.params)
        except ValueError:
            left_out += 1
            continue
        # A lineage names trial ids of the study it came from: meaningless here.
        system_attrs = {k: v for k, v in t.system_attrs.items() if k != "retry_history"}
        system_attrs[CARRIED_KEY] = f"{origin}#{t.number}"
        copies.append(
            optuna.trial.create_trial(
                state=t.state,
                values=t.values,
                params=params,
                distributions=distributions_for(spec, params),
                user_attrs=t.user_attrs,
                system_attrs=system_attrs,
                intermediate_values=t.intermediate_values,
            )
        )
    with optuna_errors():
        study = optuna.load_study(study_name=optuna_name, storage=storage)
        study.add_trials(copies)
    return len(copies), left_out
