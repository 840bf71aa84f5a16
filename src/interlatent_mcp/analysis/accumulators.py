"""Streaming accumulators over batches of activations (steps x channels).

Each accumulator is updated with every batch once, in order, and keeps O(channels) state
(O(channels x bins) for the histogram). Statistics over a run of any length therefore need one
pass and one batch in memory. Sums are kept in float64 around a per-channel shift (the first batch's mean), which keeps
the variance and correlation formulas from cancelling catastrophically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 2048


def _finite_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (values as float64 with non-finite entries set to 0, finite mask or None if all finite)."""
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    if finite.all():
        return x, None
    return np.where(finite, x, 0.0), finite


class MomentAccumulator:
    """Count, NaN and inf counts, mean, std, min, max and fraction active per channel."""

    def __init__(self, n_channels: int, active_threshold: float) -> None:
        self.active_threshold = active_threshold
        self.count = np.zeros(n_channels, dtype=np.int64)
        self.nan_count = np.zeros(n_channels, dtype=np.int64)
        self.inf_count = np.zeros(n_channels, dtype=np.int64)
        self.active = np.zeros(n_channels, dtype=np.int64)
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(n_channels)
        self.sum_sq = np.zeros(n_channels)
        self.min = np.full(n_channels, np.inf)
        self.max = np.full(n_channels, -np.inf)

    def update(self, x: np.ndarray, finite: np.ndarray | None, raw: np.ndarray) -> None:
        """Add a batch: `x` (n, C) float64 with non-finite entries zeroed, `finite` their mask."""
        if finite is None:
            n_finite = np.full(x.shape[1], x.shape[0], dtype=np.int64)
        else:
            n_finite = finite.sum(axis=0)
            self.nan_count += np.isnan(raw).sum(axis=0)
            self.inf_count += np.isinf(raw).sum(axis=0)
        if self.shift is None:
            self.shift = np.where(n_finite > 0, x.sum(axis=0) / np.maximum(n_finite, 1), 0.0)
        centred = x - self.shift
        if finite is not None:
            centred = np.where(finite, centred, 0.0)
        self.count += n_finite
        self.sum += centred.sum(axis=0)
        self.sum_sq += np.einsum("ij,ij->j", centred, centred)
        low = x if finite is None else np.where(finite, x, np.inf)
        high = x if finite is None else np.where(finite, x, -np.inf)
        self.min = np.minimum(self.min, low.min(axis=0))
        self.max = np.maximum(self.max, high.max(axis=0))
        above = x > self.active_threshold
        if finite is not None:
            above &= finite
        self.active += above.sum(axis=0)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.shift + self.sum / self.count, np.nan)

    def std(self) -> np.ndarray:
        """Population standard deviation (numpy's default, ddof=0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_centred = self.sum / self.count
            variance = self.sum_sq / self.count - mean_centred**2
        return np.where(self.count > 0, np.sqrt(np.maximum(variance, 0.0)), np.nan)

    def frac_active(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.active / self.count, np.nan)


class AdaptiveHistogram:
    """A per-channel histogram of fixed bin count whose range doubles to cover new values.

    The first batch sets each channel's range. When a later value falls outside it, the bin
    width doubles (adjacent bins merge in pairs) and the range grows on the side that needs it,
    so bin edges stay aligned and no count is ever approximated. Quantiles read from it are
    accurate to one bin width.
    """

    def __init__(self, n_channels: int, bins: int = HISTOGRAM_BINS) -> None:
        if bins % 2:
            raise ValueError(f"bins must be even to merge pairs, got {bins}")
        self.bins = bins
        self.low = np.zeros(n_channels)
        self.width = np.zeros(n_channels)
        self.counts = np.zeros((n_channels, bins), dtype=np.int64)
        self.initialised = np.zeros(n_channels, dtype=bool)

    def update(self, x: np.ndarray, finite: np.ndarray | None) -> None:
        lo_batch, hi_batch = self._batch_range(x, finite)
        self._initialise(lo_batch, hi_batch)
        self._grow(lo_batch, hi_batch)

        # Bin every value at once: one bincount over channel-offset bin indices.
        n_channels = x.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            index = np.floor((x - self.low) / self.width)
        index = np.clip(np.nan_to_num(index, nan=0.0), 0, self.bins - 1).astype(np.int64)
        index += np.arange(n_channels) * self.bins
        weights = None if finite is None else finite.ravel().astype(np.float64)
        counts = np.bincount(index.ravel(), weights=weights, minlength=n_channels * self.bins)
        self.counts += counts.reshape(n_channels, self.bins).astype(np.int64)

    @staticmethod
    def _batch_range(x: np.ndarray, finite: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if finite is None:
            return x.min(axis=0), x.max(axis=0)
        return np.where(finite, x, np.inf).min(axis=0), np.where(finite, x, -np.inf).max(axis=0)

    def _initialise(self, lo: np.ndarray, hi: np.ndarray) -> None:
        new = ~self.initialised & np.isfinite(lo)
        if not new.any():
            return
        span = hi[new] - lo[new]
        # A constant channel still gets a non-zero width, relative to its magnitude.
        span = np.where(span > 0, span, np.maximum(np.abs(lo[new]), 1.0) * 1e-6)
        width = span * 1.001 / self.bins
        self.low[new] = lo[new]
        self.width[new] = width
        self.initialised[new] = True

    def _grow(self, lo: np.ndarray, hi: np.ndarray) -> None:
        high_edge = self.low + self.width * self.bins
        needs = self.initialised & np.isfinite(lo) & ((lo < self.low) | (hi >= high_edge))
        half = self.bins // 2
        for channel in np.flatnonzero(needs):
            while lo[channel] < self.low[channel] or hi[channel] >= (
                self.low[channel] + self.width[channel] * self.bins
            ):
                merged = self.counts[channel].reshape(half, 2).sum(axis=1)
                counts = np.zeros(self.bins, dtype=np.int64)
                if lo[channel] < self.low[channel]:
                    # Extend downwards: the old range becomes the upper half.
                    counts[half:] = merged
                    self.low[channel] -= self.width[channel] * self.bins
                else:
                    counts[:half] = merged
                self.counts[channel] = counts
                self.width[channel] *= 2

    def quantiles(self, qs: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
        """Return (C, len(qs)) quantiles with numpy's default (linear) definition, from the bins."""
        n_channels = self.counts.shape[0]
        result = np.full((n_channels, len(qs)), np.nan)
        cumulative = np.cumsum(self.counts, axis=1)
        for channel in range(n_channels):
            total = cumulative[channel, -1]
            if total == 0:
                continue
            # The q-quantile sits at 0-based rank q*(n-1) among the sorted values, and numpy
            # interpolates between the order statistics on either side of it. Each is read to
            # within one bin, so the interpolation is too, even when the two lie bins apart.
            ranks = np.asarray(qs) * (total - 1)
            below = np.floor(ranks)
            above = np.minimum(below + 1, total - 1)
            low_values = self._order_statistics(channel, cumulative[channel], below)
            high_values = self._order_statistics(channel, cumulative[channel], above)
            values = low_values + (ranks - below) * (high_values - low_values)
            result[channel] = np.clip(values, minimum[channel], maximum[channel])
        return result

    def _order_statistics(self, channel: int, cumulative: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """Estimate the values at integer 0-based `ranks`, each inside the bin that contains it."""
        bin_index = np.searchsorted(cumulative, ranks, side="right")
        bin_index = np.minimum(bin_index, self.bins - 1)
        before = np.where(bin_index > 0, cumulative[bin_index - 1], 0)
        in_bin = np.maximum(self.counts[channel, bin_index], 1)
        fraction = (ranks - before + 0.5) / in_bin
        return self.low[channel] + (bin_index + np.clip(fraction, 0, 1)) * self.width[channel]

    def coarse(self, channel: int, bins: int) -> tuple[list[float], list[int]]:
        """Return (edges, counts) with about `bins` bins over the channel's occupied range."""
        counts = self.counts[channel]
        occupied = np.flatnonzero(counts)
        if occupied.size == 0:
            return [], []
        first, last = int(occupied[0]), int(occupied[-1]) + 1
        group = max(1, -(-(last - first) // bins))
        n_groups = -(-(last - first) // group)
        padded = np.zeros(n_groups * group, dtype=np.int64)
        padded[: last - first] = counts[first:last]
        grouped = padded.reshape(n_groups, group).sum(axis=1)
        edges = self.low[channel] + (first + np.arange(n_groups + 1) * group) * self.width[channel]
        return edges.tolist(), grouped.tolist()


class CorrelationAccumulator:
    """Pearson correlation of every channel with every per-step variable, over finite activations."""

    def __init__(self, n_channels: int, n_variables: int) -> None:
        self.n = np.zeros(n_channels)
        self.sum_x = np.zeros(n_channels)
        self.sum_xx = np.zeros(n_channels)
        self.sum_y = np.zeros((n_channels, n_variables))
        self.sum_yy = np.zeros((n_channels, n_variables))
        self.sum_xy = np.zeros((n_channels, n_variables))
        self.shift_x: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None

    def update(self, x: np.ndarray, finite: np.ndarray | None, y: np.ndarray) -> None:
        if self.shift_x is None:
            self.shift_x = x.mean(axis=0)
            self.shift_y = y.mean(axis=0)
        xc = x - self.shift_x
        yc = y - self.shift_y
        if finite is None:
            self.n += x.shape[0]
            self.sum_y += yc.sum(axis=0)
            self.sum_yy += (yc**2).sum(axis=0)
        else:
            xc = np.where(finite, xc, 0.0)
            mask = finite.astype(np.float64)
            self.n += mask.sum(axis=0)
            self.sum_y += mask.T @ yc
            self.sum_yy += mask.T @ (yc**2)
        self.sum_x += xc.sum(axis=0)
        self.sum_xx += np.einsum("ij,ij->j", xc, xc)
        self.sum_xy += xc.T @ yc

    def pearson(self) -> np.ndarray:
        """Return (C, V) correlations; NaN where either side is constant or there is no data."""
        n = self.n[:, None]
        cov = n * self.sum_xy - self.sum_x[:, None] * self.sum_y
        raw_x = n * self.sum_xx[:, None]
        raw_y = n * self.sum_yy
        var_x = raw_x - self.sum_x[:, None] ** 2
        var_y = raw_y - self.sum_y**2
        # A variance that is zero up to rounding means a constant series: r is undefined.
        constant = (var_x <= 1e-10 * raw_x) | (var_y <= 1e-10 * raw_y) | (n < 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(np.where(constant, 1.0, var_x * var_y))
        r[constant] = np.nan
        return np.clip(r, -1.0, 1.0)


@dataclass
class TopK:
    """The k highest finite values per channel with their (run, step), merged batch by batch."""

    k: int
    n_channels: int

    def __post_init__(self) -> None:
        self.values = np.full((self.n_channels, 0), -np.inf)
        self.runs = np.zeros((self.n_channels, 0), dtype=np.int64)
        self.steps = np.zeros((self.n_channels, 0), dtype=np.int64)

    def update(self, x: np.ndarray, finite: np.ndarray | None, run_id: int, steps: np.ndarray) -> None:
        values = x.T if finite is None else np.where(finite, x, -np.inf).T  # (C, n)
        n = values.shape[1]
        if n > self.k:
            index = np.argpartition(-values, self.k - 1, axis=1)[:, : self.k]
        else:
            index = np.broadcast_to(np.arange(n), (self.n_channels, n))
        candidates = np.take_along_axis(values, index, axis=1)
        merged_values = np.concatenate([self.values, candidates], axis=1)
        merged_runs = np.concatenate([self.runs, np.full(index.shape, run_id)], axis=1)
        merged_steps = np.concatenate([self.steps, steps[index]], axis=1)
        if merged_values.shape[1] > self.k:
            keep = np.argpartition(-merged_values, self.k - 1, axis=1)[:, : self.k]
            merged_values = np.take_along_axis(merged_values, keep, axis=1)
            merged_runs = np.take_along_axis(merged_runs, keep, axis=1)
            merged_steps = np.take_along_axis(merged_steps, keep, axis=1)
        self.values, self.runs, self.steps = merged_values, merged_runs, merged_steps

    def sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (values, runs, steps), each (C, <=k), highest value first, ties by (run, step)."""
        order = np.lexsort((self.steps, self.runs, -self.values), axis=1) if self.values.size else (
            np.zeros_like(self.values, dtype=np.int64))
        take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return take(self.values), take(self.runs), take(self.steps)
