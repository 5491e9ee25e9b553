"""A thin, typed client for the study API (httpx + pydantic). No service code is imported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from hpo_client.errors import HpoError, ServerUnreachable, error_from_response
from hpo_client.trial import ClaimedTrial, TrialResult
from hpo_client.trial import claim as claim_trial
from hpo_client.trial import optimize as run_trials
from hpo_client.models import (
    AuditEvent,
    BestTrial,
    Preset,
    Study,
    StudyCloned,
    StudyImported,
    StudyCreated,
    TokenCreated,
    TokenList,
    Trial,
)

PLOT_KINDS = ("history", "curves", "lr", "importance", "parallel", "pareto")
YAML_SUFFIXES = (".yaml", ".yml")

Definition = Mapping[str, Any] | str | Path


class Client:
    """The study API (and, for an admin token, the token API) as one team's token sees it.

    >>> with Client("http://127.0.0.1:8000", "hpo_...") as hpo:
    ...     hpo.submit("examples/digits_adam.yaml")
    ...     hpo.best("digits-adam")

    Every method raises a subclass of :class:`hpo_client.errors.HpoError` carrying the
    service's message: NotFoundError, ConflictError, InvalidRequestError, AuthError,
    ServerError, ServerUnreachable."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach {self.url}: {exc or type(exc).__name__}", method=method, path=path
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    @staticmethod
    def _study_path(name: str, *rest: str) -> str:
        # Names are [a-z0-9_.-]; quoting keeps anything else from walking to another route.
        return "/".join(["/api/v1/studies", quote(name, safe=""), *rest])

    # -- studies ----------------------------------------------------------------------------

    def health(self) -> bool:
        """True when the service process answers /healthz (needs no token)."""
        try:
            return self._request("GET", "/healthz").json().get("status") == "ok"
        except HpoError:
            return False

    def wait_until_healthy(self, timeout: float, *, running: Callable[[], bool] = lambda: True) -> bool:
        """Poll /healthz until the service answers (True), or `timeout` seconds pass or
        `running()` turns False (False): for whoever just started the server process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and running():
            if self.health():
                return True
            time.sleep(0.2)
        return False

    def submit(self, definition: Definition, *, name: str | None = None) -> StudyCreated:
        """Create a study from a definition: a dict, or the path of a YAML or JSON file (sent as
        is, so the service's messages point into it). `name` overrides the definition's name.
        The answer carries `warnings` about choices that are usually wrong."""
        if isinstance(definition, (str, Path)):
            path = Path(definition)
            raw = path.read_bytes()
            is_yaml = path.suffix.lower() in YAML_SUFFIXES or (
                path.suffix.lower() != ".json" and not raw.lstrip().startswith((b"{", b"["))
            )
            if name is None:
                media = "application/yaml" if is_yaml else "application/json"
                return StudyCreated.model_validate(
                    self._request("POST", "/api/v1/studies", content=raw, headers={"Content-Type": media}).json()
                )
            try:
                loaded = yaml.safe_load(raw) if is_yaml else json.loads(raw)
            except (ValueError, yaml.YAMLError) as exc:
                raise ValueError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: the study definition must be a mapping")
            definition = loaded
        body = dict(definition)
        if name is not None:
            body["name"] = name
        return StudyCreated.model_validate(self._request("POST", "/api/v1/studies", json=body).json())

    def studies(self) -> list[Study]:
        """The team's studies."""
        return [Study.model_validate(s) for s in self._request("GET", "/api/v1/studies").json()["studies"]]

    def study(self, name: str) -> Study:
        """One study: state, counts by trial state, best trial, diagnosis."""
        return Study.model_validate(self._request("GET", self._study_path(name)).json())

    def trials(self, name: str) -> list[Trial]:
        """Every trial of the study, in the service's order (by number)."""
        return [Trial.model_validate(t) for t in self._request("GET", self._study_path(name, "trials")).json()["trials"]]

    def queue(self) -> dict[str, Any]:
        """The team's trials a worker could claim now: `depth` in all, and per study (needs a
        worker or admin token): what an autoscaler reads."""
        return dict(self._request("GET", "/api/v1/queue").json())

    def best(self, name: str) -> BestTrial | None:
        """The best complete trial so far, or None when no trial is complete."""
        return self.study(name).best_trial

    def stop(self, name: str) -> Study:
        """No more trials are handed out; running ones are pruned at their next report."""
        return Study.model_validate(self._request("POST", self._study_path(name, "stop")).json())

    # -- after create: queue trials, raise budgets, resume, clone --------------------------

    def enqueue(self, name: str, params_list: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[int]:
        """Queue trials with these params (a single dict: one trial), claimed before sampled
        ones; params left out are sampled. They count in n_trials. Returns their numbers."""
        items = [params_list] if isinstance(params_list, Mapping) else list(params_list)
        body = {"trials": [{"params": dict(params)} for params in items]}
        return list(self._request("POST", self._study_path(name, "trials"), json=body).json()["numbers"])

    def update(self, name: str, *, stopped: bool | None = None, **budget: Any) -> Study:
        """Change the budgets given, e.g. n_trials=40, max_concurrent=4 (None: kept), and stop
        (stopped=True) or resume (False) the study."""
        body: dict[str, Any] = {}
        given = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in budget.items() if v is not None}
        if given:
            body["budget"] = given
        if stopped is not None:
            body["stopped"] = stopped
        return Study.model_validate(self._request("PATCH", self._study_path(name), json=body).json())

    def extend(
        self, name: str, *, n_trials: int | None = None, max_concurrent: int | None = None, max_retries: int | None = None
    ) -> Study:
        """Change the budgets given; raising n_trials makes a finished study run again."""
        if n_trials is None and max_concurrent is None and max_retries is None:
            raise ValueError("extend: give at least one of n_trials, max_concurrent, max_retries")
        return self.update(name, n_trials=n_trials, max_concurrent=max_concurrent, max_retries=max_retries)

    def resume(self, name: str, *, n_trials: int | None = None) -> Study:
        """Resume a stopped study (optionally raising n_trials in the same change)."""
        return self.update(name, n_trials=n_trials, stopped=False)

    def clone(
        self, name: str, new_name: str, *, changes: Mapping[str, Any] | None = None, carry_trials: bool = False
    ) -> StudyCloned:
        """A new study from this one's definition with `changes` merged in (None removes a key; a
        space entry is replaced whole); with carry_trials, the finished trials that fit the new
        space are copied into it (`carried`; the others are `left_out`)."""
        body = {"name": new_name, "changes": dict(changes or {}), "carry_trials": carry_trials}
        return StudyCloned.model_validate(self._request("POST", self._study_path(name, "clone"), json=body).json())

    # -- Optuna SQLite files in and out --------------------------------------------------------

    def export(self, name: str) -> bytes:
        """The study as an Optuna SQLite file: `optuna.load_study(study_name=name, storage="sqlite:///<file>")`."""
        return self._request("GET", self._study_path(name, "export")).content

    def import_file(
        self, data: bytes | str | Path, *, into: str | None = None, name: str | None = None, from_study: str | None = None
    ) -> StudyImported:
        """Copy the finished trials of an Optuna SQLite file's study (`from_study`, or its only
        one) into the study `into`, or into a new study `name` made from the file's definition
        (an `export`). `data`: the file's bytes, or its path."""
        if (into is None) == (name is None):
            raise ValueError("import_file: give into= (an existing study) or name= (a new one), not both")
        body = data if isinstance(data, bytes) else Path(data).read_bytes()
        params = {"from_study": from_study} if from_study else {}
        headers = {"Content-Type": "application/octet-stream"}
        if into is not None:
            response = self._request("POST", self._study_path(into, "import"), content=body, params=params, headers=headers)
        else:
            response = self._request("POST", "/api/v1/studies/import", content=body, params={**params, "name": name}, headers=headers)
        return StudyImported.model_validate(response.json())

    def import_database_study(self, into: str, optuna_study: str) -> StudyImported:
        """Copy the finished trials of another Optuna study on the service's database (admin)."""
        response = self._request("POST", self._study_path(into, "import", "database"), json={"optuna_study": optuna_study})
        return StudyImported.model_validate(response.json())

    def delete(self, name: str) -> None:
        """Delete the study and its trials, in Optuna's storage too. There is no undo."""
        self._request("DELETE", self._study_path(name))

    def plot(self, name: str, kind: str) -> bytes:
        """A PNG of the study: history, curves, lr, importance or parallel."""
        path = self._study_path(name, "plots", quote(kind, safe=""))
        return self._request("GET", path, headers={"Accept": "image/png"}).content

    def report(self, name: str) -> str:
        """The study's report, one self-contained HTML document."""
        return self._request("GET", self._study_path(name, "report"), headers={"Accept": "text/html"}).text

    def presets(self) -> list[Preset]:
        """The presets a definition can name, with what each expands to."""
        return [Preset.model_validate(p) for p in self._request("GET", "/api/v1/presets").json()["presets"]]

    def wait(self, name: str, *, poll: float = 2.0, timeout: float | None = None) -> Study:
        """Poll until the study is no longer running (finished or stopped) and return it.
        Raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            study = self.study(name)
            if not study.running:
                return study
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"study '{name}' is still running after {timeout}s")
            time.sleep(poll)

    # -- tokens and audit (an admin token's calls; others get PermissionDeniedError) -------

    def create_token(
        self,
        role: str,
        name: str | None = None,
        expires_in_days: int | None = None,
        expires_at: datetime | str | None = None,
    ) -> TokenCreated:
        """A new token of the team: role admin, member, worker or viewer; optionally what it is
        for and when it stops working (one of expires_in_days, expires_at; a naive datetime is
        UTC). The answer's `token` is shown only this once: the service keeps only its SHA-256."""
        body: dict[str, Any] = {"role": getattr(role, "value", role)}
        if name is not None:
            body["name"] = name
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
        return TokenCreated.model_validate(self._request("POST", "/api/v1/tokens", json=body).json())

    def tokens(self) -> TokenList:
        """The team's name and its tokens, revoked and expired ones included (never the tokens)."""
        return TokenList.model_validate(self._request("GET", "/api/v1/tokens").json())

    def revoke_token(self, prefix: str) -> None:
        """Revoke the team's token with this prefix (hpo_<8 hex>): it answers 401 from now on.
        Revoking it again changes nothing. NotFoundError for no such token in the team;
        ConflictError for the team's last active admin token. The service answers 204 with no
        body (and a token may revoke itself), so there is nothing to return: see tokens()."""
        self._request("DELETE", "/".join(["/api/v1/tokens", quote(prefix, safe="")]))

    def audit(self, limit: int = 100, before_id: int | None = None) -> list[AuditEvent]:
        """The team's audit trail, newest first (at most `limit` events, 1-1000). For older
        events, pass the last event's id as `before_id`: `audit(before_id=events[-1].id)`;
        an empty list means there are none."""
        params: dict[str, Any] = {"limit": limit}
        if before_id is not None:
            params["before_id"] = before_id
        events = self._request("GET", "/api/v1/audit", params=params).json()["events"]
        return [AuditEvent.model_validate(e) for e in events]

    # -- running trials from user code (hpo_client/trial.py), with a worker or admin token --

    def trial(self, study: str, worker_id: str | None = None) -> ClaimedTrial:
        """Claim one trial of `study` to run here, as a context manager:

            with hpo.trial("my-study") as t:
                for step in range(1, 11):
                    if t.report(loss_after(step, **t.params), step):
                        raise TrialPruned()

        From the claim on, a daemon thread heartbeats its lease until the block ends (so use a
        `with`), and the end finishes the trial: complete with `t.value` (else the best reported
        value), pruned (TrialPruned, or after a report answered True), failed on an exception
        (re-raised) or without any value. Raises NoTrialAvailable when the study has nothing to
        run now. `worker_id` (shown on the trial) defaults to sdk-<host>-<pid>. See
        hpo_client.trial for every case."""
        return claim_trial(self, study, worker_id)

    def optimize(
        self,
        study: str,
        objective: Callable[[ClaimedTrial], float | None],
        n_trials: int | None = None,
        timeout: float | None = None,
        catch: Sequence[type[Exception]] | type[Exception] = (),
        worker_id: str | None = None,
    ) -> list[TrialResult]:
        """Like Optuna's study.optimize: run `objective(t)` in `with self.trial(study) as t`
        repeatedly; a number it returns is the trial's value (None: the best reported one).
        Stops when the study has no trial to run now (budget used up, stopped, finished, or its
        max_concurrent running elsewhere), after `n_trials` trials, or once `timeout` seconds have
        passed (checked between trials). An exception of `catch` leaves its trial failed and the
        loop goes on; any other propagates after its trial is finished failed. A trial whose lease
        was lost is recorded (FAIL, lease_lost) and the loop goes on. Returns a TrialResult
        (number, state, value, reason) per trial run."""
        return run_trials(self, study, objective, n_trials, timeout, catch, worker_id)
