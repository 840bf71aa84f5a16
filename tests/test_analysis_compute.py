"""Stored statistics, correlations and top activations against numpy on the whole recorded array."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import RecordedRuns, layer_activations
from interlatent_mcp.analysis import AnalysisParams, compute, compute_stats
from interlatent_mcp.analysis.accumulators import HISTOGRAM_BINS
from interlatent_mcp.capture import TorchPolicy, record_rollout
from interlatent_mcp.store import AnalysisRecord, ChannelStats, RunRecord, Store

TOP_K = 32


def whole_arrays(store: Store, runs: list[RunRecord], layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (activations as float64, variables, run ids, steps) of `runs` concatenated in order."""
    values = np.concatenate([layer_activations(store, run, layer) for run in runs]).astype(np.float64)
    variables = np.concatenate([store.read_step_range(run.run_id).variables for run in runs])
    run_ids = np.concatenate([np.full(run.n_steps, run.run_id) for run in runs])
    steps = np.concatenate([np.arange(run.n_steps) for run in runs])
    return values, variables, run_ids, steps


def coarse_bin_width(stats: ChannelStats) -> float:
    return float(np.max(np.diff(stats.hist_edges)))


def first_batch_bin_width(stats: ChannelStats) -> float:
    """The histogram's bin width when one batch set its range: the range 1.001 times (max - min)."""
    return (stats.max - stats.min) * 1.001 / HISTOGRAM_BINS


def assert_stats_match_numpy(stats: ChannelStats, column: np.ndarray, threshold: float = 0.0) -> None:
    """Compare one channel's stored statistics with numpy over its finite values."""
    channel = stats.channel
    assert stats.nan_count == int(np.isnan(column).sum()), channel
    assert stats.inf_count == int(np.isinf(column).sum()), channel
    x = column[np.isfinite(column)]
    assert stats.count == x.size, channel
    assert stats.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-12), channel
    assert stats.std == pytest.approx(x.std(), rel=1e-7, abs=1e-9), channel
    assert stats.min == x.min(), channel
    assert stats.max == x.max(), channel
    assert stats.frac_active == pytest.approx((x > threshold).mean()), channel
    span = x.max() - x.min()
    dead = span <= 1e-6 * (1 + abs(x.max()))
    assert stats.dead == dead, channel
    assert sum(stats.hist_counts) == x.size, channel
    assert stats.hist_edges[0] <= x.min()
    assert stats.hist_edges[-1] >= x.max()


def assert_quantiles_match_numpy(stats: ChannelStats, column: np.ndarray, bound: float) -> None:
    x = column[np.isfinite(column)]
    assert set(stats.quantiles) == {f"{q:g}" for q in AnalysisParams().quantiles}
    for level, value in stats.quantiles.items():
        expected = np.quantile(x, float(level))
        assert abs(value - expected) <= bound * (1 + 1e-9) + 1e-12, (
            f"channel {stats.channel} q={level}: {value} vs numpy {expected}, bound {bound}"
        )


def assert_correlations_match_numpy(store: Store, analysis: AnalysisRecord, layer_id: int,
                                    values: np.ndarray, variables: np.ndarray, names: list[str]) -> None:
    stored = {(c.channel, c.variable): c.r for c in store.get_correlations(analysis.analysis_id, layer_id)}
    assert len(stored) == values.shape[1] * len(names)
    for channel in range(values.shape[1]):
        keep = np.isfinite(values[:, channel])
        x = values[keep, channel]
        for index, name in enumerate(names):
            y = variables[keep, index]
            r = stored[(channel, name)]
            if x.size < 2 or np.ptp(x) <= 1e-6 * (1 + abs(x.max())) or np.ptp(y) == 0:
                assert r is None, (channel, name)
            else:
                assert r == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-7), (channel, name)


def assert_top_matches_argsort(store: Store, analysis: AnalysisRecord, layer_id: int,
                               values: np.ndarray, run_ids: np.ndarray, steps: np.ndarray) -> None:
    for channel in range(values.shape[1]):
        column = np.where(np.isfinite(values[:, channel]), values[:, channel], -np.inf)
        n_finite = int(np.isfinite(column).sum())
        order = np.argsort(-column, kind="stable")[: min(TOP_K, n_finite)]
        top = store.get_top_activations(analysis.analysis_id, layer_id, channel)
        assert [t.rank for t in top] == list(range(len(order))), channel
        np.testing.assert_array_equal([t.value for t in top], column[order], err_msg=str(channel))
        # Where a value occurs once among the candidates, it names one step.
        candidates = column[np.argsort(-column, kind="stable")[: len(order) + 1]]
        for t, index in zip(top, order):
            if np.count_nonzero(candidates == t.value) == 1:
                assert (t.run_id, t.step) == (run_ids[index], steps[index]), (channel, t)


