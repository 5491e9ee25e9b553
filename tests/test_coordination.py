"""The flat coordination path against plain Optuna: the trial view (service/engine/coordination.py)
and the pruning rule (service/engine/pruning.py) give the same trials, reported in the same
interleaved order, the same pruning decision at every step, and the incremental trial view
counts what a full read counts."""

from __future__ import annotations

import random
import threading
import uuid
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import text

from service.engine import coordination
from service.engine.optuna_adapter import rows as optuna_rows
from service.engine.pruning import CurveSummary, PercentileRule, flat_rule
from service.engine.factories import build_sampler
from service.engine.storage import make_storage
from service.settings import Settings
from service.spec import StudySpec
from service.spec.pruners import MedianPruner
from tests.conftest import digits_definition
from tests.curve_schedule import run_schedule


# The trial views of the module's one database (the storage fixture's), as a process keeps them.
VIEWS = coordination.TrialViews()


@pytest.fixture(scope="module")
def storage(db_url: str, settings: Settings) -> optuna.storages.BaseStorage:
    return make_storage(db_url, settings)


def flat_decision(storage: optuna.storages.BaseStorage, study_id: int, rule: PercentileRule, trial_id: int) -> bool:
    """What a report decides: the trial's curve (as the database has it) against the view."""
    with storage._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        _, values = optuna_rows.state_and_curve(conn, trial_id)
    summary = CurveSummary.of(values)
    view = VIEWS.study_trials(storage, study_id)
    with view.lock:
        return rule.prune(summary, view.at_step(summary.last_step))


STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def replay(storage: optuna.storages.BaseStorage, direction: str, pruner_args: dict[str, int], seed: int) -> tuple[list[bool], list[bool]]:
    """Runs one random schedule of trials (curve_schedule) through plain Optuna and through the flat path."""
    raw = optuna.create_study(direction=direction, pruner=optuna.pruners.MedianPruner(**pruner_args))
    flat = optuna.create_study(storage=storage, study_name=f"parity-{uuid.uuid4().hex[:8]}", direction=direction)
    rule = flat_rule(MedianPruner(kind="median", **pruner_args), direction)
    assert isinstance(rule, PercentileRule)
    raw_answers: list[bool] = []
    flat_answers: list[bool] = []

    def report(pair: tuple[optuna.Trial, optuna.Trial], step: int, value: float) -> bool:
        r, f = pair
        r.report(value, step)
        raw_answers.append(r.should_prune())
        storage.set_trial_intermediate_value(f._trial_id, step, value)
        flat_answers.append(flat_decision(storage, flat._study_id, rule, f._trial_id))
        return raw_answers[-1]

    def end(pair: tuple[optuna.Trial, optuna.Trial], state: str, value: float) -> None:
        result = value if state == "complete" else None
        raw.tell(pair[0], result, state=STATES[state])
        flat.tell(pair[1], result, state=STATES[state])

    run_schedule(seed, 40, lambda: (raw.ask(), flat.ask()), report, end)
    return raw_answers, flat_answers


@pytest.mark.parametrize(
    ("direction", "pruner_args", "seed"),
    [
        ("minimize", {"n_startup_trials": 5, "n_warmup_steps": 2}, 0),
        ("minimize", {"n_startup_trials": 2, "n_warmup_steps": 0, "interval_steps": 2, "n_min_trials": 3}, 1),
        ("maximize", {"n_startup_trials": 3, "n_warmup_steps": 1}, 2),
    ],
)
def test_pruning_decisions_match_optunas_median_pruner(
    storage: optuna.storages.BaseStorage, direction: str, pruner_args: dict[str, int], seed: int
) -> None:
    raw_answers, flat_answers = replay(storage, direction, pruner_args, seed)
    assert len(raw_answers) > 100
    assert 0 < sum(raw_answers) < len(raw_answers)  # both answers occur: the comparison means something
    assert flat_answers == raw_answers


