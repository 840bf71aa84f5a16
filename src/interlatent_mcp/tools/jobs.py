"""Job tools (get_job, cancel_job, list_jobs) and the start-then-wait helper of the job tools."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from interlatent_mcp.store import JobRecord
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import Limit, Offset, Page, next_offset

tools = ToolSet()
register = tools.register

DEFAULT_WAIT_S = 20.0
# Hosts such as Claude Desktop cancel a tool call after about 60 s, so no wait may come close.
MAX_WAIT_S = 50.0

WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_S, description=f"Seconds to wait for the job before returning its id (0 to {MAX_WAIT_S:g}). A job still running then keeps running; follow it with get_job.")]
JobId = Annotated[str, Field(min_length=1, max_length=64, description="Job id, as a job tool or list_jobs returned it.")]
JobStatus = Literal["queued", "running", "complete", "failed", "cancelled", "interrupted"]


class JobInfo(BaseModel):
    job_id: str
    kind: str
    status: JobStatus = Field(description="queued or running while it works; complete, failed, cancelled or interrupted (the server stopped) when done.")
    progress: float
    total: float | None
    message: str | None
    error: str | None
    params: dict[str, Any]
    result: Any = Field(description="What the job produced (complete jobs; cancelled jobs may carry a partial result).")
    created_at: str
    started_at: str | None
    finished_at: str | None
    stop_requested: bool = Field(description="True once cancel_job (or a server stop) asked the job to stop.")


class JobPage(Page):
    jobs: list[JobInfo]


def job_info(context: ServerContext, record: JobRecord, *, with_result: bool = True) -> JobInfo:
    """Shape a job; job tools that return the result in a field of its own pass with_result=False."""
    live = context.jobs.live_state(record.job_id)
    return JobInfo(
        job_id=record.job_id, kind=record.kind, status=record.status,  # type: ignore[arg-type]
        progress=record.progress, total=record.total, message=record.message, error=record.error,
        params=record.params, result=record.result if with_result else None,
        created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at,
        stop_requested=live is not None and live.stop.is_set(),
    )


async def start_and_wait(context: ServerContext, ctx: Context, kind: str, params: dict[str, Any],
                         wait_seconds: float) -> JobRecord:
    """Start a job, wait up to `wait_seconds` while sending progress, and return its record.

    A job that failed within the wait raises a tool error carrying the job's error message.
    """
    job_id = await anyio.to_thread.run_sync(context.jobs.start, kind, params)
    record = await context.jobs.wait(job_id, wait_seconds, ctx.report_progress)
    if record.status == "failed":
        raise ToolError(f"job {job_id} ({kind}) failed: {record.error}")
    return record


def follow_up(record: JobRecord, when_done: str) -> str:
    """Return the advice a job tool gives about what to call next."""
    if record.status == "complete":
        return when_done
    if record.status in ("queued", "running"):
        return (f"the job is still {record.status}; call get_job with job_id={record.job_id!r} "
                f"until its status is complete, or cancel_job to stop it")
    return f"the job ended as {record.status}: {record.error or 'no error recorded'}"


@tools.tool(title="Get a job")
def get_job(context: ServerContext, job_id: JobId) -> JobInfo:
    """Return a job's status, progress and, once complete, its result (for example the run,
    analysis or transcoder it produced). Use it to follow a record_rollout, compute_stats,
    train_transcoder or evaluate_transcoder call that returned before its job finished. Cheap;
    poll every few seconds at most."""
    return job_info(context, context.jobs.get(job_id))


@tools.tool(title="Cancel a job", read_only=False, idempotent=True)
def cancel_job(context: ServerContext, job_id: JobId) -> JobInfo:
    """Ask a queued or running job to stop. A rollout keeps the steps it recorded (its run is
    marked interrupted); an analysis writes nothing. The job's status becomes 'cancelled' within
    a second or so; call get_job to see it. Cancelling a finished job changes nothing."""
    context.jobs.cancel(job_id)
    return job_info(context, context.jobs.get(job_id))


@tools.tool(title="List jobs")
def list_jobs(
    context: ServerContext,
    status: Annotated[JobStatus | None, Field(description="Only jobs with this status.")] = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> JobPage:
    """List jobs (rollouts, analyses, training), newest first, optionally by status. Use it to
    find a job id you lost, or to see what is still running. Cheap; paged."""
    records = context.store.list_jobs(status=status, offset=offset, limit=limit)
    jobs = [job_info(context, context.jobs.get(r.job_id)) for r in records]
    return JobPage(jobs=jobs, offset=offset, total=None,
                   next_offset=next_offset(offset, len(jobs), limit))
