"""The `importance` plot and the numbers behind it: Optuna's fANOVA importances of the
parameters, computed on an in-memory copy of (a sample of) the complete trials."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial

from service.engine.optuna_adapter.internals import SCRATCH_STUDY_LOGGER
from service.engine.plot_helpers import NothingToPlot, _complete, _finite, _text
from service.spec import StudySpec

_SCRATCH = "hpo-importance"


class _QuietScratchStudies(logging.Filter):
    """Optuna logs every in-memory study it creates; ours (one per importance) is just scratch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _SCRATCH not in record.getMessage()


logging.getLogger(SCRATCH_STUDY_LOGGER).addFilter(_QuietScratchStudies())


# Optuna's fANOVA grows faster than linearly with the trials (~5 s for 400, ~50 s for 1500):
# above this many complete trials it runs on an evenly spaced sample of them.
IMPORTANCE_MAX_TRIALS = 300


def importance_sample(trials: Sequence[FrozenTrial]) -> tuple[list[FrozenTrial], int]:
    """The complete trials fANOVA runs on, and how many complete trials there are in all."""
    done = _complete(trials)
    k = IMPORTANCE_MAX_TRIALS
    if len(done) <= k:
        return done, len(done)
    # Evenly spaced over the trial numbers: deterministic, and early and late trials both count.
    return [done[round(i * (len(done) - 1) / (k - 1))] for i in range(k)], len(done)


def importances(spec: StudySpec, trials: Sequence[FrozenTrial]) -> dict[str, float]:
    """fANOVA importances (Optuna's, seeded, so the same trials give the same numbers)."""
    if spec.objectives:
        raise NothingToPlot("importances are computed for one objective; this study has several")
    done, _ = importance_sample(trials)
    if len(done) < 2:
        raise NothingToPlot(f"importance needs at least 2 complete trials; this study has {len(done)}")
    names = {n for t in done for n in t.params}
    if not any(len({repr(t.params[n]) for t in done if n in t.params}) > 1 for n in names):
        raise NothingToPlot("importance needs a parameter that varies across the complete trials; none does")
    if len({t.value for t in done}) < 2:
        raise NothingToPlot("every complete trial has the same objective value: no parameter explains anything")
    # An in-memory copy of the trials: no database, no sampler, and nothing written anywhere.
    storage = optuna.storages.InMemoryStorage()
    direction = optuna.study.StudyDirection.MINIMIZE if spec.direction == "minimize" else optuna.study.StudyDirection.MAXIMIZE
    storage.create_new_study([direction], _SCRATCH)
    study = optuna.Study(study_name=_SCRATCH, storage=storage)
    for t in done:
        try:
            study.add_trial(t)
        except ValueError:
            continue  # a param outside its recorded distribution: skip the trial, not the plot
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        raise NothingToPlot(f"fANOVA could not compute importances from these trials: {exc}") from exc
    result = {k: float(v) for k, v in result.items() if _finite(v)}
    if not result:
        raise NothingToPlot("fANOVA found no parameter shared by all complete trials")
    return result


def _importance(fig: Figure, ax: Any, spec: StudySpec, trials: list[FrozenTrial], extra: dict[str, Any]) -> None:
    found = extra.get("importances") or importances(spec, trials)
    ordered = sorted(found.items(), key=lambda kv: kv[1])  # barh draws bottom-up: most important on top
    names, values = [_text(k) for k, _ in ordered], [v for _, v in ordered]
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.set_xlim(0, max(max(values) * 1.15, 0.05))
    used, total = importance_sample(trials)
    sample = f" on {len(used)} of {total} complete trials" if len(used) < total else ""
    ax.set(xlabel=f"importance (fANOVA, normalized{sample})", title=f"Parameter importances: {_text(spec.name)}")
    ax.grid(alpha=0.3, axis="x")
