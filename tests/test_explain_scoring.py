"""Predicate scoring against a direct numpy computation on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import record_rollout
from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.explain import scoring
from interlatent_mcp.explain.predicate import PredicateError
from interlatent_mcp.explain.scoring import (
    auroc,
    average_ranks,
    choose_threshold,
    score_arrays,
    score_explanation_predicate,
    score_predicate,
    score_predicate_channels,
)
from interlatent_mcp.store import Store

torch.set_num_threads(1)


def pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC by comparing every positive with every negative, ties counted one half."""
    positive = scores[labels][:, None]
    negative = scores[~labels][None, :]
    return float(np.mean((positive > negative) + 0.5 * (positive == negative)))


def direct_f1(predicted: np.ndarray, firing: np.ndarray) -> float:
    tp = np.sum(predicted & firing)
    precision = tp / np.sum(predicted)
    recall = tp / np.sum(firing)
    return float(2 * precision * recall / (precision + recall))


@pytest.fixture(scope="module")
def scored_runs(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("scoring") / "store.sqlite")
    # Small chunks, so every score crosses many chunk and run boundaries.
    runs = [record_rollout(store, "cartpole-ppo", steps=700, seed=seed,
                           chunk_steps=128, layers=["act1:post", "act2:post"]) for seed in (0, 1)]
    analysis = compute_stats(store, [run.run_id for run in runs])
    layer_id = store.get_layer(runs[0].policy_id, "act1:post").layer_id
    yield store, runs, analysis, layer_id
    store.close()


def whole_arrays(store: Store, runs, layer_id: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    activations = np.concatenate([store.read_activations(run.run_id, layer_id) for run in runs])
    steps = np.concatenate([store.read_step_range(run.run_id).variables for run in runs])
    variables = {name: steps[:, i] for i, name in enumerate(runs[0].variables)}
    return activations, variables


def test_average_ranks_ties() -> None:
    ranks = average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))
    np.testing.assert_array_equal(ranks, [4.0, 1.0, 4.0, 2.0, 4.0])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(400) < 0.2
    # Rounded scores so that ties between and within the classes are frequent.
    scores = np.round(rng.normal(size=400) + labels, 1)
    assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels), abs=1e-12)


def test_auroc_undefined_for_one_class() -> None:
    assert auroc(np.arange(5.0), np.zeros(5, dtype=bool)) is None
    assert auroc(np.arange(5.0), np.ones(5, dtype=bool)) is None


def test_threshold_rules() -> None:
    sparse = np.r_[np.zeros(80), np.linspace(0.1, 2.0, 20)]
    dense = np.linspace(-1.0, 1.0, 101)
    rule_sparse = choose_threshold(sparse)
    rule_dense = choose_threshold(np.r_[dense, np.nan])
    assert (rule_sparse.rule, rule_sparse.value) == ("active", 0.0)
    assert rule_dense.rule == "quantile"
    assert rule_dense.value == pytest.approx(np.quantile(dense, 0.9))
    assert "0.9 quantile" in rule_dense.description


def test_score_arrays_boolean_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    activation = rng.normal(size=1000).astype(np.float32)
    predicted = (activation + rng.normal(scale=1.5, size=1000)) > 1.0
    threshold = choose_threshold(activation)
    firing = activation > threshold.value
    metrics = score_arrays(activation, predicted, "boolean", threshold)
    assert metrics["n_firing"] == int(firing.sum())
    assert metrics["true_positives"] == int(np.sum(predicted & firing))
    assert metrics["false_positives"] == int(np.sum(predicted & ~firing))
    assert metrics["auroc"] == pytest.approx(pairwise_auroc(predicted.astype(float), firing))
    assert metrics["f1"] == pytest.approx(direct_f1(predicted, firing))
    assert metrics["correlation"] == pytest.approx(np.corrcoef(activation, predicted)[0, 1])


def test_score_arrays_skips_non_finite_steps() -> None:
    activation = np.array([np.nan, 1.0, 2.0, 3.0, np.inf, 0.0], dtype=np.float32)
    predicted = np.array([1.0, np.nan, 2.0, 3.0, 1.0, 0.0])
    metrics = score_arrays(activation, predicted, "numeric", choose_threshold(activation))
    assert metrics["n_steps"] == 3


