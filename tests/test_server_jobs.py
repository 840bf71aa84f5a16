"""Jobs: the runner itself, and long work through MCP (waiting, progress, cancel, concurrency)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from server_helpers import SyncClient, connect, result_text, wait_for_job

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.jobs import JobControl, JobKind, JobRunner
from interlatent_mcp.server import create_server
from interlatent_mcp.store import Store
from interlatent_mcp.tools.base import ServerContext

# Far more steps than any test lets finish: these rollouts end by cancellation or shutdown.
ENDLESS_STEPS = 5_000_000


def count_to(control: JobControl, params: dict[str, Any]) -> dict[str, Any]:
    """A job kind for the runner tests: counts to params['n'], checking for a stop request."""
    for i in range(params["n"]):
        if control.should_stop():
            return {"reached": i}
        control.report(i + 1, params["n"], f"{i + 1} of {params['n']}")
        time.sleep(params.get("sleep", 0.0))
    if params.get("fail"):
        raise InvalidArgumentError(f"count_to was asked to fail after {params['n']}")
    return {"reached": params["n"]}


def wait_until(predicate: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def runner(store: Store) -> Iterator[JobRunner]:
    jobs = JobRunner(store, max_running=1)
    jobs.add_kind(JobKind("count", count_to))
    yield jobs
    jobs.shutdown(5.0)


def test_runner_records_result(runner: JobRunner, store: Store) -> None:
    job_id = runner.start("count", {"n": 5})
    wait_until(lambda: store.get_job(job_id).status == "complete")
    record = store.get_job(job_id)
    assert record.result == {"reached": 5}
    assert (record.progress, record.total) == (5, 5)
    assert record.started_at is not None and record.finished_at is not None


def test_runner_records_failure_message(runner: JobRunner, store: Store) -> None:
    job_id = runner.start("count", {"n": 2, "fail": True})
    wait_until(lambda: store.get_job(job_id).status == "failed")
    assert store.get_job(job_id).error == "count_to was asked to fail after 2"


def test_runner_queues_beyond_limit(runner: JobRunner, store: Store) -> None:
    first = runner.start("count", {"n": 1000, "sleep": 0.01})
    second = runner.start("count", {"n": 1})
    time.sleep(0.3)
    assert store.get_job(second).status == "queued"
    runner.cancel(first)
    wait_until(lambda: store.get_job(second).status == "complete")
    assert store.get_job(first).status == "cancelled"
    assert store.get_job(first).result["reached"] < 1000


def test_runner_cancels_queued_job(runner: JobRunner, store: Store) -> None:
    first = runner.start("count", {"n": 1000, "sleep": 0.01})
    second = runner.start("count", {"n": 1})
    assert runner.cancel(second)
    wait_until(lambda: store.get_job(second).status == "cancelled")
    runner.cancel(first)
    assert store.get_job(second).started_at is None


def test_runner_shutdown_marks_interrupted(store: Store) -> None:
    jobs = JobRunner(store)
    jobs.add_kind(JobKind("count", count_to))
    job_id = jobs.start("count", {"n": 10_000, "sleep": 0.01})
    wait_until(lambda: jobs.get(job_id).progress > 0)
    assert jobs.shutdown(5.0) == [job_id]
    record = store.get_job(job_id)
    assert record.status == "interrupted"
    assert "server stopped" in record.error
    with pytest.raises(InvalidArgumentError):
        jobs.start("count", {"n": 1})


def test_runner_rejects_unknown_and_duplicate_kind(runner: JobRunner) -> None:
    with pytest.raises(InvalidArgumentError, match="already registered"):
        runner.add_kind(JobKind("count", count_to))
    with pytest.raises(LookupError, match="known kinds: \\['count'\\]"):
        runner.start("train", {})


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SyncClient, ServerContext]]:
    context = ServerContext.open(tmp_path / "store.sqlite")
    try:
        with connect(create_server(context)) as client:
            yield client, context
    finally:
        context.close()


def test_rollout_job_reports_progress(served: tuple[SyncClient, ServerContext]) -> None:
    client, _ = served
    updates: list[tuple[float, float | None]] = []
    result = client.ok("record_rollout", {"steps": 6000, "wait_seconds": 50},
                       progress=lambda value, total, message: updates.append((value, total)))
    assert result["run"]["n_steps"] == 6000
    assert len(updates) >= 2
    assert all(total == 6000 for _, total in updates)
    assert [value for value, _ in updates] == sorted(value for value, _ in updates)


def test_rollout_returns_job_after_wait(served: tuple[SyncClient, ServerContext]) -> None:
    client, _ = served
    started = time.monotonic()
    result = client.ok("record_rollout", {"steps": 4000, "wait_seconds": 0})
    returned_after = time.monotonic() - started
    job = wait_for_job(client, result["job"])

    assert result["run"] is None
    assert result["job"]["status"] in ("queued", "running")
    assert "get_job" in result["next_step"]
    assert returned_after < 2.0
    assert job["status"] == "complete"
    assert job["result"]["n_steps"] == 4000


def test_failed_job_is_tool_error(served: tuple[SyncClient, ServerContext]) -> None:
    client, _ = served
    message = client.error("record_rollout", {"steps": 10, "layers": ["nope:post"], "wait_seconds": 30})
    assert "failed" in message
    assert "nope" in message
    assert "act1:post" in message


def test_cancel_keeps_partial_run(served: tuple[SyncClient, ServerContext]) -> None:
    client, context = served
    job = client.ok("record_rollout", {"steps": ENDLESS_STEPS, "wait_seconds": 0})["job"]
    wait_until(lambda: client.ok("get_job", {"job_id": job["job_id"]})["progress"] >= 2048)
    cancelled = client.ok("cancel_job", {"job_id": job["job_id"]})
    final = wait_for_job(client, cancelled)
    run = client.ok("list_runs")["runs"][0]

    assert cancelled["stop_requested"]
    assert final["status"] == "cancelled"
    assert run["status"] == "interrupted"
    assert 2048 <= run["n_steps"] < ENDLESS_STEPS
    assert context.store.integrity_check() == "ok"


def test_reads_answer_while_rollout_writes(served: tuple[SyncClient, ServerContext]) -> None:
    client, _ = served
    client.ok("record_rollout", {"steps": 2000, "wait_seconds": 50})
    client.ok("compute_stats", {"wait_seconds": 50})
    job = client.ok("record_rollout", {"steps": ENDLESS_STEPS, "wait_seconds": 0})["job"]
    wait_until(lambda: client.ok("get_job", {"job_id": job["job_id"]})["progress"] > 0)
    calls = [("list_runs", {}), ("get_run", {"run_id": 1}), ("get_run", {"run_id": 2}),
             ("get_channel", {"layer": "act1:post", "channel": 4}),
             ("channel_timeline", {"layer": "act1:post", "channel": 4, "run_id": 2, "limit": 200}),
             ("query", {"sql": "SELECT count(*) FROM activation_chunks"})]
    failures: list[str] = []
    answered = 0

    def read_repeatedly() -> None:
        nonlocal answered
        for _ in range(6):
            for name, arguments in calls:
                result = client.call(name, arguments)
                if result.is_error:
                    failures.append(f"{name}: {result_text(result)}")
                answered += 1

    threads = [threading.Thread(target=read_repeatedly) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    still = client.ok("get_job", {"job_id": job["job_id"]})
    client.ok("cancel_job", {"job_id": job["job_id"]})
    wait_for_job(client, still)

    assert failures == []
    assert answered == 3 * 6 * len(calls)
    assert still["status"] == "running"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_cancelled_call_leaves_job_running(tmp_path: Path, mode: str) -> None:
    context = ServerContext.open(tmp_path / "store.sqlite")
    try:
        with connect(create_server(context), mode=mode) as client:
            async def call_then_give_up() -> None:
                with anyio.move_on_after(1.5):
                    await client.client.call_tool(
                        "record_rollout", {"steps": ENDLESS_STEPS, "wait_seconds": 40})

            client.portal.call(call_then_give_up)
            running = client.ok("list_jobs", {"status": "running"})["jobs"]
            for job in running:
                client.ok("cancel_job", {"job_id": job["job_id"]})
            final = wait_for_job(client, running[0])
    finally:
        context.close()

    assert [job["kind"] for job in running] == ["record_rollout"]
    assert final["status"] == "cancelled"