@pytest.fixture(scope="module")
def single_run_analysis(recorded: RecordedRuns) -> AnalysisRecord:
    return compute_stats(recorded.store, [recorded.default_run.run_id],
                         params=AnalysisParams(top_k=TOP_K))


@pytest.fixture(scope="module")
def two_run_analysis(recorded: RecordedRuns) -> AnalysisRecord:
    return compute_stats(recorded.store, [recorded.default_run.run_id, recorded.second_run.run_id],
                         params=AnalysisParams(top_k=TOP_K))


@pytest.mark.parametrize("layer", ["act1:pre", "act1:post", "act2:pre", "act2:post"])
def test_single_run_stats_match_numpy(recorded: RecordedRuns, single_run_analysis: AnalysisRecord,
                                      layer: str) -> None:
    store, run = recorded.store, recorded.default_run
    layer_id = store.run_layer_ids(run.run_id)[layer]
    values, variables, run_ids, steps = whole_arrays(store, [run], layer)
    stats = store.get_channel_stats(single_run_analysis.analysis_id, layer_id)
    assert [s.channel for s in stats] == list(range(64))
    for channel_stats in stats:
        column = values[:, channel_stats.channel]
        assert_stats_match_numpy(channel_stats, column)
        # One batch set the histogram's range, so its bins are (max - min) / 2048 wide.
        if channel_stats.max > channel_stats.min:
            assert_quantiles_match_numpy(channel_stats, column, first_batch_bin_width(channel_stats))
    assert_correlations_match_numpy(store, single_run_analysis, layer_id, values, variables,
                                    run.variables)
    assert_top_matches_argsort(store, single_run_analysis, layer_id, values, run_ids, steps)


@pytest.mark.parametrize("layer", ["act1:pre", "act2:post"])
def test_two_run_stats_match_numpy(recorded: RecordedRuns, two_run_analysis: AnalysisRecord,
                                   layer: str) -> None:
    store = recorded.store
    runs = [recorded.default_run, recorded.second_run]
    layer_id = store.run_layer_ids(runs[0].run_id)[layer]
    values, variables, run_ids, steps = whole_arrays(store, runs, layer)
    assert two_run_analysis.n_steps == 2100
    assert two_run_analysis.run_ids == [runs[0].run_id, runs[1].run_id]
    for channel_stats in store.get_channel_stats(two_run_analysis.analysis_id, layer_id):
        column = values[:, channel_stats.channel]
        assert_stats_match_numpy(channel_stats, column)
        if channel_stats.max > channel_stats.min:
            assert_quantiles_match_numpy(channel_stats, column, coarse_bin_width(channel_stats))
    assert_correlations_match_numpy(store, two_run_analysis, layer_id, values, variables,
                                    runs[0].variables)
    assert_top_matches_argsort(store, two_run_analysis, layer_id, values, run_ids, steps)


@pytest.mark.parametrize("batch_steps", [1, 150, 1000])
def test_batches_spanning_chunks(recorded: RecordedRuns, monkeypatch: pytest.MonkeyPatch,
                                 batch_steps: int) -> None:
    """Batches of one chunk, of two chunks and of ten, over three runs: the results do not change."""
    monkeypatch.setattr(compute, "BATCH_STEPS", batch_steps)
    store = recorded.store
    runs = [recorded.second_run, recorded.default_run, recorded.custom_run]
    analysis = compute_stats(store, [run.run_id for run in runs], ["act1:post"],
                             params=AnalysisParams(top_k=TOP_K))
    assert analysis.run_ids == sorted(run.run_id for run in runs)
    assert analysis.n_steps == 2800
    layer_id = store.run_layer_ids(runs[0].run_id)["act1:post"]
    values, variables, run_ids, steps = whole_arrays(store, runs, "act1:post")
    for channel_stats in store.get_channel_stats(analysis.analysis_id, layer_id):
        column = values[:, channel_stats.channel]
        assert_stats_match_numpy(channel_stats, column)
        if channel_stats.max > channel_stats.min:
            assert_quantiles_match_numpy(channel_stats, column, coarse_bin_width(channel_stats))
    assert_correlations_match_numpy(store, analysis, layer_id, values, variables, runs[0].variables)
    assert_top_matches_argsort(store, analysis, layer_id, values, run_ids, steps)


