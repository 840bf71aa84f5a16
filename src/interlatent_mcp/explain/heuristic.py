"""Heuristic explanations: a scored draft for every live channel, without any LLM.

For each live channel the explainer starts from the per-step variable it correlates with most
strongly and fits the activation by least squares on an evenly spaced sample of steps. It cuts
the fitted combination where it best separates the firing steps from the rest (highest F1 on
the sample). Forward selection then adds, one at a time, the variable that most reduces the
residual, up to `max_variables`. The draft keeps the fewest variables whose sample F1 is within
`min_gain` of the best, so it stays as simple as the data allows.
The resulting predicate is scored on every step of the analysis and stored with author
"heuristic", together with the values of its variables at the channel's top moments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.predicate import parse_predicate
from interlatent_mcp.explain.scoring import (
    FiringThreshold,
    PredicateScore,
    ScoringData,
    analysis_runs,
    channel_groups,
    choose_threshold,
    read_scoring_data,
    resolve_analysis,
    score_column,
)
from interlatent_mcp.store import AnalysisRecord, Correlation, ExplanationRecord, Store
from interlatent_mcp.store.connection import utc_now

logger = logging.getLogger(__name__)

HEURISTIC_AUTHOR = "heuristic"
HEURISTIC_METHOD = "heuristic-linear-threshold"
# Candidate cuts tried on the fitted combination: its 1st to 99th percentiles.
CUT_QUANTILES = np.linspace(0.01, 0.99, 99)


@dataclass(frozen=True)
class HeuristicConfig:
    """Settings of the heuristic explainer."""

    max_variables: int = 4
    """Most per-step variables combined in one predicate (1 to 6)."""
    min_gain: float = 0.02
    """F1 on the sample that a simpler draft may lose against the best one with more variables."""
    sample_steps: int = 20000
    """Evenly spaced steps used to fit the combination and its cut (at least 100)."""
    top_moments: int = 10
    """Top-activating steps whose variable values are described and kept as evidence."""
    excluded_variables: tuple[str, ...] = ("reward",)
    """Variables never used in a draft."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_variables <= 6:
            raise InvalidArgumentError(f"max_variables must be between 1 and 6, got "
                                       f"{self.max_variables}")
        if self.sample_steps < 100:
            raise InvalidArgumentError(f"sample_steps must be at least 100, got {self.sample_steps}")
        if self.top_moments < 1:
            raise InvalidArgumentError(f"top_moments must be at least 1, got {self.top_moments}")


@dataclass(frozen=True)
class HeuristicDraft:
    """A drafted explanation of one channel, with its score and where it was stored."""

    channel: int
    text: str
    predicate: str | None
    score: PredicateScore | None
    explanation_id: int | None
    skipped: str | None = None
    """The reason no explanation was written (a dead channel, an existing explanation)."""


@dataclass(frozen=True)
class _Fit:
    variables: tuple[str, ...]
    coefficients: tuple[float, ...]
    cut: float
    above: bool
    sample_f1: float


@dataclass
class _Candidates:
    """The variables a channel's draft may use, strongest correlation first."""

    correlations: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.correlations)


def _candidates(correlations: Sequence[Correlation], config: HeuristicConfig) -> _Candidates:
    chosen = _Candidates()
    for corr in correlations:  # strongest |r| first
        if corr.r is not None and corr.variable not in config.excluded_variables:
            chosen.correlations[corr.variable] = corr.r
    return chosen


def _best_cut(score: np.ndarray, firing: np.ndarray) -> tuple[float, float]:
    """Return (cut, F1) for the predicate `score > cut` with the highest F1 on the sample."""
    cuts = np.unique(np.quantile(score, CUT_QUANTILES))
    predicted = score[None, :] > cuts[:, None]  # (n_cuts, n_sample)
    tp = (predicted & firing[None, :]).sum(axis=1)
    f1 = 2 * tp / (predicted.sum(axis=1) + firing.sum())
    best = int(np.argmax(f1))
    return float(cuts[best]), float(f1[best])


