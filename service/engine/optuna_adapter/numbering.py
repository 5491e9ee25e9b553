"""RDBStorage with a new trial's number read through an index, not counted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import optuna
from optuna.storages._rdb import models as rdb_models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select


class NumberingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, except that a new trial's number is the study's previous trial's
    number + 1, read through the (study_id, trial_id) index (migration 0007), instead of a count
    of all the study's earlier trials: Optuna's count makes every claim slower as the study grows
    (a new trial 3.4 ms at 100 trials, 17.6 ms at 100,000; ours 3.3 and 3.9: bench/numbering.py),
    and the sampler does not need it.

    It is the same number. Optuna numbers a trial with the count of the study's trials with lower
    ids, holding the study's row lock (`_create_new_trial` takes it before this runs), and keeps
    it until the trial is committed; trials are only ever deleted with their study. So the
    numbers of a study, in id order, are 0, 1, 2, ... and the previous one plus one is the count.
    A trial made from a template (a retry, `add_trial`) goes through Optuna's own code."""

    def _get_prepared_new_trial(self, study_id: int, template_trial: FrozenTrial | None, session: Any) -> Any:
        if template_trial is not None:
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        trial = rdb_models.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=datetime.now())
        session.add(trial)
        session.flush()
        t = rdb_models.TrialModel
        previous = session.execute(
            select(t.number).where(t.study_id == study_id, t.trial_id < trial.trial_id).order_by(t.trial_id.desc()).limit(1)
        ).scalar()
        trial.number = 0 if previous is None else previous + 1
        return trial
