"""Streaming accumulators fed batch by batch, against numpy on the whole array."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlatent_mcp.analysis.accumulators import (
    AdaptiveHistogram,
    CorrelationAccumulator,
    MomentAccumulator,
    TopK,
    _finite_parts,
)

QUANTILES = np.array([0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0])


def batches(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Split `values` along the steps axis into consecutive batches of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [values[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def relu_like(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    """Half-rectified Gaussian channels with scales that differ by orders of magnitude."""
    scales = np.logspace(-3, 2, channels)
    return np.maximum(rng.normal(0.2, 1.0, (n, channels)) * scales, 0.0).astype(np.float32)


def feed_histogram(values: np.ndarray, sizes: list[int]) -> AdaptiveHistogram:
    histogram = AdaptiveHistogram(values.shape[1])
    for batch in batches(values, sizes):
        x, finite = _finite_parts(batch)
        histogram.update(x, finite)
    return histogram


def assert_quantiles_within_one_bin(values: np.ndarray, histogram: AdaptiveHistogram) -> None:
    x = values.astype(np.float64)
    estimated = histogram.quantiles(QUANTILES, x.min(axis=0), x.max(axis=0))  # (C, Q)
    expected = np.quantile(x, QUANTILES, axis=0).T
    # One bin width, plus rounding in the bin-edge arithmetic.
    bound = histogram.width[:, None] * (1 + 1e-9) + 1e-12
    error = np.abs(estimated - expected)
    worst = np.unravel_index(np.argmax(error / bound), error.shape)
    assert (error <= bound).all(), (
        f"channel {worst[0]} q={QUANTILES[worst[1]]}: {estimated[worst]} vs numpy {expected[worst]}, "
        f"bin width {histogram.width[worst[0]]}"
    )


def test_quantiles_single_batch_relu() -> None:
    values = relu_like(np.random.default_rng(0), 2101, 12)
    histogram = feed_histogram(values, [2101])
    assert_quantiles_within_one_bin(values, histogram)


def test_quantiles_across_gap_in_sorted_values() -> None:
    """numpy interpolates between order statistics that can lie many bins apart."""
    # 21 values at 0, then a jump: the 0.01-quantile of 2100 values sits at rank 20.99,
    # between the last zero and the first value after the gap.
    values = np.concatenate([np.zeros(21), np.linspace(0.5, 1.0, 2079)]).astype(np.float32)[:, None]
    histogram = feed_histogram(values, [len(values)])
    assert_quantiles_within_one_bin(values, histogram)
    expected = np.quantile(values.astype(np.float64), 0.01)
    estimated = histogram.quantiles(np.array([0.01]), np.array([0.0]), np.array([1.0]))[0, 0]
    assert estimated == pytest.approx(expected, abs=histogram.width[0] * 1.000001)


def test_quantiles_after_range_grows_both_ways() -> None:
    rng = np.random.default_rng(1)
    narrow = rng.uniform(-0.01, 0.01, (500, 3))
    wide_high = rng.uniform(0.0, 40.0, (300, 3))
    wide_low = rng.uniform(-900.0, 0.0, (300, 3))
    values = np.concatenate([narrow, wide_high, wide_low]).astype(np.float32)
    histogram = feed_histogram(values, [500, 300, 300])
    # The first batch set a range 0.02 wide; later batches doubled it on both sides.
    assert (histogram.width * histogram.bins > 900).all()
    assert (histogram.low < -900).all()
    assert (histogram.counts.sum(axis=1) == len(values)).all()
    assert_quantiles_within_one_bin(values, histogram)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    offset=st.floats(-1e3, 1e3),
    scale=st.floats(1e-4, 1e3),
)
def test_quantiles_any_batching(seed: int, sizes: list[int], offset: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    # Channel 0 drifts, so later batches leave the first batch's range; channel 1 is rectified.
    drift = np.linspace(0, 5, n)[:, None]
    values = np.concatenate([
        (offset + scale * (rng.standard_normal((n, 1)) + drift)),
        np.maximum(scale * rng.standard_normal((n, 1)), 0.0),
    ], axis=1).astype(np.float32)
    histogram = feed_histogram(values, sizes)
    assert_quantiles_within_one_bin(values, histogram)


def test_histogram_ignores_non_finite() -> None:
    values = np.array([[1.0, np.nan], [np.inf, np.nan], [3.0, -np.inf], [2.0, 5.0]], dtype=np.float32)
    histogram = feed_histogram(values, [2, 2])
    assert histogram.counts[0].sum() == 3
    assert histogram.counts[1].sum() == 1
    # Channel 1 saw no finite value in the first batch, so the second one set its range.
    assert histogram.low[1] == 5.0


def test_coarse_histogram_covers_all_values() -> None:
    values = relu_like(np.random.default_rng(2), 3000, 4)
    histogram = feed_histogram(values, [1000, 1000, 1000])
    for channel in range(4):
        edges, counts = histogram.coarse(channel, 64)
        assert len(edges) == len(counts) + 1
        assert len(counts) <= 64
        assert sum(counts) == 3000
        assert np.all(np.diff(edges) > 0)
        assert edges[0] <= values[:, channel].min()
        assert edges[-1] >= values[:, channel].max()
        reference, _ = np.histogram(values[:, channel], bins=np.asarray(edges))
        # Values on an edge may fall on either side of it; totals per bin agree to within that.
        assert np.abs(reference - np.asarray(counts)).sum() <= 2 * len(counts)


def with_non_finite(rng: np.random.Generator, n: int, channels: int) -> np.ndarray:
    values = rng.normal(0.0, 1.0, (n, channels)).astype(np.float32)
    values[rng.random((n, channels)) < 0.05] = np.nan
    values[rng.random((n, channels)) < 0.03] = np.inf
    values[rng.random((n, channels)) < 0.02] = -np.inf
    values[:, 2] = np.nan  # a channel with no finite value at all
    return values


def test_moments_match_numpy_with_non_finite() -> None:
    rng = np.random.default_rng(3)
    values = with_non_finite(rng, 1500, 5)
    values[:, 3] += 1e4  # a large offset, where naive sums of squares cancel
    moments = MomentAccumulator(5, active_threshold=0.0)
    for batch in batches(values, [100, 700, 1, 699]):
        x, finite = _finite_parts(batch)
        moments.update(x, finite, batch)
    finite = np.isfinite(values)
    assert moments.count.tolist() == finite.sum(axis=0).tolist()
    assert moments.nan_count.tolist() == np.isnan(values).sum(axis=0).tolist()
    assert moments.inf_count.tolist() == np.isinf(values).sum(axis=0).tolist()
    for channel in range(5):
        x = values[finite[:, channel], channel].astype(np.float64)
        if x.size == 0:
            assert np.isnan(moments.mean()[channel])
            assert np.isnan(moments.std()[channel])
            continue
        assert moments.mean()[channel] == pytest.approx(x.mean(), rel=1e-12, abs=1e-12)
        assert moments.std()[channel] == pytest.approx(x.std(), rel=1e-9)
        assert moments.min[channel] == x.min()
        assert moments.max[channel] == x.max()
        assert moments.frac_active()[channel] == pytest.approx((x > 0).mean())


def test_correlations_match_corrcoef() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    variables = rng.normal(size=(n, 3))
    variables[:, 2] = 1.0  # a constant variable: r is undefined
    values = np.stack([
        variables[:, 0] * 2 + rng.normal(scale=0.1, size=n),
        -variables[:, 1] + 5e3,
        rng.normal(size=n),
        np.zeros(n),  # a dead channel: r is undefined
    ], axis=1).astype(np.float32)
    values[rng.random(n) < 0.1, 2] = np.nan
    accumulator = CorrelationAccumulator(4, 3)
    for lo, hi in [(0, 64), (64, 1000), (1000, 2000)]:
        x, finite = _finite_parts(values[lo:hi])
        accumulator.update(x, finite, variables[lo:hi])
    r = accumulator.pearson()
    for channel in range(4):
        keep = np.isfinite(values[:, channel])
        for variable in range(3):
            x = values[keep, channel].astype(np.float64)
            y = variables[keep, variable]
            if x.std() == 0 or y.std() == 0:
                assert np.isnan(r[channel, variable]), (channel, variable)
            else:
                expected = np.corrcoef(x, y)[0, 1]
                assert r[channel, variable] == pytest.approx(expected, abs=1e-9), (channel, variable)


def test_top_k_matches_argsort_across_runs() -> None:
    rng = np.random.default_rng(5)
    runs = {3: rng.normal(size=(700, 6)), 8: rng.normal(size=(450, 6))}
    runs[8][:, 5] = np.nan
    runs[3][:200, 5] = np.nan
    runs[3][200:, 5] = np.arange(500)  # distinct values in run 3 only
    top = TopK(25, 6)
    for run_id, values in runs.items():
        for lo in range(0, len(values), 128):
            block = values[lo:lo + 128].astype(np.float32)
            x, finite = _finite_parts(block)
            top.update(x, finite, run_id, np.arange(lo, lo + len(block)))
    got_values, got_runs, got_steps = top.sorted()
    all_values = np.concatenate([v.astype(np.float32) for v in runs.values()]).astype(np.float64)
    all_runs = np.concatenate([np.full(len(v), run_id) for run_id, v in runs.items()])
    all_steps = np.concatenate([np.arange(len(v)) for v in runs.values()])
    for channel in range(6):
        column = np.where(np.isfinite(all_values[:, channel]), all_values[:, channel], -np.inf)
        order = np.argsort(-column, kind="stable")[:25]
        np.testing.assert_array_equal(got_values[channel], column[order])
        np.testing.assert_array_equal(got_runs[channel], all_runs[order])
        np.testing.assert_array_equal(got_steps[channel], all_steps[order])
