"""A Python client for the hpo service's study API.

    from hpo_client import Client

    with Client("http://127.0.0.1:8000", "hpo_...") as hpo:
        study = hpo.submit("examples/digits_adam.yaml")
        print(hpo.best(study.name))

Only httpx, pydantic, pydantic-settings and PyYAML: it imports nothing of the service."""

from hpo_client.client import PLOT_KINDS, Client
from hpo_client.config import ClientSettings, load_settings, write_config
from hpo_client.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    HpoError,
    InvalidDefinitionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    ServerUnreachable,
    ServiceUnavailable,
)
from hpo_client.models import (
    AuditEvent,
    BestTrial,
    Diagnosis,
    Preset,
    Study,
    StudyCloned,
    StudyCreated,
    StudyImported,
    Token,
    TokenCreated,
    TokenList,
    Trial,
)
from hpo_client.trial import ClaimedTrial, LeaseLost, NoTrialAvailable, TrialPruned, TrialResult

__all__ = [
    "PLOT_KINDS",
    "AuditEvent",
    "AuthError",
    "BestTrial",
    "ClaimedTrial",
    "Client",
    "ClientSettings",
    "ConfigError",
    "ConflictError",
    "Diagnosis",
    "HpoError",
    "InvalidDefinitionError",
    "InvalidRequestError",
    "LeaseLost",
    "NoTrialAvailable",
    "NotFoundError",
    "PermissionDeniedError",
    "Preset",
    "ServerError",
    "ServerUnreachable",
    "ServiceUnavailable",
    "Study",
    "StudyCloned",
    "StudyCreated",
    "StudyImported",
    "Token",
    "TokenCreated",
    "TokenList",
    "Trial",
    "TrialPruned",
    "TrialResult",
    "load_settings",
    "write_config",
]
