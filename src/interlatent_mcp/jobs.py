"""Long work (rollouts, statistics, training) as jobs: one thread each, recorded in the store.

A job kind is a name plus a function `run(control, params) -> result`. The function calls
`control.report(...)` as it goes and passes `control.should_stop` to the library, which ends the
work early when it returns True. The runner records every job in the store's jobs table (status,
progress, result or error) and limits how many run at once. An MCP tool can wait for a job for a
bounded time while the runner forwards its progress to the client.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from interlatent_mcp.errors import InterlatentError, InvalidArgumentError, NotFoundError
from interlatent_mcp.store import JobRecord, Store

logger = logging.getLogger(__name__)

# Progress is written to the store at most this often; clients polling get_job see the live value.
PERSIST_INTERVAL_S = 1.0
DEFAULT_MAX_RUNNING = 2
# A job that waits for a free slot checks for a stop request this often.
_QUEUE_POLL_S = 0.2

JobFunction = Callable[["JobControl", dict[str, Any]], Any]
ProgressSender = Callable[[float, float | None, str | None], Awaitable[None]]
StopReason = Literal["cancelled", "shutdown"]


class JobStopped(InterlatentError):
    """Raised inside a job function to end it after a stop request."""


@dataclass(frozen=True)
class JobKind:
    """A named kind of job and the function that does its work in a worker thread."""

    name: str
    run: JobFunction
    """Called as run(control, params); returns a JSON-serialisable result, stored with the job."""


@dataclass
class _LiveJob:
    """The in-memory state of a job started by this process."""

    job_id: str
    kind: str
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason | None = None
    progress: float = 0.0
    total: float | None = None
    message: str | None = None
    thread: threading.Thread | None = None


class JobControl:
    """The interface a running job gets: the store, its id, progress reporting and the stop request."""

    def __init__(self, store: Store, live: _LiveJob) -> None:
        self.store = store
        self._live = live
        self._persisted_at = 0.0

    @property
    def job_id(self) -> str:
        return self._live.job_id

    def should_stop(self) -> bool:
        """Return True once the job was cancelled or the server is stopping."""
        return self._live.stop.is_set()

    def raise_if_stopped(self) -> None:
        if self.should_stop():
            raise JobStopped(f"job {self.job_id} was stopped on request")

    def report(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Record progress; the store is updated at most once per PERSIST_INTERVAL_S seconds."""
        live = self._live
        live.progress, live.total = float(progress), total
        if message is not None:
            live.message = message
        now = time.monotonic()
        if now - self._persisted_at >= PERSIST_INTERVAL_S:
            self._persisted_at = now
            self.store.update_job(self.job_id, progress=live.progress, total=total, message=message)


