"""The autodescribe loop, driven by a scripted model, against a real store through MCP."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interlatent_mcp.agent import DONE_TAG, Budget, DescribeConfig, run_describe
from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.cli import main
from interlatent_mcp.errors import InterlatentError
from interlatent_mcp.explain.heuristic import draft_explanations
from interlatent_mcp.explain.llm import LLMResponse, ScriptedBackend, TokenUsage, ToolCall
from interlatent_mcp.explain.scoring import score_predicate
from interlatent_mcp.store import Store

LAYER = "act1:post"
MODEL = "claude-scripted"


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    """A store with a recorded, analysed demo run; tests copy it before changing it."""
    path = tmp_path_factory.mktemp("agent") / "demo.sqlite"
    with Store(path) as store:
        run = record_rollout(store, "cartpole-ppo", episodes=3, seed=0, layers=[LAYER])
        compute_stats(store, [run.run_id])
        store.checkpoint()
    return path


@pytest.fixture
def store_path(demo_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store.sqlite"
    shutil.copy(demo_store, copy)
    return copy


def _tool_results(messages) -> list[dict]:
    """Return the structured text of every tool result in the conversation, oldest first."""
    found = []
    for message in messages:
        for block in message.content:
            if hasattr(block, "tool_call_id"):
                found.append([part.text for part in block.content if hasattr(part, "text")])
    return found


def analyst(messages) -> LLMResponse:
    """A scripted model: read the card and plot, write a one-variable predicate, revise once, stop.

    The first explanation thresholds the strongest correlated variable at its mean over the top
    moments; the revision thresholds it at the lowest top-moment value.
    """
    channel = int(re.search(r"Explain channel (\d+)", messages[0].content[0].text).group(1))
    results = _tool_results(messages)
    usage = TokenUsage(400, 60)
    if not results:
        return LLMResponse("Reading the card and the plot.", (
            ToolCall("c0", "get_channel", {"layer": LAYER, "channel": channel}),
            ToolCall("c1", "plot_channel", {"layer": LAYER, "channel": channel})), usage)
    card = json.loads(results[0][0])
    writes = sum(1 for m in messages if m.role == "assistant"
                 for b in m.content if getattr(b, "name", None) == "write_explanation")
    if writes >= 2:
        return LLMResponse("The channel is a linear unit of the observation.", (), usage)
    strongest = next(c for c in card["correlations"] if c["r"] is not None
                     and c["variable"] not in ("t", "reward"))
    name, sign = strongest["variable"], 1 if strongest["r"] > 0 else -1
    values = [m["variables"][name] for m in card["top_moments"]]
    if writes == 0:
        cut = sum(values) / len(values)
    elif sign > 0:
        cut = min(values)
    else:
        cut = max(values)
    predicate = f"{name} {'>' if sign > 0 else '<'} {cut:.4g}"
    return LLMResponse("Writing an explanation.", (ToolCall(f"w{writes}", "write_explanation", {
        "layer": LAYER, "channel": channel, "predicate": predicate, "author": "someone else",
        "text": f"Fires when {name} is {'high' if sign > 0 else 'low'} ({predicate})."}),), usage)


def test_agent_writes_scored_explanations(store_path: Path) -> None:
    backend = ScriptedBackend([analyst] * 40, model=MODEL)
    report = run_describe(store_path, backend,
                          DescribeConfig(layer=LAYER, budget=Budget(channels=3)))
    plot_result = backend.requests[1]["messages"][-1].content[1]
    assert plot_result.content[0].media_type == "image/png"  # the plot reached the model

    assert report.stopped == "channels"
    assert [o.finished for o in report.outcomes] == [True, True, True]
    assert report.usage == backend.usage
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        analysis = store.latest_analysis(layer.layer_id)
        live = [s.channel for s in store.get_channel_stats(analysis.analysis_id, layer.layer_id)
                if not s.dead]
        assert [o.channel for o in report.outcomes] == live[:3]
        for outcome in report.outcomes:
            latest = store.latest_explanation(layer.layer_id, outcome.channel)
            assert latest.author == MODEL
            assert latest.predicate == outcome.best.predicate
            stored = latest.scores["predicate"]["auroc"]
            assert stored == pytest.approx(outcome.best.auroc)
            direct = score_predicate(store, layer.layer_id, outcome.channel, latest.predicate)
            assert stored == pytest.approx(direct.auroc)
            versions = store.list_explanations(layer.layer_id, outcome.channel)
            assert all(v.author == MODEL for v in versions)
            assert all("predicate" in v.scores for v in versions)
            notes = store.list_notes(layer_id=layer.layer_id, channel=outcome.channel)
            assert [n.author for n in notes] == [MODEL]
            assert notes[0].tags == [DONE_TAG]


def test_agent_stops_at_tool_call_budget(store_path: Path) -> None:
    backend = ScriptedBackend([analyst] * 40, model=MODEL)
    report = run_describe(store_path, backend,
                          DescribeConfig(layer=LAYER, budget=Budget(tool_calls=8)))

    assert report.stopped == "tool_calls"
    assert report.tool_calls == 8
    assert report.outcomes[-1].finished is False
    # 3 calls plan the layer. The first channel then takes get_channel, plot_channel, a write,
    # its score and a second write (8 calls in all), so the second score is refused.
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        assert store.list_notes(layer_id=layer.layer_id) == []
        written = store.list_explanations(layer.layer_id, report.outcomes[0].channel)
        assert len(written) == 2


def test_agent_stops_at_token_budget(store_path: Path) -> None:
    backend = ScriptedBackend([analyst] * 40, model=MODEL)
    report = run_describe(store_path, backend,
                          DescribeConfig(layer=LAYER, budget=Budget(tokens=1500)))

    assert report.stopped == "tokens"
    assert len(backend.requests) == 4  # 460 tokens each: the fifth call would pass 1,500
    assert report.usage.total == 4 * 460


def test_agent_resumes_after_interruption(store_path: Path) -> None:
    calls = {"n": 0}

    def stop_during_second_channel() -> bool:
        return calls["n"] >= 5

    def counting(messages):
        calls["n"] += 1
        return analyst(messages)

    first = run_describe(store_path, ScriptedBackend([counting] * 40, model=MODEL),
                         DescribeConfig(layer=LAYER), should_stop=stop_during_second_channel)
    assert first.stopped == "interrupted"
    assert [o.finished for o in first.outcomes] == [True, False]
    interrupted = first.outcomes[1].channel

    second = run_describe(store_path, ScriptedBackend([analyst] * 40, model=MODEL),
                          DescribeConfig(layer=LAYER, budget=Budget(channels=2)))
    assert second.already_done == [first.outcomes[0].channel]
    assert [o.channel for o in second.outcomes][0] == interrupted
    assert all(o.finished for o in second.outcomes)
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        done = {n.channel for n in store.list_notes(layer_id=layer.layer_id)}
        assert done == {first.outcomes[0].channel, *[o.channel for o in second.outcomes]}


def test_agent_keyboard_interrupt_is_clean(store_path: Path) -> None:
    def interrupt(messages):
        raise KeyboardInterrupt

    backend = ScriptedBackend([analyst, analyst, interrupt], model=MODEL)
    report = run_describe(store_path, backend, DescribeConfig(layer=LAYER))
    assert report.stopped == "interrupted"
    assert report.outcomes[0].versions_written == 1
    with Store(store_path) as store:
        assert store.integrity_check() == "ok"


def test_agent_revisits_low_scores_first(store_path: Path) -> None:
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        drafts = [d for d in draft_explanations(store, layer.layer_id) if d.score is not None]
    backend = ScriptedBackend([analyst] * 20, model=MODEL)
    report = run_describe(store_path, backend,
                          DescribeConfig(layer=LAYER, budget=Budget(channels=2)))
    lowest = sorted(drafts, key=lambda d: (d.score.auroc if d.score.auroc is not None else -1,
                                           d.channel))
    assert [o.channel for o in report.outcomes] == [d.channel for d in lowest[:2]]


def test_agent_unknown_layer_fails_clearly(store_path: Path) -> None:
    with pytest.raises(InterlatentError, match="act9:post"):
        run_describe(store_path, ScriptedBackend([], model=MODEL),
                     DescribeConfig(layer="act9:post"))


def claude_reply(body: dict) -> dict:
    """A Messages API reply for the local stand-in: read the card, write, then finish."""
    channel = int(re.search(r"Explain channel (\d+)", body["messages"][0]["content"][0]["text"])
                  .group(1))
    turn = len(body["messages"]) // 2
    calls = [
        {"type": "tool_use", "id": "t0", "name": "get_channel",
         "input": {"layer": LAYER, "channel": channel}},
        {"type": "tool_use", "id": "t1", "name": "write_explanation",
         "input": {"layer": LAYER, "channel": channel, "predicate": "pole_angle > 0",
                   "text": "Fires when the pole leans right."}},
    ]
    content = [calls[turn]] if turn < len(calls) else [{"type": "text", "text": "Done."}]
    return {"id": f"msg_{turn}", "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": "tool_use" if turn < len(calls) else "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 1000, "output_tokens": 50}}


@pytest.mark.skipif(importlib.util.find_spec("anthropic") is None,
                    reason="the optional anthropic package is not installed")
def test_describe_command_with_anthropic_client(store_path: Path, monkeypatch, capsys) -> None:
    from test_explain_llm import FakeMessagesAPI

    with FakeMessagesAPI(claude_reply) as api:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        code = main(["describe", "--layer", LAYER, "--channels", "1", "--model", "claude-test",
                     "--store", str(store_path)])
    out = capsys.readouterr().out

    assert code == 0
    assert len(api.requests) == 3
    assert api.requests[0]["body"]["model"] == "claude-test"
    assert "1 channel(s) of act1:post described by claude-test" in out
    assert "3000 input and 150 output tokens" in out
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        explained = store.list_explanations(layer.layer_id, latest_only=True)
        assert [(e.author, e.predicate) for e in explained] == [("claude-test", "pole_angle > 0")]
        assert "auroc" in explained[0].scores["predicate"]


def test_describe_without_key_is_clear(store_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code = main(["describe", "--layer", LAYER, "--store", str(store_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "ANTHROPIC_API_KEY" in err or "pip install" in err
    assert "Traceback" not in err


def test_agent_keeps_better_existing_explanation(store_path: Path) -> None:
    with Store(store_path) as store:
        layer = store.get_layer(1, LAYER)
        draft_explanations(store, layer.layer_id)

    def poor(messages) -> LLMResponse:
        channel = int(re.search(r"Explain channel (\d+)", messages[0].content[0].text).group(1))
        if len(messages) > 1:
            return LLMResponse("I could not do better.")
        return LLMResponse("", (ToolCall("w", "write_explanation", {
            "layer": LAYER, "channel": channel, "text": "never fires", "predicate": "t < 0"}),))

    report = run_describe(store_path, ScriptedBackend([poor] * 4, model=MODEL),
                          DescribeConfig(layer=LAYER, budget=Budget(channels=1)))
    outcome = report.outcomes[0]
    assert outcome.kept_existing
    assert outcome.best.auroc == 0.5
    with Store(store_path) as store:
        versions = store.list_explanations(layer.layer_id, outcome.channel)
        assert [v.author for v in versions] == ["heuristic", MODEL, "heuristic"]
        assert versions[0].predicate == versions[2].predicate
        assert versions[0].scores["predicate"]["auroc"] == pytest.approx(
            versions[2].scores["predicate"]["auroc"])
        note = store.list_notes(layer_id=layer.layer_id, channel=outcome.channel)[0]
        assert "restored as the latest version" in note.text


@pytest.mark.skipif(importlib.util.find_spec("anthropic") is None,
                    reason="the optional anthropic package is not installed")
def test_describe_command_stops_on_ctrl_c(store_path: Path) -> None:
    from test_explain_llm import FakeMessagesAPI

    replied = threading.Event()

    def slow_reply(body: dict) -> dict:
        replied.set()
        time.sleep(0.5)
        return claude_reply(body)

    with FakeMessagesAPI(slow_reply) as api:
        environment = {**os.environ, "ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": api.url}
        process = subprocess.Popen(
            [sys.executable, "-m", "interlatent_mcp", "describe", "--layer", LAYER, "--model",
             "claude-test", "--store", str(store_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        try:
            assert replied.wait(60), "the describe command never called the model"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()

    assert process.returncode == 130
    assert "Traceback" not in err
    assert "stopped: interrupted" in out
    with Store(store_path) as store:
        assert store.integrity_check() == "ok"
