"""What the service hands a worker for one trial, and how the worker may end it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from service.spec.hyperparameters import defaults_for
from service.spec.lr_range import LrFinder
from service.spec.workload import Workload

FinishState = Literal["complete", "pruned", "failed"]


class Assignment(BaseModel):
    """A claimed trial, as the worker receives it."""

    trial_id: int
    lease_id: str
    study: str
    number: int
    params: dict[str, Any]
    workload: Workload
    lease_seconds: float
    heartbeat_seconds: float
    direction: Literal["minimize", "maximize"] = "minimize"
    # Lineage: 1 for an original trial; a retry of a trial whose worker went silent has the
    # number of the trial it retries and, when that lineage saved one, the step of the
    # checkpoint to resume from (GET /api/v1/trials/{id}/checkpoint).
    attempt: int = 1
    retry_of: int | None = None
    resume_step: int | None = None
    # train: train the workload with `params`. lr_finder: run the LR range test (`finder`) on
    # it instead, reporting the smoothed loss of batch i as step i.
    task: Literal["train", "lr_finder"] = "train"
    finder: LrFinder | None = None
    # A multi-objective study's objective names, in order: a user workload may give its values
    # as a list (worker/sdk.py set_value), which the worker names with these.
    objectives: list[str] | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """Searched params from the service win over the workload's fixed values and the defaults.

        A built-in model gets every parameter it understands; a user workload gets exactly the
        names the study defines (fixed or searched and active in this trial)."""
        values = defaults_for(self.workload.model)
        values.update(self.workload.fixed)
        values.update(self.params)
        return values