def test_incremental_view_counts_what_a_full_read_counts(storage: optuna.storages.BaseStorage) -> None:
    study = optuna.create_study(storage=storage, study_name=f"view-{uuid.uuid4().hex[:8]}")
    first = [study.ask() for _ in range(3)]
    view = VIEWS.study_trials(storage, study._study_id)
    assert (view.originals, len(view.completed), view.waiting) == (3, 0, 0)
    # The oldest finishes last; an enqueued trial waits; one fails and is not counted as complete.
    first[1].report(1.0, 1)
    study.tell(first[1], 1.0)
    study.tell(first[2], state=TrialState.FAIL)
    study.enqueue_trial({"x": 1.0})
    view = VIEWS.study_trials(storage, study._study_id)
    assert (view.originals, len(view.completed), view.waiting) == (4, 1, 1)
    assert view.completed[0].intermediate_values == {1: 1.0}
    study.tell(first[0], 2.0)
    view = VIEWS.study_trials(storage, study._study_id)
    full = storage.get_all_trials(study._study_id, deepcopy=False)
    assert view.originals == len(full)
    assert len(view.completed) == sum(t.state == TrialState.COMPLETE for t in full) == 2


def test_small_reads_agree_with_optunas_public_api(storage: optuna.storages.BaseStorage) -> None:
    """The direct reads of Optuna's tables (curves, states, retries) against FrozenTrials."""
    study = optuna.create_study(storage=storage, study_name=f"reads-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    for step, value in ((1, 2.5), (2, float("inf")), (3, float("-inf")), (5, 0.125)):
        trial.report(value, step)
    with storage._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        assert optuna_rows.state_and_curve(conn, trial._trial_id)[1] == storage.get_trial(trial._trial_id).intermediate_values
    study.tell(trial, 0.125)
    view = VIEWS.study_trials(storage, study._study_id)
    assert view.completed[-1].intermediate_values == {1: 2.5, 2: float("inf"), 3: float("-inf"), 5: 0.125}
    # A retry (Optuna's RetryHeartbeatStaleTrialCallback marks it with retry_history) is not an original.
    lost = study.ask()
    optuna.storages.RetryFailedTrialCallback()(study, storage.get_trial(lost._trial_id))
    view = VIEWS.study_trials(storage, study._study_id)
    assert view.originals == 2 and view.waiting == 1


def test_rows_written_in_the_callers_transaction_are_optunas_own(storage: optuna.storages.BaseStorage) -> None:
    """optuna_rows writes Optuna's rows itself (heartbeat, user attributes, intermediate values):
    Optuna must read them back as the rows its own storage methods write, and go on updating them."""
    backend = storage._backend  # type: ignore[attr-defined]
    study = optuna.create_study(storage=storage, study_name=f"rows-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    tid = trial._trial_id
    with backend.engine.begin() as conn:
        optuna_rows.record_heartbeat(conn, tid)
        optuna_rows.set_user_attrs(conn, tid, {"worker_id": "w1", "metrics": {"acc": 0.5}})
        state, curve = optuna_rows.insert_value_and_read(conn, tid, 1, 0.75)
    assert state == TrialState.RUNNING and curve == {}  # the statement sees the trial as before its insert
    with backend.engine.begin() as conn:
        # A repeated step keeps the first value, as the service's reports promise.
        assert optuna_rows.insert_value_and_read(conn, tid, 1, 0.1) == (TrialState.RUNNING, {1: 0.75})
        optuna_rows.set_user_attrs(conn, tid, {"worker_id": "w2"})
    frozen = storage.get_trial(tid)
    assert frozen.intermediate_values == {1: 0.75}
    assert frozen.user_attrs == {"worker_id": "w2", "metrics": {"acc": 0.5}}
    # Optuna's own heartbeat finds and updates the row we wrote (one row per trial), and its stale
    # check reads it: fresh now, stale once it is an hour old.
    storage.record_heartbeat(tid)  # type: ignore[attr-defined]
    assert tid not in backend._get_stale_trial_ids(study._study_id)
    with backend.engine.begin() as conn:
        conn.execute(text("UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '1 hour' WHERE trial_id = :t"), {"t": tid})
    assert backend._get_stale_trial_ids(study._study_id) == [tid]
    study.tell(trial, 0.75)
    with backend.engine.begin() as conn:
        # A finished trial takes no value (Optuna's UpdateFinishedTrialError; the report's 409).
        assert optuna_rows.insert_value_and_read(conn, tid, 2, 0.5) == (TrialState.COMPLETE, {1: 0.75})
        assert optuna_rows.state_and_curve(conn, tid) == (TrialState.COMPLETE, {1: 0.75})
        assert optuna_rows.state_and_curve(conn, -1) == (None, {})


class _Untouchable:
    """A study that fails the test if anything reads it."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"after_trial read study.{name}")


# Not bruteforce: its after_trial only decides whether to call study.stop() (the space is used
# up), which the service decides by the budget instead (StudySpec caps n_trials at the space's size;
# tests/test_samplers_pruners.py).
@pytest.mark.parametrize("kind", ["tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2", "nsga3"])
def test_after_trial_of_every_sampler_the_service_builds_does_nothing(kind: str) -> None:
    """A finish sets the trial's state through the storage instead of study.tell, which would
    also call the sampler's after_trial: safe only while that hook does nothing for the samplers
    the factories build (no constraints). A sampler whose hook acts must fail here."""
    space = {"optimizer": {"type": "categorical", "choices": ["sgd", "adam"]}}
    spec = StudySpec.model_validate(
        digits_definition("hooks", space=space, sampler={"kind": kind, "seed": 0}) | {"name": "hooks"}
    )
    sampler = build_sampler(spec, n_claimed=3)
    trial = optuna.trial.create_trial(
        params={"optimizer": "adam"},
        distributions={"optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam"])},
        value=0.5,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CmaEsSampler warns when it meets constraints
        for state, values in ((TrialState.COMPLETE, [0.5]), (TrialState.PRUNED, None), (TrialState.FAIL, None)):
            sampler.after_trial(_Untouchable(), trial, state, values)  # type: ignore[arg-type]


def test_concurrent_refreshes_end_up_where_one_full_read_does(storage: optuna.storages.BaseStorage) -> None:
    """Refreshes read outside the view's lock (reports of one study run side by side), so they
    overlap and apply in any order, some with older reads than the view already has."""
    backend = storage._backend  # type: ignore[attr-defined]
    study = optuna.create_study(storage=storage, study_name=f"overlap-{uuid.uuid4().hex[:8]}")
    view = VIEWS.study_trials(storage, study._study_id)
    done = threading.Event()
    errors: list[BaseException] = []

    def refresh_until_done() -> None:
        try:
            with backend.engine.connect() as conn:
                while not done.is_set():
                    view.refresh_on(conn)
                    conn.rollback()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=refresh_until_done) for _ in range(6)]
    for t in threads:
        t.start()
    rng = random.Random(0)
    running: list[optuna.Trial] = []
    for _ in range(60):
        if running and rng.random() < 0.5:
            trial = running.pop(rng.randrange(len(running)))
            trial.report(rng.random(), 1)
            state = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
            study.tell(trial, rng.random() if state == TrialState.COMPLETE else None, state=state)
            if rng.random() < 0.3:
                optuna.storages.RetryFailedTrialCallback()(study, storage.get_trial(trial._trial_id))
        else:
            running.append(study.ask())
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors
    view = VIEWS.study_trials(storage, study._study_id)
    fresh = coordination.StudyTrials(study._study_id)
    fresh.refresh(storage)
    full = storage.get_all_trials(study._study_id, deepcopy=False)
    assert view.originals == fresh.originals == sum(not t.system_attrs.get("retry_history") for t in full)
    assert view.unfinished == fresh.unfinished == {t._trial_id: t.state for t in full if not t.state.is_finished()}
    assert sorted(c.intermediate_values[1] for c in view.completed) == sorted(
        t.intermediate_values[1] for t in full if t.state == TrialState.COMPLETE
    )
    assert view.at_step(1).values.size == len(view.completed)
