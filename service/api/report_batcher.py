"""Group commit for reports: the reports that arrive while one batch is in the database go into
the next, and each is answered once its batch has committed.

Up to HPO_REPORT_BATCHES batches at a time per API process (Settings.report_batches), each on a
thread of the batcher's own: the batch's tokens are checked here, in one read, and the reports
go to service/engine/reports.py together. Under load a report costs a share of a batch's few statements and its one commit instead of a transaction of its own, and the event loop hands
reports to the database without a thread-pool hop per request. Alone, a report waits for
nothing: an idle batcher starts a batch at once. Under load it waits a little for more: the
workers a batch answers together report again together, and a batch started by the first of
them would leave the rest to the next one, so batches would alternate between a few reports
and many. A batch waits (up to GATHER_SECONDS) until as many reports are queued as the last
batch had; after a batch of one report, as with a single worker, it waits for nothing.

A batch that fails as a whole (a deadlock, a dropped connection) is retried report by report,
each in a transaction of its own, so each gets its own answer (and a 503 only if the database
is really gone)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from service import metrics
from service.api.deps import Runtime
from service.db.session import make_engine, make_sessionmaker
from service.db.teams import Principal, authenticate_many
from service.engine import reports as engine_reports
from service.errors import ServiceError

log = logging.getLogger("hpo.api")

# The most reports in one transaction; more wait for the next batch.
MAX_BATCH = 256
# The longest a batch waits for the reports it expects (see above): a little of each report's
# latency under load, against a batch of fewer reports (each batch costs the API process and the
# database about the same whatever its size).
GATHER_SECONDS = 0.002

_Outcome = bool | BaseException


@dataclass(frozen=True)
class PendingReport:
    """One POST /trials/{trial_id}/report: the bearer token, the validated body, and the route's
    role check (raises Forbidden)."""

    token: str
    trial_id: int
    lease_id: str
    step: int
    value: float
    authorize: Callable[[Principal], None] = field(compare=False, repr=False)

    @property
    def report(self) -> engine_reports.Report:
        return engine_reports.Report(self.trial_id, self.lease_id, self.step, self.value)


def decide(session: Session, runtime: Runtime, reports: Sequence[PendingReport]) -> list[_Outcome]:
    """Every report's outcome, in order, in the session's transaction (the caller commits): the
    tokens checked in one read and each report's role, then the reports that pass, together."""
    outcomes: list[_Outcome | None] = [None] * len(reports)
    callers = authenticate_many(session, sorted({r.token for r in reports}))
    allowed: list[tuple[int, Principal]] = []
    for i, r in enumerate(reports):
        caller = callers[r.token]
        try:
            if isinstance(caller, ServiceError):
                raise caller
            r.authorize(caller)
        except ServiceError as exc:
            outcomes[i] = exc
        else:
            allowed.append((i, caller))
    decided = engine_reports.report_many(session, runtime.storage, runtime.state, [(c.team, reports[i].report) for i, c in allowed], runtime.settings)
    for (i, _), outcome in zip(allowed, decided, strict=True):
        outcomes[i] = outcome
    return outcomes  # type: ignore[return-value]


class ReportBatcher:
    def __init__(self, runtime: Runtime, max_batch: int = MAX_BATCH, in_flight: int | None = None) -> None:
        """`in_flight`: batches in the database at once (default: the runtime's report_batches).
        Their leases are distinct (a worker reports again only once answered), and each batch
        locks its leases in trial id order."""
        self.runtime = runtime
        self.max_batch = max_batch
        self.in_flight = in_flight = runtime.settings.report_batches if in_flight is None else in_flight
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="hpo-reports")
        # A pool of its own, one connection per batch in flight, without the ping on every
        # checkout (a round trip in each batch): a batch on a connection the database dropped
        # fails as a whole, and its reports are retried on the runtime's pool, which pings.
        self._engine = make_engine(
            runtime.engine.url, runtime.settings, f"{runtime.settings.application_name}-reports",
            pool_pre_ping=False, pool_size=in_flight, max_overflow=0,
        )
        metrics.watch_pool(self._engine, in_flight)
        self._sessions = make_sessionmaker(self._engine)
        self._queue: list[tuple[PendingReport, asyncio.Future[bool]]] = []
        self._drains: set[asyncio.Task[None]] = set()
        self._last_batch = 1

    async def submit(self, report: PendingReport) -> bool:
        """The report's pruning decision once its batch has committed; raises its error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.append((report, future))
        if len(self._drains) < self.in_flight:
            self._drains.add(loop.create_task(self._run_batches()))
        return await future

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                await self._gather(loop)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                self._last_batch = len(batch)
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._run, [r for r, _ in batch])
                except BaseException as exc:
                    # Shutdown, or a bug: nobody is left waiting for an answer.
                    for _, future in batch:
                        if not future.done():
                            future.cancel() if isinstance(exc, asyncio.CancelledError) else future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its client went away
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            # Here, not in a done callback (which runs later): a report queued from now on must
            # find a free slot and start a drain of its own.
            self._drains.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, up to GATHER_SECONDS, until as many reports are queued as the last batch had."""
        want = min(self._last_batch, self.max_batch)
        deadline = loop.time() + GATHER_SECONDS
        while len(self._queue) < want and loop.time() < deadline:
            await asyncio.sleep(GATHER_SECONDS / 4)

    def _run(self, reports: list[PendingReport]) -> list[_Outcome]:
        outcomes = self._commit(reports)
        decided = [o for o in outcomes if isinstance(o, bool)]
        metrics.reported(prunes=sum(decided), reports=len(decided))
        return outcomes

    def _commit(self, reports: list[PendingReport]) -> list[_Outcome]:
        runtime = self.runtime
        try:
            with self._sessions() as session:
                outcomes = decide(session, runtime, reports)
                session.commit()
            metrics.REPORT_BATCH_SIZE.observe(len(reports))
            return outcomes
        except Exception as exc:
            if len(reports) == 1:
                return [exc]
            log.info("a batch of %d reports failed (%s); each is retried on its own", len(reports), type(exc).__name__)
            return [self._alone(r) for r in reports]

    def _alone(self, r: PendingReport) -> _Outcome:
        """The report in a transaction of its own, on the runtime's pool (which pings)."""
        runtime = self.runtime
        try:
            with runtime.sessions() as session:
                (outcome,) = decide(session, runtime, [r])
                session.commit()
            if not isinstance(outcome, BaseException):
                metrics.REPORT_BATCH_SIZE.observe(1)
            return outcome
        except Exception as exc:
            return exc

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()