def test_layers_default_to_common_recorded(recorded: RecordedRuns) -> None:
    store = recorded.store
    analysis = compute_stats(store, [recorded.default_run.run_id, recorded.custom_run.run_id],
                             params=AnalysisParams(top_k=4))
    # act1:post is the only layer both runs recorded.
    assert analysis.layer_ids == [store.run_layer_ids(recorded.custom_run.run_id)["act1:post"]]


def test_custom_layers_analysis(recorded: RecordedRuns) -> None:
    store, run = recorded.store, recorded.custom_run
    analysis = compute_stats(store, [run.run_id], ["logits:post", "fc1:post"])
    ids = store.run_layer_ids(run.run_id)
    assert sorted(analysis.layer_ids) == sorted([ids["logits:post"], ids["fc1:post"]])
    values, variables, _run_ids, _steps = whole_arrays(store, [run], "logits:post")
    stats = store.get_channel_stats(analysis.analysis_id, ids["logits:post"])
    assert len(stats) == 2
    for channel_stats in stats:
        assert_stats_match_numpy(channel_stats, values[:, channel_stats.channel])
    assert_correlations_match_numpy(store, analysis, ids["logits:post"], values, variables,
                                    run.variables)


def test_rank_channels_by_correlation(recorded: RecordedRuns, single_run_analysis: AnalysisRecord) -> None:
    store, run = recorded.store, recorded.default_run
    layer_id = store.run_layer_ids(run.run_id)["act2:pre"]
    values, variables, _run_ids, _steps = whole_arrays(store, [run], "act2:pre")
    y = variables[:, run.variables.index("pole_angular_velocity")]
    r = np.array([np.corrcoef(values[:, c], y)[0, 1] if np.ptp(values[:, c]) > 0 else np.nan
                  for c in range(64)])
    ranked = store.rank_channels_by_correlation(single_run_analysis.analysis_id, layer_id,
                                                "pole_angular_velocity", limit=5)
    assert [c.channel for c in ranked] == list(np.argsort(-np.nan_to_num(np.abs(r)))[:5])
    positive = store.rank_channels_by_correlation(single_run_analysis.analysis_id, layer_id,
                                                  "pole_angular_velocity", order="positive", limit=1)
    assert positive[0].channel == int(np.nanargmax(r))
    negative = store.rank_channels_by_correlation(single_run_analysis.analysis_id, layer_id,
                                                  "pole_angular_velocity", order="negative", limit=1)
    assert negative[0].channel == int(np.nanargmin(r))


def test_latest_analysis_lookup(recorded: RecordedRuns, single_run_analysis: AnalysisRecord,
                                two_run_analysis: AnalysisRecord) -> None:
    store = recorded.store
    layer_id = store.run_layer_ids(recorded.default_run.run_id)["act1:post"]
    assert store.latest_analysis(layer_id, [recorded.default_run.run_id]).analysis_id == (
        single_run_analysis.analysis_id)
    pair = [recorded.second_run.run_id, recorded.default_run.run_id]
    assert store.latest_analysis(layer_id, pair).analysis_id == two_run_analysis.analysis_id


def test_progress_reaches_total(recorded: RecordedRuns) -> None:
    reports: list[tuple[int, int]] = []
    compute_stats(recorded.store, [recorded.custom_run.run_id], ["fc1:post"],
                  progress=lambda done, total: reports.append((done, total)))
    assert reports[-1] == (700, 700)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_should_stop_writes_nothing(recorded: RecordedRuns) -> None:
    store = recorded.store
    before = len(store.list_analyses())
    with pytest.raises(InterruptedError, match="nothing was written"):
        compute_stats(store, [recorded.custom_run.run_id], should_stop=lambda: True)
    assert len(store.list_analyses()) == before


def test_top_k_and_threshold_params(recorded: RecordedRuns) -> None:
    store, run = recorded.store, recorded.custom_run
    analysis = compute_stats(store, [run.run_id], ["fc1:post"],
                             params=AnalysisParams(top_k=5, active_threshold=0.5, hist_bins=16))
    assert analysis.params["top_k"] == 5
    layer_id = store.run_layer_ids(run.run_id)["fc1:post"]
    values, *_ = whole_arrays(store, [run], "fc1:post")
    for channel_stats in store.get_channel_stats(analysis.analysis_id, layer_id):
        assert_stats_match_numpy(channel_stats, values[:, channel_stats.channel], threshold=0.5)
        assert len(channel_stats.hist_counts) <= 16
        assert len(store.get_top_activations(analysis.analysis_id, layer_id, channel_stats.channel)) == 5


