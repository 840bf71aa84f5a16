"""Simulation scoring through the backend interface, with a scripted model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.llm import LLMError, LLMResponse, ScriptedBackend, TokenUsage
from interlatent_mcp.explain.scoring import pearson, score_explanation_predicate
from interlatent_mcp.explain.simulation import (
    SimulationConfig,
    parse_predictions,
    score_by_simulation,
)
from interlatent_mcp.store import Store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("simulation") / "store.sqlite")
    run = record_rollout(store, "cartpole-ppo", episodes=3, seed=0, layers=["act2:post"])
    analysis = compute_stats(store, [run.run_id])
    layer_id = store.get_layer(run.policy_id, "act2:post").layer_id
    channel = store.rank_channels_by_correlation(analysis.analysis_id, layer_id,
                                                 "cart_velocity", limit=1)[0]
    yield store, run, analysis, layer_id, channel
    store.close()


def read_table(prompt: str) -> tuple[list[str], list[list[float]]]:
    """Read the step table of a simulation prompt back into names and rows."""
    lines = prompt.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("id | "))
    names = lines[header].split(" | ")[1:]
    rows = []
    for line in lines[header + 1:]:
        if not re.match(r"^\d+ \| ", line):
            break
        rows.append([float(v) for v in line.split(" | ")[1:]])
    return names, rows


def simulator(rule):
    """A scripted model that applies `rule` to each step's variables."""
    def step(messages):
        names, rows = read_table(messages[-1].content[0].text)
        lines = [f"{i}: {rule(dict(zip(names, row)))}" for i, row in enumerate(rows, start=1)]
        return LLMResponse(text="\n".join(lines), usage=TokenUsage(900, 80))
    return step


def test_simulation_correlation_matches_real_activations(demo) -> None:
    store, run, analysis, layer_id, best = demo
    sign = 1 if best.r > 0 else -1
    written = store.add_explanation(
        layer_id=layer_id, channel=best.channel, text="tracks the cart's velocity",
        predicate="cart_velocity > 0" if sign > 0 else "cart_velocity < 0", author="tester",
        method="manual", evidence={"steps": [{"run_id": run.run_id, "step": 7}]})
    score_explanation_predicate(store, written)
    backend = ScriptedBackend([simulator(lambda v: round(5 + 20 * sign * v["cart_velocity"], 2))])

    scored = score_by_simulation(store, written.explanation_id, backend,
                                 config=SimulationConfig(n_steps=30, seed=1))
    simulation = scored.scores["simulation"]

    assert "predicate" in scored.scores  # merged, not replaced
    assert simulation["n_steps"] == 30
    assert simulation["input_tokens"] == 900
    assert simulation["correlation"] > 0.5
    shown = [tuple(s) for s in simulation["steps"]]
    top = {(t.run_id, t.step) for t in store.get_top_activations(analysis.analysis_id, layer_id,
                                                                 best.channel)}
    assert not top & set(shown)
    assert (run.run_id, 7) not in shown
    # The stored correlation is the one computed directly from the activations shown.
    activations = store.read_activations(run.run_id, layer_id)[:, best.channel]
    steps = store.read_step_range(run.run_id).variables
    velocity = steps[:, run.variables.index("cart_velocity")]
    predicted = [min(10.0, max(0.0, round(5 + 20 * sign * velocity[s], 2))) for _, s in shown]
    actual = [activations[s] for _, s in shown]
    assert simulation["correlation"] == pytest.approx(pearson(np.array(predicted),
                                                              np.array(actual)), abs=1e-3)


def test_prompt_has_context_only(demo) -> None:
    store, run, _, layer_id, best = demo
    written = store.add_explanation(layer_id=layer_id, channel=best.channel, text="anything",
                                    author="tester", method="manual")
    backend = ScriptedBackend([simulator(lambda v: 5)])
    score_by_simulation(store, written, backend, config=SimulationConfig(n_steps=12))
    names, rows = read_table(backend.requests[0]["messages"][0].content[0].text)
    assert names == run.variables
    assert len(rows) == 12
    assert "activation" not in " ".join(names)


def test_constant_predictions_score_zero(demo) -> None:
    store, _, _, layer_id, best = demo
    written = store.add_explanation(layer_id=layer_id, channel=best.channel, text="always half",
                                    author="tester", method="manual")
    scored = score_by_simulation(store, written, ScriptedBackend([simulator(lambda v: 5)]),
                                 config=SimulationConfig(n_steps=10))
    assert scored.scores["simulation"]["correlation"] == 0.0
    assert scored.scores["simulation"]["constant_predictions"] is True


def test_unreadable_reply_fails(demo) -> None:
    store, _, _, layer_id, best = demo
    written = store.add_explanation(layer_id=layer_id, channel=best.channel, text="x",
                                    author="tester", method="manual")
    backend = ScriptedBackend([LLMResponse(text="I cannot tell.")])
    with pytest.raises(LLMError, match="predicted only 0 of 40 steps"):
        score_by_simulation(store, written, backend)


def test_parse_predictions_lenient() -> None:
    text = "1: 3\n 2 = 11\n3: -2\nnote: fine\n9: 4\n2: 7"
    assert parse_predictions(text, 3) == {1: 3.0, 2: 10.0, 3: 0.0}


def test_config_validated() -> None:
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        SimulationConfig(n_steps=5)
