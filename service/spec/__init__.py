"""The study definition: what a team posts, what the service stores, what the worker trains.

Pure pydantic on purpose: the service validates with it and the worker imports it to read
its assignment, so nothing here may pull in FastAPI, SQLAlchemy, Optuna or torch."""

from service.spec.assignment import Assignment, FinishState
from service.spec.data import Dataset
from service.spec.hyperparameters import (
    BUILTIN_MODELS,
    CNN_PARAMS,
    MLP_PARAMS,
    OPTIMIZERS,
    SCHEDULES,
    TRAINING_PARAMS,
    USUAL_LR,
    ParamRule,
    defaults_for,
    rules_for,
)
from service.spec.space import CategoricalParam, ConditionalParam, FloatParam, IntParam, Param, active_order
from service.spec.pruners import MedianPruner, NoPruner, PercentilePruner, Pruner
from service.spec.samplers import Sampler
from service.spec.study import NAME_PATTERN, NAME_RULE, Budget, StudySpec
from service.spec.workload import Workload

__all__ = [
    "Assignment",
    "BUILTIN_MODELS",
    "Budget",
    "CNN_PARAMS",
    "CategoricalParam",
    "ConditionalParam",
    "Dataset",
    "FinishState",
    "FloatParam",
    "IntParam",
    "MLP_PARAMS",
    "MedianPruner",
    "NAME_PATTERN",
    "NAME_RULE",
    "NoPruner",
    "OPTIMIZERS",
    "Param",
    "ParamRule",
    "PercentilePruner",
    "Pruner",
    "SCHEDULES",
    "Sampler",
    "StudySpec",
    "TRAINING_PARAMS",
    "USUAL_LR",
    "Workload",
    "active_order",
    "defaults_for",
    "rules_for",
]