class Spikes(nn.Module):
    """Pass channels through, but emit +inf, NaN and -inf under conditions on the input."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, 0] = torch.where(h[:, 0] > 0, torch.inf, h[:, 0])
        out[:, 1] = torch.where(h[:, 1] > 0.2, torch.nan, h[:, 1])
        out[:, 2] = torch.where(h[:, 2] < -0.3, -torch.inf, h[:, 2])
        out[:, 5] = torch.nan
        return out


class SpikyPolicyNet(nn.Module):
    """Read each observation into a channel; act on the pole's angular velocity."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6, bias=False)
        self.spikes = Spikes()
        self.head = nn.Linear(6, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([
                [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 10.0, 0], [0, 0, 0, 1.0],
                [1.0, 1.0, 0, 0], [0, 0, 1.0, 1.0],
            ]))
            self.head.weight.zero_()
            self.head.weight[1, 3] = 1.0

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.spikes(self.fc(obs))
        return self.head(torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0))


@pytest.fixture(scope="module")
def spiky_run(tmp_path_factory: pytest.TempPathFactory):
    env = gym.make("CartPole-v1")
    policy = TorchPolicy(SpikyPolicyNet(), observation_space=env.observation_space,
                         action_space=env.action_space, name="spiky", env_id="CartPole-v1")
    env.close()
    store = Store(tmp_path_factory.mktemp("spiky") / "store.sqlite")
    run = record_rollout(store, policy, steps=800, layers=["spikes:post"], chunk_steps=100)
    analysis = compute_stats(store, [run.run_id], params=AnalysisParams(top_k=TOP_K))
    yield store, run, analysis
    store.close()


def test_non_finite_run_still_acts(spiky_run) -> None:
    store, run, _analysis = spiky_run
    assert run.status == "complete"
    assert run.n_steps == 800
    actions = store.read_step_range(run.run_id).variables[:, run.variables.index("action")]
    assert set(np.unique(actions)) == {0.0, 1.0}


def test_non_finite_counted_and_excluded(spiky_run) -> None:
    store, run, analysis = spiky_run
    layer_id = store.run_layer_ids(run.run_id)["spikes:post"]
    values, variables, run_ids, steps = whole_arrays(store, [run], "spikes:post")
    # Each spiking channel has both finite and non-finite steps, so the test exercises both.
    assert 0 < np.isposinf(values[:, 0]).sum() < 800
    assert 0 < np.isnan(values[:, 1]).sum() < 800
    assert 0 < np.isneginf(values[:, 2]).sum() < 800
    stats = store.get_channel_stats(analysis.analysis_id, layer_id)
    for channel_stats in stats[:5]:
        column = values[:, channel_stats.channel]
        assert_stats_match_numpy(channel_stats, column)
        assert_quantiles_match_numpy(channel_stats, column, first_batch_bin_width(channel_stats))
    assert_correlations_match_numpy(store, analysis, layer_id, values, variables, run.variables)
    assert_top_matches_argsort(store, analysis, layer_id, values, run_ids, steps)
    # The top steps of channel 0 are finite, even though +inf is its largest value.
    top = store.get_top_activations(analysis.analysis_id, layer_id, 0)
    assert all(np.isfinite(t.value) and t.value <= 0 for t in top)


def test_all_nan_channel(spiky_run) -> None:
    store, run, analysis = spiky_run
    layer_id = store.run_layer_ids(run.run_id)["spikes:post"]
    (stats,) = store.get_channel_stats(analysis.analysis_id, layer_id, [5])
    assert (stats.count, stats.nan_count, stats.inf_count) == (0, 800, 0)
    assert stats.mean is None
    assert stats.std is None
    assert stats.min is None
    assert stats.max is None
    assert stats.frac_active is None
    assert stats.quantiles == {}
    assert stats.hist_counts == []
    assert stats.dead
    assert store.get_top_activations(analysis.analysis_id, layer_id, 5) == []
    assert {c.r for c in store.get_correlations(analysis.analysis_id, layer_id, channel=5)} == {None}


def test_summary_reports_non_finite(spiky_run) -> None:
    from interlatent_mcp.analysis.summary import summarize

    store, run, analysis = spiky_run
    values, *_ = whole_arrays(store, [run], "spikes:post")
    text = summarize(store, analysis)
    assert f"{int((~np.isfinite(values)).sum())} NaN or infinite activations were excluded" in text
