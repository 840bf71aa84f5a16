"""Heuristic drafts: on the demo policy and on synthetic channels with a known rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.heuristic import (
    HEURISTIC_AUTHOR,
    HeuristicConfig,
    draft_explanations,
)
from interlatent_mcp.explain.predicate import parse_predicate
from interlatent_mcp.explain.scoring import score_predicate
from interlatent_mcp.store import StepChunk, Store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("heuristic") / "store.sqlite")
    run = record_rollout(store, "cartpole-ppo", episodes=4, seed=0)
    analysis = compute_stats(store, [run.run_id])
    yield store, run, analysis
    store.close()


@pytest.mark.parametrize("layer", ["act1:post", "act2:post"])
def test_pole_angle_channel_auroc_at_least_08(demo, layer: str) -> None:
    store, run, analysis = demo
    layer_id = store.get_layer(run.policy_id, layer).layer_id
    best = store.rank_channels_by_correlation(analysis.analysis_id, layer_id, "pole_angle",
                                              limit=1)[0]
    drafts = {d.channel: d for d in draft_explanations(store, layer_id)}
    draft = drafts[best.channel]
    stored = store.latest_explanation(layer_id, best.channel)
    assert draft.score is not None
    assert draft.score.auroc >= 0.8, (layer, best, draft.predicate, draft.score)
    assert stored.explanation_id == draft.explanation_id
    assert stored.author == HEURISTIC_AUTHOR
    assert stored.predicate == draft.predicate
    assert stored.scores["predicate"]["auroc"] == pytest.approx(draft.score.auroc)
    # The stored score is the one an independent rescoring of the predicate gives.
    rescored = score_predicate(store, layer_id, best.channel, stored.predicate)
    assert rescored.auroc == pytest.approx(draft.score.auroc)
    assert rescored.f1 == pytest.approx(draft.score.f1)


def test_drafts_cover_live_channels(demo) -> None:
    store, run, analysis = demo
    layer_id = store.get_layer(run.policy_id, "act2:pre").layer_id
    stats = store.get_channel_stats(analysis.analysis_id, layer_id)
    drafts = draft_explanations(store, layer_id)
    assert [d.channel for d in drafts] == [s.channel for s in stats]
    for draft, channel_stats in zip(drafts, stats):
        if channel_stats.dead:
            assert draft.skipped == "dead channel"
            assert store.latest_explanation(layer_id, draft.channel) is None
        else:
            assert draft.explanation_id is not None
            assert "fires" in draft.text
            parse_predicate(draft.predicate, run.variables)
    scored = [d.score.auroc for d in drafts if d.score is not None]
    assert np.median(scored) >= 0.8


def test_evidence_holds_top_moments(demo) -> None:
    store, run, analysis = demo
    layer_id = store.get_layer(run.policy_id, "act1:post").layer_id
    draft_explanations(store, layer_id)
    live = [s.channel for s in store.get_channel_stats(analysis.analysis_id, layer_id)
            if not s.dead]
    stored = store.latest_explanation(layer_id, live[0])
    top = store.get_top_activations(analysis.analysis_id, layer_id, live[0], limit=10)
    assert stored.evidence["analysis_id"] == analysis.analysis_id
    assert [(s["run_id"], s["step"]) for s in stored.evidence["steps"]] == [
        (t.run_id, t.step) for t in top]


def test_rerun_skips_then_replaces(demo) -> None:
    store, run, analysis = demo
    layer_id = store.get_layer(run.policy_id, "act2:post").layer_id
    live = [d.channel for d in draft_explanations(store, layer_id) if d.skipped != "dead channel"]
    before = store.latest_explanation(layer_id, live[0])
    again = draft_explanations(store, layer_id, channels=[live[0]])
    replaced = draft_explanations(store, layer_id, channels=[live[0]], replace=True)
    assert again[0].skipped == f"already drafted from analysis {analysis.analysis_id}"
    assert replaced[0].explanation_id is not None
    assert store.latest_explanation(layer_id, live[0]).version == before.version + 1


def test_draft_never_buries_other_authors(demo) -> None:
    store, run, _ = demo
    layer_id = store.get_layer(run.policy_id, "act2:post").layer_id
    live = [d.channel for d in draft_explanations(store, layer_id) if d.skipped != "dead channel"]
    store.add_explanation(layer_id=layer_id, channel=live[1], text="a person's view",
                          author="ana", method="manual")
    again = draft_explanations(store, layer_id, channels=[live[1]])
    assert again[0].skipped.startswith("already explained")
    assert store.latest_explanation(layer_id, live[1]).author == "ana"


def test_new_analysis_redrafts(demo) -> None:
    store, run, _ = demo
    layer_id = store.get_layer(run.policy_id, "act1:pre").layer_id
    first = draft_explanations(store, layer_id)
    newer = compute_stats(store, [run.run_id], layers=["act1:pre"])
    second = draft_explanations(store, layer_id, analysis=newer)
    drafted = [d.channel for d in first if d.explanation_id is not None]
    redrafted = [d.channel for d in second if d.explanation_id is not None]
    assert redrafted == drafted
    assert store.latest_explanation(layer_id, drafted[0]).evidence["analysis_id"] == \
        newer.analysis_id


def make_synthetic_store(path, activations: np.ndarray, variables: dict[str, np.ndarray]):
    """A store with one run whose channels and per-step variables are the given arrays."""
    store = Store(path)
    policy = store.add_policy(name="synthetic", kind="torch", source="test", fingerprint="0",
                              observation_space="Box(2)", action_space="Discrete(2)",
                              layers={"hidden": activations.shape[1]})
    layer = store.get_layer(policy.policy_id, "hidden")
    names = list(variables)
    run = store.create_run(policy_id=policy.policy_id, env_id="Synthetic-v0", env_kwargs={},
                           seed=0, layer_ids=[layer.layer_id], variables=names, chunk_steps=512)
    n = activations.shape[0]
    table = np.column_stack([variables[name] for name in names])
    for chunk, start in enumerate(range(0, n, 512)):
        stop = min(n, start + 512)
        steps = StepChunk(start, np.zeros(stop - start, np.int32),
                          np.arange(start, stop, dtype=np.int32),
                          np.zeros(stop - start, bool), np.zeros(stop - start, bool),
                          table[start:stop])
        store.write_chunk(run.run_id, chunk, steps, {layer.layer_id: activations[start:stop]})
    store.finish_run(run.run_id, status="complete", duration_s=0.0)
    compute_stats(store, [run.run_id])
    return store, layer.layer_id


def test_synthetic_rules_recovered(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    x, y, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    action = (rng.random(n) < 0.3).astype(np.float64)
    activations = np.column_stack([
        np.maximum(0.0, 2 * x - y - 1.5),          # a sparse ReLU of a linear rule
        action * (0.8 + 0.05 * rng.random(n)),     # active exactly when action is 1
        np.zeros(n),                               # dead
        noise,                                     # unrelated to every variable
    ]).astype(np.float32)
    store, layer_id = make_synthetic_store(tmp_path / "s.sqlite", activations,
                                           {"x": x, "y": y, "action": action, "t": np.arange(n)})
    drafts = draft_explanations(store, layer_id)

    linear, discrete, dead, unrelated = drafts
    assert linear.predicate.startswith("x - 0.5")
    assert linear.score.threshold_rule == "active"
    assert linear.score.auroc > 0.97
    assert discrete.predicate == "action == 1"
    assert discrete.score.threshold_rule == "active"
    assert discrete.score.auroc == 1.0
    assert dead.skipped == "dead channel"
    assert unrelated.score.auroc < 0.65
    store.close()


def test_config_validated() -> None:
    with pytest.raises(InvalidArgumentError, match="max_variables"):
        HeuristicConfig(max_variables=0)
    with pytest.raises(InvalidArgumentError, match="sample_steps"):
        HeuristicConfig(sample_steps=10)
