"""Predicate scoring: how well a predicate over per-step variables explains a channel.

A channel *fires* at a step when its activation is above a threshold chosen from its own
distribution over the analysis's steps (see `choose_threshold`). A boolean predicate is scored as
a detector of the firing steps: AUROC, precision, recall and F1 with the confusion counts. A
numeric predicate is a continuous claim: AUROC of its value as a score for firing, and its
Pearson correlation with the activation. Both kinds report the correlation.

AUROC is the Mann-Whitney statistic: the probability that a firing step gets a higher predicate
value than a non-firing one, ties counted one half. For a boolean predicate it equals the mean of
recall and specificity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.explain.predicate import Predicate, PredicateKind, parse_predicate
from interlatent_mcp.analysis.compute import iter_batches
from interlatent_mcp.store import AnalysisRecord, ExplanationRecord, RunRecord, Store
from interlatent_mcp.store.connection import utc_now

logger = logging.getLogger(__name__)

FIRING_QUANTILE = 0.9
# A non-negative channel (a ReLU output) active on fewer steps than this fires whenever it is > 0.
SPARSE_ACTIVE_FRACTION = 0.5
# Activations held in memory at once when scoring many channels: channels are read in groups.
MAX_SCORING_BYTES = 256 * 1024 * 1024

ThresholdRule = Literal["active", "quantile"]


@dataclass(frozen=True)
class FiringThreshold:
    """The activation above which a channel counts as firing, and why it was chosen."""

    value: float
    rule: ThresholdRule
    description: str


@dataclass(frozen=True)
class PredicateScore:
    """The scores of one predicate against one channel over one analysis's steps."""

    predicate: str
    kind: PredicateKind
    layer_id: int
    channel: int
    analysis_id: int
    threshold: float
    threshold_rule: ThresholdRule
    threshold_description: str
    n_steps: int
    """Steps scored: those with a finite activation and a finite predicate value."""
    n_firing: int
    auroc: float | None
    """None when every scored step fires or none does."""
    correlation: float | None
    """Pearson correlation of the activation with the predicate's value (true = 1, false = 0)."""
    n_predicted: int | None = None
    true_positives: int | None = None
    false_positives: int | None = None
    false_negatives: int | None = None
    true_negatives: int | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(values: np.ndarray) -> FiringThreshold:
    """Choose the firing threshold of a channel from its finite values.

    A channel that is never negative and is above zero on fewer than half of the steps (a sparse
    ReLU output) fires when it is above 0. Any other channel fires above its 0.9 quantile
    (numpy's linear definition), so about a tenth of the steps fire.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise InvalidArgumentError("the channel has no finite activation to choose a threshold from")
    active = float(np.mean(finite > 0))
    if finite.min() >= 0 and active < SPARSE_ACTIVE_FRACTION:
        return FiringThreshold(
            0.0, "active",
            f"activation > 0 (a non-negative channel, above zero on {active:.1%} of steps)",
        )
    value = float(np.quantile(finite, FIRING_QUANTILE))
    return FiringThreshold(
        value, "quantile", f"activation > {value:.4g}, the channel's {FIRING_QUANTILE:g} quantile"
    )


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of `values`, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Return the Mann-Whitney AUROC of `scores` for boolean `labels`, or None if one class is empty."""
    labels = np.asarray(labels, dtype=bool)
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    rank_sum = float(average_ranks(np.asarray(scores, dtype=np.float64))[labels].sum())
    return (rank_sum - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Return the Pearson correlation of x and y, or None when either is constant or too short."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
    if not np.isfinite(denominator) or denominator <= 0:
        return None
    return float(np.clip(np.dot(dx, dy) / denominator, -1.0, 1.0))


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def score_arrays(activation: np.ndarray, predicted: np.ndarray, kind: PredicateKind,
                 threshold: FiringThreshold) -> dict[str, Any]:
    """Score predicate values against one channel's activations over the same steps.

    Steps where either is not finite are left out. Returns the metric fields of PredicateScore.
    """
    values = np.asarray(predicted, dtype=np.float64)
    keep = np.isfinite(activation) & np.isfinite(values)
    activation, values = activation[keep].astype(np.float64), values[keep]
    firing = activation > threshold.value
    metrics: dict[str, Any] = {
        "n_steps": int(keep.sum()), "n_firing": int(firing.sum()),
        "auroc": auroc(values, firing), "correlation": pearson(activation, values),
    }
    if kind == "boolean":
        hits = values > 0.5
        tp = int(np.sum(hits & firing))
        fp = int(np.sum(hits & ~firing))
        fn = int(np.sum(~hits & firing))
        metrics.update(
            n_predicted=int(hits.sum()), true_positives=tp, false_positives=fp,
            false_negatives=fn, true_negatives=int(np.sum(~hits & ~firing)),
            precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
        )
    return metrics


def analysis_runs(store: Store, analysis: AnalysisRecord) -> list[RunRecord]:
    """Return the runs of an analysis; they all record the same per-step variables."""
    return [store.get_run(run_id) for run_id in analysis.run_ids]


@dataclass
class ScoringData:
    """Some channels' activations and some per-step variables over an analysis's steps."""

    channels: list[int]
    activations: np.ndarray  # (n, k) float32, one column per channel
    variables: dict[str, np.ndarray]  # name -> (n,) float64
    run_offsets: dict[int, int]
    """Row of each run's step 0: run r's step s is row run_offsets[r] + s."""

    @property
    def n_steps(self) -> int:
        return int(self.activations.shape[0])


def read_scoring_data(store: Store, runs: Sequence[RunRecord], layer_id: int,
                      channels: Sequence[int], variables: Sequence[str]) -> ScoringData:
    """Stream the runs in batches of chunks, keeping only the given channels and variables."""
    columns: list[np.ndarray] = []
    values: dict[str, list[np.ndarray]] = {name: [] for name in variables}
    run_offsets: dict[int, int] = {}
    index = np.asarray(channels, dtype=np.int64)
    n_rows = 0
    for run in runs:
        run_offsets[run.run_id] = n_rows
        positions = {name: run.variables.index(name) for name in variables}
        for block, step_variables, _ in iter_batches(store, run, layer_id):
            columns.append(block[:, index])  # (n_batch, k)
            for name, position in positions.items():
                values[name].append(step_variables[:, position])
            n_rows += block.shape[0]
    activations = (np.concatenate(columns) if columns
                   else np.zeros((0, len(index)), dtype=np.float32))
    return ScoringData(
        channels=[int(c) for c in channels], activations=activations,
        variables={name: np.concatenate(parts) if parts else np.zeros(0)
                   for name, parts in values.items()},
        run_offsets=run_offsets,
    )


def channel_groups(channels: Sequence[int], n_steps: int) -> list[list[int]]:
    """Split channels into groups whose activations fit in MAX_SCORING_BYTES together."""
    size = max(1, MAX_SCORING_BYTES // max(1, 4 * n_steps))
    return [list(channels[start:start + size]) for start in range(0, len(channels), size)]


def resolve_analysis(store: Store, layer_id: int,
                     analysis: AnalysisRecord | int | None) -> AnalysisRecord:
    """Return the given analysis (checked to cover the layer) or the layer's latest one."""
    if analysis is None:
        return store.latest_analysis(layer_id)
    record = store.get_analysis(analysis) if isinstance(analysis, int) else analysis
    if layer_id not in record.layer_ids:
        raise InvalidArgumentError(
            f"analysis {record.analysis_id} does not cover layer id {layer_id}; it covers layer "
            f"ids {record.layer_ids}. Compute statistics for the layer first"
        )
    return record


def _check_channels(store: Store, layer_id: int, channels: Sequence[int]) -> None:
    width = store.get_layer_by_id(layer_id).width
    bad = [c for c in channels if not 0 <= c < width]
    if bad:
        raise NotFoundError(f"channels {bad} are outside layer id {layer_id}, which has channels "
                            f"0 to {width - 1}")


def score_predicate_channels(store: Store, layer_id: int, predicate: str | Predicate,
                             channels: Sequence[int] | None = None, *,
                             analysis: AnalysisRecord | int | None = None) -> list[PredicateScore]:
    """Score one predicate against several channels of a layer (all channels by default).

    Reads the analysis's runs chunk by chunk, in groups of channels small enough to keep memory
    under MAX_SCORING_BYTES. Returns one score per channel, in the order given.
    """
    record = resolve_analysis(store, layer_id, analysis)
    runs = analysis_runs(store, record)
    if isinstance(predicate, str):
        predicate = parse_predicate(predicate, runs[0].variables)
    if channels is None:
        channels = range(store.get_layer_by_id(layer_id).width)
    channels = [int(c) for c in channels]
    _check_channels(store, layer_id, channels)
    scores = []
    for group in channel_groups(channels, record.n_steps):
        data = read_scoring_data(store, runs, layer_id, group, predicate.variables)
        predicted = predicate.evaluate(data.variables, data.n_steps)
        for column, channel in enumerate(group):
            scores.append(score_column(data.activations[:, column], predicted, predicate,
                                       layer_id, channel, record.analysis_id))
    return scores


def score_column(activation: np.ndarray, predicted: np.ndarray, predicate: Predicate,
                 layer_id: int, channel: int, analysis_id: int) -> PredicateScore:
    """Score predicate values against one channel's activations over all of an analysis's steps."""
    threshold = choose_threshold(activation)
    metrics = score_arrays(activation, predicted, predicate.kind, threshold)
    return PredicateScore(
        predicate=predicate.source, kind=predicate.kind, layer_id=layer_id, channel=channel,
        analysis_id=analysis_id, threshold=threshold.value, threshold_rule=threshold.rule,
        threshold_description=threshold.description, **metrics,
    )


def score_predicate(store: Store, layer_id: int, channel: int, predicate: str | Predicate, *,
                    analysis: AnalysisRecord | int | None = None) -> PredicateScore:
    """Score a predicate against one channel over the analysis's steps (latest by default)."""
    return score_predicate_channels(store, layer_id, predicate, [channel], analysis=analysis)[0]


def score_explanation_predicate(store: Store, explanation: ExplanationRecord | int, *,
                                analysis: AnalysisRecord | int | None = None) -> ExplanationRecord:
    """Score an explanation version's predicate and store the result under scores['predicate']."""
    record = store.get_explanation(explanation) if isinstance(explanation, int) else explanation
    if not record.predicate:
        raise InvalidArgumentError(
            f"explanation {record.explanation_id} (layer id {record.layer_id}, channel "
            f"{record.channel}) has no predicate to score; write a version with a predicate, or "
            f"score it by simulation with an LLM backend"
        )
    score = score_predicate(store, record.layer_id, record.channel, record.predicate,
                            analysis=analysis)
    logger.info("explanation %d scored: AUROC %s over %d steps", record.explanation_id,
                score.auroc, score.n_steps)
    return store.set_explanation_scores(
        record.explanation_id, {"predicate": {**score.as_dict(), "scored_at": utc_now()}}
    )


def headline_score(scores: dict[str, Any]) -> float | None:
    """Return the predicate AUROC stored in an explanation's scores, or None if it has none."""
    value = (scores.get("predicate") or {}).get("auroc")
    return None if value is None else float(value)