class JobRunner:
    """Starts, follows, cancels and stops jobs; at most `max_running` run at the same time."""

    def __init__(self, store: Store, *, max_running: int = DEFAULT_MAX_RUNNING) -> None:
        if max_running < 1:
            raise InvalidArgumentError(f"max_running must be at least 1, got {max_running}")
        self.store = store
        self._kinds: dict[str, JobKind] = {}
        self._live: dict[str, _LiveJob] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_running)
        self._closed = False

    # Kinds

    def add_kind(self, kind: JobKind) -> None:
        if kind.name in self._kinds:
            raise InvalidArgumentError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def list_kinds(self) -> list[str]:
        return sorted(self._kinds)

    # Starting and following jobs

    def start(self, kind: str, params: dict[str, Any]) -> str:
        """Record a queued job in the store, start its thread and return its id."""
        if kind not in self._kinds:
            raise NotFoundError(f"job kind {kind!r} is not registered; known kinds: {self.list_kinds()}")
        if self._closed:
            raise InvalidArgumentError("the server is stopping and accepts no new jobs")
        job_id = uuid.uuid4().hex[:12]
        self.store.add_job(job_id, kind, params)
        live = _LiveJob(job_id, kind)
        live.thread = threading.Thread(
            target=self._run, args=(live, self._kinds[kind], params), name=f"job-{kind}-{job_id}",
            daemon=True,
        )
        with self._lock:
            self._live[job_id] = live
        live.thread.start()
        logger.info("started job %s (%s)", job_id, kind)
        return job_id

    def live_state(self, job_id: str) -> _LiveJob | None:
        """Return the in-memory state of a job this process started, else None."""
        with self._lock:
            return self._live.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        """Return a job from the store, with the live progress of a job still running here."""
        record = self.store.get_job(job_id)
        live = self.live_state(job_id)
        if live is None or live.done.is_set():
            return record
        return _with_live_progress(record, live)

    async def wait(self, job_id: str, timeout_s: float,
                   send_progress: ProgressSender | None = None) -> JobRecord:
        """Wait up to `timeout_s` seconds for a job to finish, forwarding progress as it changes.

        Polls the in-memory state without blocking the event loop, so a job faster than the
        polling may skip intermediate updates. A job that finished within the wait gets one last
        notification if its final progress is above the last value sent. A job still running at
        the deadline keeps running; the caller returns its id. Cancelling the awaiting task leaves
        the job running as well.
        """
        import anyio

        live = self.live_state(job_id)
        deadline = time.monotonic() + timeout_s
        sent = 0.0
        delay = 0.01
        while live is not None and not live.done.is_set() and time.monotonic() < deadline:
            sent = await _send_if_advanced(live, sent, send_progress)
            await anyio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.25)
        if live is not None and live.done.is_set():
            await _send_if_advanced(live, sent, send_progress)
        return await anyio.to_thread.run_sync(self.get, job_id)

    # Stopping

    def cancel(self, job_id: str) -> bool:
        """Ask a running or queued job to stop; return False when it is not running here."""
        live = self.live_state(job_id)
        if live is None or live.done.is_set():
            return False
        live.stop_reason = live.stop_reason or "cancelled"
        live.stop.set()
        logger.info("cancellation requested for job %s", job_id)
        return True

    def shutdown(self, timeout_s: float = 10.0) -> list[str]:
        """Stop every job of this process and wait up to `timeout_s` for them; return their ids.

        Jobs stopped this way are recorded as 'interrupted'. A job still running after the
        timeout is left to the next start, which marks it interrupted.
        """
        self._closed = True
        with self._lock:
            running = [live for live in self._live.values() if not live.done.is_set()]
        for live in running:
            live.stop_reason = "shutdown"
            live.stop.set()
        deadline = time.monotonic() + timeout_s
        for live in running:
            if live.thread is not None:
                live.thread.join(max(deadline - time.monotonic(), 0.0))
        still = [live.job_id for live in running if not live.done.is_set()]
        if still:
            logger.warning("jobs %s did not stop within %.1f s", still, timeout_s)
        return [live.job_id for live in running]

    # The worker thread

    def _run(self, live: _LiveJob, kind: JobKind, params: dict[str, Any]) -> None:
        try:
            if not self._acquire_slot(live):
                self._finish(live, None, None)
                return
            try:
                self.store.update_job(live.job_id, status="running")
                result, error = self._call(live, kind, params)
            finally:
                self._slots.release()
            self._finish(live, result, error)
        except Exception:  # noqa: BLE001 - a worker thread has no caller to raise to
            logger.exception("job %s (%s) could not be recorded", live.job_id, kind.name)
        finally:
            live.done.set()

    def _acquire_slot(self, live: _LiveJob) -> bool:
        while not self._slots.acquire(timeout=_QUEUE_POLL_S):
            if live.stop.is_set():
                return False
        return True

    def _call(self, live: _LiveJob, kind: JobKind, params: dict[str, Any]) -> tuple[Any, str | None]:
        """Run the job function; return (result, error message or None)."""
        control = JobControl(self.store, live)
        try:
            return kind.run(control, params), None
        except Exception as e:  # noqa: BLE001 - every outcome is recorded with the job
            if live.stop.is_set():
                logger.info("job %s stopped: %s", live.job_id, e)
            elif not isinstance(e, InterlatentError):
                logger.exception("job %s (%s) failed", live.job_id, kind.name)
            return None, _describe(e)

    def _finish(self, live: _LiveJob, result: Any, error: str | None) -> None:
        if live.stop.is_set():
            status = "interrupted" if live.stop_reason == "shutdown" else "cancelled"
            reason = ("the server stopped while the job was running" if status == "interrupted"
                      else "cancelled on request")
            error = reason if error is None else f"{reason}: {error}"
        else:
            status = "failed" if error is not None else "complete"
        self.store.update_job(live.job_id, status=status, progress=live.progress, total=live.total,
                              message=live.message, result=result, error=error)
        logger.info("job %s (%s) %s", live.job_id, live.kind, status)


async def _send_if_advanced(live: _LiveJob, sent: float,
                            send_progress: ProgressSender | None) -> float:
    """Send the job's progress if it is above the last value sent; return the last value sent.

    MCP requires the progress value to increase with each notification.
    """
    progress, total, message = live.progress, live.total, live.message
    if send_progress is None or progress <= sent:
        return sent
    await send_progress(progress, total, message)
    return progress


def _describe(error: BaseException) -> str:
    if isinstance(error, InterlatentError):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _with_live_progress(record: JobRecord, live: _LiveJob) -> JobRecord:
    from dataclasses import replace

    return replace(record, progress=live.progress, total=live.total,
                   message=live.message or record.message)
