"""Helpers for driving the MCP server through the SDK's own client from synchronous tests.

`connect` runs an `mcp.Client` on an event loop in a background thread (an anyio blocking
portal), so tests, hypothesis included, call tools as plain functions.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Generous bound for one tool call in tests; real calls take milliseconds to seconds.
CALL_TIMEOUT_S = 120.0


def result_text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@dataclass
class SyncClient:
    """An MCP client session whose calls block until the server responds."""

    portal: anyio.from_thread.BlockingPortal
    client: Client

    def call(self, name: str, arguments: dict[str, Any] | None = None,
             progress: Callable[[float, float | None, str | None], Any] | None = None) -> CallToolResult:
        async def send() -> CallToolResult:
            async def forward(value: float, total: float | None, message: str | None) -> None:
                if progress is not None:
                    progress(value, total, message)

            with anyio.fail_after(CALL_TIMEOUT_S):
                return await self.client.call_tool(
                    name, arguments or {}, progress_callback=forward if progress else None)

        return self.portal.call(send)

    def ok(self, name: str, arguments: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Call a tool that must succeed and return its structured result."""
        result = self.call(name, arguments, **kwargs)
        assert not result.is_error, f"{name} failed: {result_text(result)}"
        assert result.structured_content is not None, f"{name} returned no structured content"
        return result.structured_content

    def error(self, name: str, arguments: dict[str, Any] | None = None) -> str:
        """Call a tool that must fail and return the error text."""
        result = self.call(name, arguments)
        assert result.is_error, f"{name} succeeded but was expected to fail: {result_text(result)}"
        return result_text(result)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an async client method (list_tools, read_resource, ...) and return its result."""
        return self.portal.call(fn, *args)


@contextmanager
def connect(target: Any, mode: str = "auto") -> Iterator[SyncClient]:
    """Connect to an MCPServer (in-process), StdioServerParameters or URL, for the block."""
    with anyio.from_thread.start_blocking_portal() as portal:
        client = Client(target, mode=mode)
        with portal.wrap_async_context_manager(client) as entered:
            yield SyncClient(portal, entered)


def server_command(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "interlatent_mcp", "serve", "--store", str(store), *extra]


def stdio_parameters(store: Path) -> StdioServerParameters:
    command = server_command(store)
    return StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server did not listen on port {port} within {timeout_s} s")


def wait_for_job(client: SyncClient, job: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll get_job until the job leaves queued/running; return its final state."""
    deadline = time.monotonic() + timeout_s
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job['job_id']} still {job['status']}"
        time.sleep(0.1)
        job = client.ok("get_job", {"job_id": job["job_id"]})
    return job


def run_scripted_agent(client: SyncClient, *, episodes: int = 4) -> dict[str, Any]:
    """Explore an empty store the way an agent would, entirely through MCP tool calls.

    Records a CartPole rollout, computes statistics, finds the act1:post channel most correlated
    with pole_angle, reads its card and plot, writes an explanation and finds it by search.
    Returns what each step produced, for the caller to check.
    """
    policies = client.ok("list_policies")
    assert "cartpole-ppo" in [p["name"] for p in policies["builtin"]]

    recorded = client.ok("record_rollout", {"policy": "cartpole-ppo", "episodes": episodes,
                                            "seed": 3, "wait_seconds": 50})
    if recorded["run"] is None:
        job = wait_for_job(client, recorded["job"])
        run = job["result"]
    else:
        run = recorded["run"]
    assert run["status"] == "complete"

    stats = client.ok("compute_stats", {"run_ids": [run["run_id"]], "wait_seconds": 50})
    analysis = stats["analysis"] or wait_for_job(client, stats["job"])["result"]

    ranking = client.ok("find_channels", {"layer": "act1:post", "variable": "pole_angle", "limit": 3})
    channel = ranking["channels"][0]["channel"]
    card = client.ok("get_channel", {"layer": "act1:post", "channel": channel})

    plot = client.call("plot_channel", {"layer": "act1:post", "channel": channel})
    assert not plot.is_error, result_text(plot)
    images = [block for block in plot.content if block.type == "image"]
    png = base64.b64decode(images[0].data)

    text = (f"Channel {channel} of act1:post tracks the pole angle (r = "
            f"{ranking['channels'][0]['r']:.2f}); it is highest when the pole leans.")
    written = client.ok("write_explanation", {"layer": "act1:post", "channel": channel,
                                              "text": text, "predicate": "pole_angle > 0"})
    found = client.ok("search_explanations", {"query": "pole angle"})
    return {"run": run, "analysis": analysis, "ranking": ranking, "card": card, "png": png,
            "plot": plot.structured_content, "written": written, "found": found}


def json_size(result: CallToolResult) -> int:
    """Return the size in bytes of a tool result as it travels in JSON-RPC."""
    return len(json.dumps(result.model_dump(mode="json", by_alias=True)).encode())
