"""Compute per-channel statistics, correlations and top activations over recorded runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from interlatent_mcp.analysis.accumulators import (
    AdaptiveHistogram,
    CorrelationAccumulator,
    MomentAccumulator,
    TopK,
    _finite_parts,
)
from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError
from interlatent_mcp.store import (
    AnalysisRecord,
    ChannelStats,
    Correlation,
    LayerResults,
    RunRecord,
    Store,
    TopActivation,
)

logger = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Chunks are concatenated into batches of about this many steps: large enough for numpy to
# vectorise well, small enough to keep memory at tens of MB for wide layers.
BATCH_STEPS = 32768
MAX_TOP_K = 1000


@dataclass(frozen=True)
class AnalysisParams:
    """Settings of one analysis; stored with its results."""

    top_k: int = 32
    """Number of highest-activating steps kept per channel (1 to 1000)."""
    active_threshold: float = 0.0
    """A channel is active at a step when its value is above this."""
    hist_bins: int = 64
    """Approximate number of bins of the stored histogram (2 to 1024)."""
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    """Quantile levels stored per channel, each in [0, 1]."""

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        if not 2 <= self.hist_bins <= 1024:
            raise InvalidArgumentError(f"hist_bins must be between 2 and 1024, got {self.hist_bins}")
        if not all(0.0 <= q <= 1.0 for q in self.quantiles):
            raise InvalidArgumentError(f"quantiles must lie in [0, 1], got {list(self.quantiles)}")
        if not np.isfinite(self.active_threshold):
            raise InvalidArgumentError(f"active_threshold must be finite, got {self.active_threshold}")


class _LayerPass:
    """All accumulators of one layer."""

    def __init__(self, width: int, n_variables: int, params: AnalysisParams) -> None:
        self.moments = MomentAccumulator(width, params.active_threshold)
        self.histogram = AdaptiveHistogram(width)
        self.correlations = CorrelationAccumulator(width, n_variables)
        self.top = TopK(params.top_k, width)

    def update(self, raw: np.ndarray, variables: np.ndarray, run_id: int, steps: np.ndarray) -> None:
        x, finite = _finite_parts(raw)
        self.moments.update(x, finite, raw)
        self.histogram.update(x, finite)
        self.correlations.update(x, finite, variables)
        self.top.update(x, finite, run_id, steps)


def _check_runs(store: Store, run_ids: Sequence[int]) -> list[RunRecord]:
    runs = store.get_finished_runs(run_ids, purpose="analyse")
    variables = {tuple(run.variables) for run in runs}
    if len(variables) > 1:
        raise InvalidArgumentError(
            f"runs {[r.run_id for r in runs]} record different per-step variables; analyse runs "
            f"of the same environment and metrics together"
        )
    if all(run.n_steps == 0 for run in runs):
        raise InvalidArgumentError(
            f"runs {[r.run_id for r in runs]} have no recorded steps; analyse a run that recorded "
            f"at least one step"
        )
    return runs


def _check_layers(store: Store, runs: list[RunRecord], layers: Sequence[str] | None) -> list[str]:
    common = [name for name in runs[0].layers if all(name in run.layers for run in runs)]
    if layers is None:
        if not common:
            raise InvalidArgumentError(f"runs {[r.run_id for r in runs]} share no recorded layer")
        return common
    for name in layers:
        if name not in common:
            raise UnknownLayerError(
                f"layer {name!r} was not recorded in every run {[r.run_id for r in runs]}; "
                f"recorded layers: {', '.join(common) or 'none'}"
            )
    return list(dict.fromkeys(layers))


def iter_batches(store: Store, run: RunRecord,
                 layer_id: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (activations (n, C), variables (n, V), step numbers (n,)) of one run and layer.

    Chunks are joined into batches of about BATCH_STEPS steps, in step order.
    """
    acts: list[np.ndarray] = []
    variables: list[np.ndarray] = []
    starts: list[int] = []
    pending = 0
    for (step_start, block), steps in zip(store.iter_activation_chunks(run.run_id, layer_id),
                                          store.iter_step_chunks(run.run_id)):
        if step_start != steps.step_start or block.shape[0] != steps.n_steps:
            raise InvalidArgumentError(
                f"run {run.run_id}: activation chunk at step {step_start} does not line up with "
                f"its step chunk at {steps.step_start}; the run's data is inconsistent"
            )
        acts.append(block)
        variables.append(steps.variables)
        starts.append(step_start)
        pending += block.shape[0]
        if pending >= BATCH_STEPS:
            yield _join(acts, variables, starts)
            acts, variables, starts, pending = [], [], [], 0
    if acts:
        yield _join(acts, variables, starts)