def _least_squares(columns: np.ndarray, activation: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit activation ~ columns + 1; return the coefficients of the columns and the residual."""
    design = np.column_stack([columns, np.ones(len(activation))])
    weights, *_ = np.linalg.lstsq(design, activation, rcond=None)
    residual = float(np.sum((design @ weights - activation) ** 2))
    return weights[:-1], residual


def _cut_combination(names: list[str], coefficients: np.ndarray, columns: np.ndarray,
                     firing: np.ndarray) -> _Fit | None:
    """Cut a fitted combination at its best F1, written with the leading coefficient +1."""
    lead = abs(coefficients[0])
    if lead == 0 or not np.all(np.isfinite(coefficients)):
        return None
    raw = coefficients / lead
    cut, f1 = _best_cut(columns @ raw, firing)
    above = True
    if raw[0] < 0:
        # Write `v0 - ... < c` rather than `-v0 + ... > c`.
        raw, cut, above = -raw, -cut, False
    return _Fit(tuple(names), tuple(float(c) for c in raw), cut, above, f1)


def _fit_channel(candidates: _Candidates, sample: dict[str, np.ndarray], activation: np.ndarray,
                 threshold: FiringThreshold, config: HeuristicConfig) -> _Fit | None:
    """Forward selection: start from the strongest correlation and add, one at a time, the
    variable that most reduces the least-squares residual, up to `max_variables`. Return the
    smallest of these fits whose F1 is within `min_gain` of the best one."""
    firing = activation > threshold.value
    if not firing.any() or firing.all():
        return None
    remaining = [name for name in candidates.names if np.std(sample[name]) > 0]
    if not remaining:
        return None
    chosen = [remaining.pop(0)]
    coefficients, _ = _least_squares(sample[chosen[0]][:, None], activation)
    fits = [_cut_combination(chosen, coefficients, sample[chosen[0]][:, None], firing)]
    while remaining and len(chosen) < config.max_variables:
        trials = []
        for name in remaining:
            columns = np.column_stack([sample[n] for n in [*chosen, name]])
            trials.append((*_least_squares(columns, activation), name, columns))
        coefficients, _, name, columns = min(trials, key=lambda trial: trial[1])
        chosen.append(name)
        remaining.remove(name)
        fits.append(_cut_combination(list(chosen), coefficients, columns, firing))
    valid = [fit for fit in fits if fit is not None]
    if not valid:
        return None
    # A later variable can raise F1 a lot even where the one before it did not, so every
    # prefix is fitted before the simplest good enough one is chosen.
    best_f1 = max(fit.sample_f1 for fit in valid)
    return next(fit for fit in valid if fit.sample_f1 >= best_f1 - config.min_gain)


def _format_number(value: float) -> str:
    return f"{value:.4g}"


def format_predicate(fit: _Fit, sample: dict[str, np.ndarray]) -> str:
    """Write a fit as a predicate, e.g. `pole_angle + 0.31 * pole_angular_velocity > 0.0042`."""
    name = fit.variables[0]
    distinct = np.unique(sample[name])
    if len(fit.variables) == 1 and distinct.size == 2:
        # A two-valued variable such as a discrete action reads better as an equality:
        # `v > cut` keeps only the higher value when lo <= cut < hi, `v < cut` only the lower
        # one when lo < cut <= hi.
        low, high = float(distinct[0]), float(distinct[1])
        if fit.above and low <= fit.cut < high:
            return f"{name} == {_format_number(high)}"
        if not fit.above and low < fit.cut <= high:
            return f"{name} == {_format_number(low)}"
    terms = [name]
    for variable, coefficient in zip(fit.variables[1:], fit.coefficients[1:]):
        sign = "-" if coefficient < 0 else "+"
        terms.append(f"{sign} {_format_number(abs(coefficient))} * {variable}")
    return f"{' '.join(terms)} {'>' if fit.above else '<'} {_format_number(fit.cut)}"


def _describe_moments(data: ScoringData, column: int, names: Sequence[str],
                      moments: Sequence[tuple[int, int, float]]) -> str:
    rows = [data.run_offsets[run_id] + step for run_id, step, _ in moments
            if run_id in data.run_offsets]
    if not rows:
        return ""
    parts = []
    for name in names:
        values = data.variables[name]
        parts.append(f"{name} averages {np.mean(values[rows]):.4g} (all steps: "
                     f"{np.mean(values):.4g} ± {np.std(values):.3g})")
    return f" At its {len(rows)} strongest moments, " + "; ".join(parts) + "."


def _draft_text(fit: _Fit, predicate: str, threshold: FiringThreshold, candidates: _Candidates,
                moments_text: str) -> str:
    strongest = candidates.names[:3] + [n for n in fit.variables if n not in candidates.names[:3]]
    correlations = ", ".join(f"{name} r={candidates.correlations[name]:+.2f}" for name in strongest)
    return (f"Heuristic draft: fires ({threshold.description}) when {predicate}. "
            f"Strongest correlations: {correlations}.{moments_text}")


@dataclass(frozen=True)
class _ChannelInput:
    """The inputs of one channel's draft: its column of the group's data and a shared sample."""

    data: ScoringData
    column: int
    sample: dict[str, np.ndarray]
    stride: int


def _draft_channel(store: Store, analysis: AnalysisRecord, layer_id: int, channel: int,
                   source: _ChannelInput, candidates: _Candidates,
                   variables: Sequence[str], config: HeuristicConfig) -> HeuristicDraft:
    activation = source.data.activations[:, source.column]
    threshold = choose_threshold(activation)
    sample_activation = activation[::source.stride].astype(np.float64)
    finite = np.isfinite(sample_activation)
    sample = {name: values[finite] for name, values in source.sample.items()}
    fit = _fit_channel(candidates, sample, sample_activation[finite], threshold, config)
    if fit is None:
        return HeuristicDraft(channel, "", None, None, None,
                              skipped="no per-step variable separates its firing steps")

    text = format_predicate(fit, sample)
    predicate = parse_predicate(text, variables)
    predicted = predicate.evaluate(source.data.variables, source.data.n_steps)
    score = score_column(activation, predicted, predicate, layer_id, channel,
                         analysis.analysis_id)
    moments = [(m.run_id, m.step, m.value) for m in
               store.get_top_activations(analysis.analysis_id, layer_id, channel,
                                         limit=config.top_moments)]
    description = _draft_text(fit, text, threshold, candidates,
                              _describe_moments(source.data, source.column, fit.variables, moments))
    evidence = {
        "analysis_id": analysis.analysis_id,
        "steps": [{"run_id": run_id, "step": step, "activation": value}
                  for run_id, step, value in moments],
        "correlations": candidates.correlations,
        "fit": {"variables": list(fit.variables), "sample_steps": int(finite.sum()),
                "sample_f1": fit.sample_f1},
    }
    record = store.add_explanation(
        layer_id=layer_id, channel=channel, text=description, predicate=text,
        author=HEURISTIC_AUTHOR, method=HEURISTIC_METHOD, evidence=evidence,
        scores={"predicate": {**score.as_dict(), "scored_at": utc_now()}},
    )
    return HeuristicDraft(channel, description, text, score, record.explanation_id)


def _select_channels(store: Store, analysis: AnalysisRecord, layer_id: int,
                     channels: Sequence[int] | None,
                     replace: bool) -> tuple[list[int], list[HeuristicDraft]]:
    """Split the requested channels into those to draft and those skipped, with the reason."""
    stats = {s.channel: s for s in store.get_channel_stats(analysis.analysis_id, layer_id)}
    requested = sorted(stats) if channels is None else [int(c) for c in channels]
    unknown = [c for c in requested if c not in stats]
    if unknown:
        raise InvalidArgumentError(f"channels {unknown} have no statistics in analysis "
                                   f"{analysis.analysis_id}; the layer has channels 0 to "
                                   f"{len(stats) - 1}")
    todo, skipped = [], []
    for channel in requested:
        reason = "dead channel" if stats[channel].dead else None
        if reason is None and not replace:
            reason = _existing_reason(store.latest_explanation(layer_id, channel), analysis)
        if reason is None:
            todo.append(channel)
        else:
            skipped.append(HeuristicDraft(channel, "", None, None, None, skipped=reason))
    return todo, skipped


def _existing_reason(existing: ExplanationRecord | None, analysis: AnalysisRecord) -> str | None:
    """Return why an existing explanation blocks a new draft, or None if it does not.

    Another author's explanation is never buried under a draft. A heuristic draft is redrafted
    only from a different analysis.
    """
    if existing is None:
        return None
    if existing.author != HEURISTIC_AUTHOR:
        return f"already explained (version {existing.version} by {existing.author})"
    if existing.evidence.get("analysis_id") == analysis.analysis_id:
        return f"already drafted from analysis {analysis.analysis_id}"
    return None


def draft_explanations(store: Store, layer_id: int, *,
                       analysis: AnalysisRecord | int | None = None,
                       channels: Sequence[int] | None = None,
                       config: HeuristicConfig | None = None,
                       replace: bool = False) -> list[HeuristicDraft]:
    """Draft, score and store an explanation for each live channel of a layer.

    Uses the given analysis (the layer's latest by default). Unless `replace` is True, a channel
    is skipped when another author explained it or a heuristic draft from the same analysis
    exists. Each draft is appended as a new version.
    Returns one draft per requested channel, by channel, skipped ones included.
    """
    config = config or HeuristicConfig()
    record = resolve_analysis(store, layer_id, analysis)
    runs = analysis_runs(store, record)
    todo, drafts = _select_channels(store, record, layer_id, channels, replace)
    stride = max(1, -(-record.n_steps // config.sample_steps))
    for group in channel_groups(todo, record.n_steps):
        candidates = {
            channel: _candidates(store.get_correlations(record.analysis_id, layer_id,
                                                        channel=channel), config)
            for channel in group
        }
        names = list(dict.fromkeys(n for c in candidates.values() for n in c.names))
        data = read_scoring_data(store, runs, layer_id, group, names)
        sample = {name: values[::stride] for name, values in data.variables.items()}
        for column, channel in enumerate(group):
            drafts.append(_draft_channel(
                store, record, layer_id, channel, _ChannelInput(data, column, sample, stride),
                candidates[channel], runs[0].variables, config,
            ))
    written = sum(1 for d in drafts if d.explanation_id is not None)
    logger.info("heuristic drafts for layer id %d: %d written, %d skipped", layer_id, written,
                len(drafts) - written)
    return sorted(drafts, key=lambda d: d.channel)
