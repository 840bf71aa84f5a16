"""The `interlatent` command line, run as a user runs it: a subprocess, or `main` with real files."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interlatent_mcp.capture import describe_layers, load_policy
from interlatent_mcp.cli import EXIT_ERROR, EXIT_INTERRUPTED, main
from interlatent_mcp.errors import StoreError
from interlatent_mcp.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"
DEFAULT_LAYERS = ("act1:pre", "act1:post", "act2:pre", "act2:post")


def run_cli(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interlatent_mcp", *arguments],
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_demo_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "demo.sqlite"
    started = time.perf_counter()
    result = run_cli("demo", "--store", str(path))
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 120
    out = result.stdout
    assert f"store: {path}" in out
    assert "run 1: complete, 5000 steps, 10 episodes of CartPole-v1, mean return 500.0" in out
    for layer in DEFAULT_LAYERS:
        assert re.search(rf"Layer {layer} \(64 channels\): \d+ live, \d+ dead", out), layer
    assert out.count("strongest correlations:") == len(DEFAULT_LAYERS)
    assert re.search(r"channel +\d+  r = [+-]0\.\d{3}  with pole_angular_velocity", out)
    assert "top moments" in out
    assert re.search(r"at run 1 step \d+ \(episode \d+, t=\d+\): cart_position=", out)
    assert "Traceback" not in result.stderr
    with Store(path) as store:
        (run,) = store.list_runs()
        assert run.n_steps == 5000
        assert len(store.list_analyses()) >= 1


def test_layers_lists_hook_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "cartpole-ppo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cartpole-ppo (builtin): observation Box(")
    widths = describe_layers(load_policy("cartpole-ppo"))
    for name, width in widths.items():
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert line.split()[1] == str(width)
        assert ("(recorded by default)" in line) == (name in DEFAULT_LAYERS)


def test_rollout_bad_env_one_line_error(tmp_path: Path) -> None:
    result = run_cli("rollout", "cartpole-ppo", "--env", "CartPole-v9", "--steps", "10",
                     "--store", str(tmp_path / "store.sqlite"))
    assert result.returncode == EXIT_ERROR
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "'CartPole-v9'" in line
    assert "'CartPole-v1'" in line
    assert result.stdout == ""


@pytest.mark.parametrize("arguments, expected", [
    (["rollout", "cartpole-ppo", "--layers", "fc9:post"], "known layers: fc1:pre"),
    (["rollout", "cartpole-ppo", "--layers", "fc1:mid"], "ends in ':mid'"),
    (["rollout", "cartpole-ppo", "--env", "Pendulum-v1"], "action space Discrete(2)"),
    (["rollout", "cartpole-ppo", "--episodes", "0"], "episodes must be at least 1, got 0"),
    (["rollout", "cartpole-ppo", "--chunk-steps", "0"], "chunk_steps must be between 1"),
    (["rollout", "cartpole-ppo", "--env-kwargs", "{oops"], "--env-kwargs must be a JSON object"),
    (["rollout", "missing/policy.zip"], "does not exist"),
    (["stats", "99"], "run 99 is not in the store"),
    (["stats"], "the store has no runs"),
])
def test_errors_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         arguments: list[str], expected: str) -> None:
    assert main([*arguments, "--store", str(tmp_path / "store.sqlite")]) == EXIT_ERROR
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert expected in line


def test_rollout_runs_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store.sqlite")
    assert main(["runs", "--store", store]) == 0
    assert "no runs yet" in capsys.readouterr().out

    assert main(["rollout", "cartpole-ppo", "--steps", "300", "--layers", "fc1:post", "act1:post",
                 "--chunk-steps", "128", "--tag", "smoke", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run 1: complete, 300 steps, 1 episodes of CartPole-v1")
    assert "layers: fc1:post, act1:post" in out
    assert "variables: cart_position, cart_velocity, pole_angle, pole_angular_velocity, action, reward, t" in out
    assert main(["rollout", "cartpole-ppo", "--episodes", "1", "--seed", "3", "--store", store]) == 0
    capsys.readouterr()

    assert main(["runs", "--store", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["2", "1"]
    assert lines[1].split()[1:3] == ["complete", "CartPole-v1"]
    assert "300 steps" in lines[1]
    assert "500 steps" in lines[0]

    assert main(["stats", "1", "--layers", "act1:post", "--top-k", "5", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Analysis 1: 300 steps from runs 1")
    assert "Layer act1:post (64 channels)" in out
    assert "Layer fc1:post" not in out

    # Without run ids, stats analyses the latest run and every layer it recorded.
    assert main(["stats", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Analysis 2: 500 steps from runs 2")
    for layer in DEFAULT_LAYERS:
        assert f"Layer {layer} (64 channels)" in out

    with Store(store) as opened:
        assert opened.get_run(1).tags == ["smoke"]
        assert [a.analysis_id for a in opened.list_analyses()] == [1, 2]


def wait_for_chunks(path: Path, minimum: int, timeout: float = 60) -> None:
    """Poll the store another process is writing until it holds `minimum` step chunks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Store(path, read_only=True) as store:
                runs = store.list_runs()
                if runs and len(list(store.iter_step_chunks(runs[0].run_id))) >= minimum:
                    return
        except (StoreError, sqlite3.Error):
            pass  # the writer has not created the file or its schema yet
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach {minimum} chunks within {timeout} s")


def test_ctrl_c_keeps_recorded_steps(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "interlatent_mcp", "rollout", "cartpole-ppo", "--steps", "10000000",
         "--chunk-steps", "100", "--store", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_chunks(path, 3)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err
    assert "interrupted" in err
    with Store(path) as store:
        assert store.integrity_check() == "ok"
        (run,) = store.list_runs()
        assert run.status == "interrupted"
        assert run.n_steps >= 300
        layer_id = store.run_layer_ids(run.run_id)["act1:post"]
        assert len(store.read_activations(run.run_id, layer_id)) == run.n_steps


def test_policies_and_envs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    assert re.search(r"^  cartpole-ppo +CartPole-v1 ", capsys.readouterr().out, flags=re.M)
    assert main(["envs", "--prefix", "CartPole"]) == 0
    assert capsys.readouterr().out.split() == ["CartPole-v0", "CartPole-v1"]


def help_subcommands() -> list[str]:
    result = run_cli("--help")
    assert result.returncode == 0
    section = result.stdout.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^ {4}([a-z][a-z0-9-]*)", section, flags=re.M)


def test_every_subcommand_in_readme() -> None:
    if not README.exists():
        pytest.skip("README.md does not exist yet, so there is nothing to check it against")
    subcommands = help_subcommands()
    assert {"demo", "rollout", "stats", "layers", "policies", "envs", "runs"} <= set(subcommands)
    text = README.read_text()
    missing = [name for name in subcommands if not re.search(rf"interlatent {re.escape(name)}\b", text)]
    shown = ", ".join(f"`interlatent {name}`" for name in missing)
    assert missing == [], f"README.md never shows {shown}"