def _join(acts: list[np.ndarray], variables: list[np.ndarray], starts: list[int]):
    step_numbers = np.concatenate([np.arange(s, s + a.shape[0]) for s, a in zip(starts, acts)])
    return np.concatenate(acts), np.concatenate(variables), step_numbers


def compute_stats(
    store: Store,
    run_ids: Sequence[int],
    layers: Sequence[str] | None = None,
    *,
    params: AnalysisParams | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AnalysisRecord:
    """Compute statistics of every channel of `layers` over `run_ids` and store them.

    One streaming pass per layer reads the runs chunk by chunk. `progress(done, total)` is called
    after each batch with step counts summed over layers. If `should_stop()` returns True the
    analysis is abandoned and nothing is written. Returns the stored analysis.
    """
    params = params or AnalysisParams()
    started = time.perf_counter()
    runs = _check_runs(store, run_ids)
    names = _check_layers(store, runs, layers)
    policy_id = runs[0].policy_id
    n_steps = sum(run.n_steps for run in runs)
    total, done = n_steps * len(names), 0
    results = []
    for name in names:
        layer = store.get_layer(policy_id, name)
        state = _LayerPass(layer.width, len(runs[0].variables), params)
        for run in runs:
            for acts, variables, steps in iter_batches(store, run, layer.layer_id):
                if should_stop is not None and should_stop():
                    raise InterruptedError("analysis stopped on request; nothing was written")
                state.update(acts, variables, run.run_id, steps)
                done += acts.shape[0]
                if progress is not None:
                    progress(done, total)
        results.append(_layer_results(layer.layer_id, state, runs[0].variables, params))
    record = store.add_analysis(
        policy_id=policy_id, run_ids=[run.run_id for run in runs], n_steps=n_steps,
        params={"top_k": params.top_k, "active_threshold": params.active_threshold,
                "hist_bins": params.hist_bins, "quantiles": list(params.quantiles)},
        duration_s=time.perf_counter() - started, results=results,
    )
    logger.info("analysis %d: %d layers over runs %s in %.2f s", record.analysis_id, len(names),
                record.run_ids, record.duration_s or 0.0)
    return record


def _optional(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _layer_results(layer_id: int, state: _LayerPass, variables: list[str],
                   params: AnalysisParams) -> LayerResults:
    moments = state.moments
    mean, std, frac = moments.mean(), moments.std(), moments.frac_active()
    quantiles = state.histogram.quantiles(np.asarray(params.quantiles), moments.min, moments.max)
    # Dead: no finite value, or constant up to rounding. A ReLU output that never fires is a
    # constant 0; a pre-activation that is always negative still varies, so it stays live.
    span = moments.max - moments.min
    dead = (moments.count == 0) | (span <= 1e-6 * (1 + np.abs(moments.max)))
    stats = []
    for c in range(mean.shape[0]):
        edges, counts = state.histogram.coarse(c, params.hist_bins)
        stats.append(ChannelStats(
            layer_id=layer_id, channel=c, count=int(moments.count[c]),
            nan_count=int(moments.nan_count[c]), inf_count=int(moments.inf_count[c]),
            mean=_optional(mean[c]), std=_optional(std[c]), min=_optional(moments.min[c]),
            max=_optional(moments.max[c]),
            quantiles={f"{q:g}": float(v) for q, v in zip(params.quantiles, quantiles[c])
                       if np.isfinite(v)},
            frac_active=_optional(frac[c]), hist_edges=edges, hist_counts=counts,
            dead=bool(dead[c]),
        ))
    r = state.correlations.pearson()
    correlations = [
        Correlation(layer_id, c, variable, _optional(r[c, v]))
        for c in range(r.shape[0]) for v, variable in enumerate(variables)
    ]
    values, run_ids, steps = state.top.sorted()
    top = [
        TopActivation(layer_id, c, rank, int(run_ids[c, rank]), int(steps[c, rank]),
                      float(values[c, rank]))
        for c in range(values.shape[0]) for rank in range(values.shape[1])
        if np.isfinite(values[c, rank])
    ]
    return LayerResults(layer_id, stats, correlations, top)
