"""A readable text summary of an analysis: live and dead channels, correlations, top moments."""

from __future__ import annotations

from dataclasses import dataclass

from interlatent_mcp.store import AnalysisRecord, Correlation, Store


@dataclass(frozen=True)
class SummaryOptions:
    """How much of an analysis the summary shows."""

    correlations_per_layer: int = 5
    """Strongest channel-to-variable correlations listed per layer."""
    channels: int = 3
    """Channels shown with their top moments (the most strongly correlated ones)."""
    moments: int = 3
    """Top moments shown per channel."""


def strongest_correlations(store: Store, analysis: AnalysisRecord, layer_id: int,
                           limit: int) -> list[Correlation]:
    """Return the strongest defined correlations of a layer, one per channel, by |r|."""
    best: dict[int, Correlation] = {}
    for corr in store.get_correlations(analysis.analysis_id, layer_id):
        if corr.r is None or corr.variable in ("t", "reward"):
            continue
        if corr.channel not in best:
            best[corr.channel] = corr
    ranked = sorted(best.values(), key=lambda c: -abs(c.r or 0.0))
    return ranked[:limit]


def _format_value(name: str, value: float) -> str:
    if (name == "action" or name.startswith("action_")) and value.is_integer():
        return f"{name}={value:.0f}"
    if abs(value) >= 1000:
        return f"{name}={value:.3g}"
    return f"{name}={value:+.3f}"


def _format_context(variables: dict[str, float], limit: int = 5) -> str:
    """Format the first `limit` variables (observation components and the action, for most runs)."""
    return ", ".join(_format_value(name, value) for name, value in list(variables.items())[:limit])


def summarize(store: Store, analysis: AnalysisRecord, options: SummaryOptions | None = None) -> str:
    """Return a multi-line summary of `analysis` for a terminal."""
    options = options or SummaryOptions()
    lines = [f"Analysis {analysis.analysis_id}: {analysis.n_steps} steps from runs "
             f"{', '.join(map(str, analysis.run_ids))}"]
    for layer_id in analysis.layer_ids:
        layer = store.get_layer_by_id(layer_id)
        stats = store.get_channel_stats(analysis.analysis_id, layer_id)
        dead = [s.channel for s in stats if s.dead]
        non_finite = sum(s.nan_count + s.inf_count for s in stats)
        lines.append("")
        lines.append(f"Layer {layer.name} ({layer.width} channels): {len(stats) - len(dead)} live, "
                     f"{len(dead)} dead" + (f" {_short_list(dead)}" if dead else ""))
        if non_finite:
            lines.append(f"  {non_finite} NaN or infinite activations were excluded from the statistics")
        correlations = strongest_correlations(store, analysis, layer_id, options.correlations_per_layer)
        if correlations:
            lines.append("  strongest correlations:")
            for corr in correlations:
                lines.append(f"    channel {corr.channel:>4}  r = {corr.r:+.3f}  with {corr.variable}")
        for corr in correlations[: options.channels]:
            lines.extend(_moment_lines(store, analysis, layer_id, corr, options.moments))
    return "\n".join(lines)


def _moment_lines(store: Store, analysis: AnalysisRecord, layer_id: int, corr: Correlation,
                  moments: int) -> list[str]:
    top = store.get_top_activations(analysis.analysis_id, layer_id, corr.channel, moments)
    lines = [f"  channel {corr.channel}: top moments"]
    for moment in top:
        context = store.get_step_context(moment.run_id, moment.step)
        lines.append(f"    {moment.value:+.3f} at run {moment.run_id} step {moment.step} "
                     f"(episode {context.episode}, t={context.t}): "
                     f"{_format_context(context.variables)}")
    return lines


def _short_list(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
