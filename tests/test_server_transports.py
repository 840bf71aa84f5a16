"""The server as a separate process: over stdio and streamable HTTP, killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import (
    PNG_SIGNATURE,
    connect,
    free_port,
    run_scripted_agent,
    server_command,
    stdio_parameters,
    wait_for_port,
)

from interlatent_mcp.server import claude_config
from interlatent_mcp.store import Store


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """`interlatent serve --transport http` on a free port of 127.0.0.1, over a fresh store."""
    path = tmp_path / "store.sqlite"
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen(server_command(path, "--transport", "http", "--port", str(port)),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield port, path, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_stdio_scripted_agent(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with connect(stdio_parameters(path)) as client:
        found = run_scripted_agent(client, episodes=3)
    with Store(path) as store:
        explanation = store.latest_explanation(
            store.get_layer(1, "act1:post").layer_id, found["written"]["channel"])
        integrity = store.integrity_check()
    assert found["png"].startswith(PNG_SIGNATURE)
    assert explanation is not None
    assert explanation.text == found["written"]["text"]
    assert integrity == "ok"


def test_stdio_handshake_skips_heavy_imports(tmp_path: Path) -> None:
    """The handshake and a store-only tool work without torch, gymnasium or matplotlib loaded."""
    with connect(stdio_parameters(tmp_path / "store.sqlite")) as client:
        loaded = client.ok("query", {"sql": "SELECT 1 AS one"})
        runs = client.ok("list_runs")
    assert loaded["rows"] == [[1]]
    assert runs["runs"] == []
    # The subprocess's modules cannot be read from here, so check the same import in-process.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from interlatent_mcp.server import create_server; "
         "from interlatent_mcp.tools.base import ServerContext; "
         f"create_server(ServerContext.open({str(tmp_path / 'probe.sqlite')!r})); "
         "print(sorted(m for m in ('torch', 'gymnasium', 'matplotlib') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


def test_http_scripted_agent(http_server: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, path, _ = http_server
    with connect(f"http://127.0.0.1:{port}/mcp") as client:
        found = run_scripted_agent(client, episodes=2)
    assert found["run"]["n_episodes"] == 2
    assert found["found"]["explanations"][0]["text"] == found["written"]["text"]


def test_http_rejects_foreign_host_header(http_server: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, _, _ = http_server
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()

    def post(host: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/mcp", data=body, method="POST",
            headers={"Host": host, "Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post("attacker.example") == 421
    assert post(f"127.0.0.1:{port}") != 421


def test_killed_mid_job_restarts_clean(http_server: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, path, process = http_server
    with connect(f"http://127.0.0.1:{port}/mcp") as client:
        job = client.ok("record_rollout", {"steps": 5_000_000, "wait_seconds": 0})["job"]
        deadline = time.monotonic() + 60
        while client.ok("get_job", {"job_id": job["job_id"]})["progress"] < 3000:
            assert time.monotonic() < deadline, "the rollout made no progress"
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=10)

    with connect(stdio_parameters(path)) as client:
        restarted = client.ok("get_job", {"job_id": job["job_id"]})
        runs = client.ok("list_runs")["runs"]
    with Store(path) as store:
        integrity = store.integrity_check()
        run = store.get_run(runs[0]["run_id"])
        recorded = store.read_step_range(run.run_id).n_steps

    assert integrity == "ok"
    assert restarted["status"] == "interrupted"
    assert "server stopped" in restarted["error"]
    assert run.status == "interrupted"
    assert run.n_steps >= 3000
    assert recorded == run.n_steps


def test_claude_config_uses_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    entry = claude_config("relative/store.sqlite")["mcpServers"]["interlatent"]
    printed = subprocess.run(server_command(tmp_path / "s.sqlite")[:3] + ["claude-config"],
                             capture_output=True, text=True, check=True)

    assert os.path.isabs(entry["command"])
    assert os.path.exists(entry["command"])
    assert entry["args"][-1] == str(tmp_path / "relative" / "store.sqlite")
    assert "serve" in entry["args"]
    assert "interlatent" in json.loads(printed.stdout)["mcpServers"]
