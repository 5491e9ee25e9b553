"""What one process of the service keeps between requests, for the studies of its one
database. The API's Runtime holds one (service/api/deps.py); a test holds one per database."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from service.db import studies as study_rows
from service.engine.coordination import TrialViews
from service.engine.outages import Outages
from service.errors import NotFound
from service.spec import StudySpec


class StudySpecs:
    """Study definitions by our study id, parsed once: they never change, and ids are never
    reused. The least recently used beyond MAX are dropped."""

    MAX = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: OrderedDict[int, StudySpec] = OrderedDict()

    def get(self, session: Session, study_id: int) -> StudySpec:
        with self._lock:
            spec = self._specs.get(study_id)
            if spec is not None:
                self._specs.move_to_end(study_id)
                return spec
        stored = study_rows.study_spec(session, study_id)
        if stored is None:
            # Deleted since the lease was read: not in this transaction.
            raise NotFound(f"not found in Optuna's storage: 'study {study_id}'")
        spec = StudySpec.model_validate(stored)
        with self._lock:
            self._specs[study_id] = spec
            while len(self._specs) > self.MAX:
                self._specs.popitem(last=False)
        return spec


@dataclass
class EngineState:
    # The flat path's view of each study's trials (service/engine/coordination.py).
    views: TrialViews = field(default_factory=TrialViews)
    # The definitions the report path judges by.
    specs: StudySpecs = field(default_factory=StudySpecs)
    # When the database was last away (the reaper waits a grace period after).
    outages: Outages = field(default_factory=Outages)