def test_boolean_predicate_matches_numpy_on_store(scored_runs) -> None:
    store, runs, analysis, layer_id = scored_runs
    activations, variables = whole_arrays(store, runs, layer_id)
    live = [s.channel for s in store.get_channel_stats(analysis.analysis_id, layer_id) if not s.dead]
    for channel in live[:4]:
        score = score_predicate(store, layer_id, channel, "pole_angle > 0 and action == 1")
        column = activations[:, channel]
        threshold = choose_threshold(column).value
        firing = column > threshold
        predicted = (variables["pole_angle"] > 0) & (variables["action"] == 1)
        assert score.analysis_id == analysis.analysis_id
        assert score.n_steps == column.size == 1400
        assert score.threshold == pytest.approx(threshold)
        assert score.n_firing == int(firing.sum())
        assert score.true_positives == int(np.sum(predicted & firing))
        assert score.auroc == pytest.approx(pairwise_auroc(predicted.astype(float), firing))
        assert score.f1 == pytest.approx(direct_f1(predicted, firing))
        assert score.precision == pytest.approx(np.sum(predicted & firing) / np.sum(predicted))
        assert score.recall == pytest.approx(np.sum(predicted & firing) / np.sum(firing))


def test_numeric_predicate_matches_numpy_on_store(scored_runs) -> None:
    store, runs, analysis, layer_id = scored_runs
    activations, variables = whole_arrays(store, runs, layer_id)
    live = [s.channel for s in store.get_channel_stats(analysis.analysis_id, layer_id) if not s.dead]
    score = score_predicate(store, layer_id, live[0], "abs(pole_angle) + 0.1 * pole_angular_velocity")
    value = np.abs(variables["pole_angle"]) + 0.1 * variables["pole_angular_velocity"]
    column = activations[:, live[0]]
    firing = column > choose_threshold(column).value
    assert score.kind == "numeric"
    assert score.f1 is None
    assert score.auroc == pytest.approx(pairwise_auroc(value, firing))
    assert score.correlation == pytest.approx(np.corrcoef(column, value)[0, 1])


def test_all_channels_in_groups_equal_single(scored_runs, monkeypatch) -> None:
    store, _, _, layer_id = scored_runs
    monkeypatch.setattr(scoring, "MAX_SCORING_BYTES", 4 * 1400 * 5)  # 5 channels per group
    together = score_predicate_channels(store, layer_id, "cart_velocity < 0")
    assert [s.channel for s in together] == list(range(64))
    for channel in (0, 4, 5, 63):
        assert together[channel] == score_predicate(store, layer_id, channel, "cart_velocity < 0")


def test_dead_channel_has_no_auroc(scored_runs) -> None:
    store, _, analysis, layer_id = scored_runs
    dead = [s.channel for s in store.get_channel_stats(analysis.analysis_id, layer_id) if s.dead]
    assert dead, "the demo policy's act1:post has dead channels"
    score = score_predicate(store, layer_id, dead[0], "pole_angle > 0")
    assert score.n_firing == 0
    assert score.auroc is None


def test_bad_predicate_or_channel_rejected(scored_runs) -> None:
    store, _, _, layer_id = scored_runs
    with pytest.raises(PredicateError, match="cart_position"):
        score_predicate(store, layer_id, 0, "pole > 0")
    with pytest.raises(NotFoundError, match="0 to 63"):
        score_predicate(store, layer_id, 64, "pole_angle > 0")


def test_explanation_scores_are_stored(scored_runs) -> None:
    store, _, _, layer_id = scored_runs
    written = store.add_explanation(layer_id=layer_id, channel=2, text="leans right",
                                    predicate="pole_angle > 0.01", author="tester", method="manual")
    scored = score_explanation_predicate(store, written.explanation_id)
    direct = score_predicate(store, layer_id, 2, "pole_angle > 0.01")
    assert scored.version == written.version
    assert scored.scores["predicate"]["auroc"] == pytest.approx(direct.auroc)
    assert scored.scores["predicate"]["threshold_rule"] == direct.threshold_rule
    assert store.get_explanation(written.explanation_id).scores == scored.scores


def test_explanation_without_predicate_rejected(scored_runs) -> None:
    store, _, _, layer_id = scored_runs
    written = store.add_explanation(layer_id=layer_id, channel=2, text="no claim", author="tester",
                                    method="manual")
    with pytest.raises(InvalidArgumentError, match="no predicate"):
        score_explanation_predicate(store, written)
