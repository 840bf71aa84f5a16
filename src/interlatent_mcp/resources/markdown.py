"""Markdown renderings of runs, a layer's channels and a channel card."""

from __future__ import annotations

from collections.abc import Sequence

from interlatent_mcp.errors import AnalysisNotFoundError
from interlatent_mcp.store import LayerRecord, Store
from interlatent_mcp.tools.channels import ChannelCard
from interlatent_mcp.tools.common import shorten
from interlatent_mcp.tools.discover import RunSummary

# Rows of a channel table; wider layers (transcoder latents) are cut, with a line saying so.
MAX_TABLE_CHANNELS = 512


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _cell(text: str | None) -> str:
    return "" if text is None else text.replace("|", "\\|").replace("\n", " ")


def render_runs(runs: Sequence[RunSummary], total: int) -> str:
    lines = [f"# Runs ({len(runs)} newest of {total})", "",
             "| run | policy | environment | status | steps | episodes | layers | started |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.run_id} | {_cell(run.policy)} | {run.env_id} | {run.status} | "
                     f"{run.n_steps} | {run.n_episodes} | {', '.join(run.layers)} | {run.started_at} |")
    if not runs:
        lines.append("\nNo runs yet: record one with the record_rollout tool.")
    return "\n".join(lines) + "\n"


def render_channel_table(store: Store, layer: LayerRecord) -> str:
    """Render every channel of a layer with statistics from its newest analysis."""
    header = f"# {layer.name}: {layer.width} channels"
    try:
        analysis = store.latest_analysis(layer.layer_id)
    except AnalysisNotFoundError:
        return f"{header}\n\nNo statistics yet: call compute_stats on a run that recorded this layer.\n"
    stats = store.get_channel_stats(analysis.analysis_id, layer.layer_id)
    strongest: dict[int, tuple[str, float]] = {}
    for item in store.get_correlations(analysis.analysis_id, layer.layer_id):
        if item.r is not None and item.channel not in strongest:
            strongest[item.channel] = (item.variable, item.r)
    explanations = {e.channel: e.text for e in store.list_explanations(
        layer.layer_id, latest_only=True, limit=MAX_TABLE_CHANNELS)}
    lines = [header, "", f"Analysis {analysis.analysis_id} over runs {analysis.run_ids} "
             f"({analysis.n_steps} steps).", "",
             "| channel | mean | std | frac active | dead | strongest correlation | explanation |",
             "|---|---|---|---|---|---|---|"]
    for s in stats[:MAX_TABLE_CHANNELS]:
        variable, r = strongest.get(s.channel, ("-", None))
        correlation = "-" if r is None else f"{variable} ({r:+.2f})"
        lines.append(f"| {s.channel} | {_number(s.mean)} | {_number(s.std)} | "
                     f"{_number(s.frac_active, 2)} | {'yes' if s.dead else ''} | {correlation} | "
                     f"{_cell(shorten(explanations.get(s.channel), 120))} |")
    if len(stats) > MAX_TABLE_CHANNELS:
        lines.append(f"\n{len(stats) - MAX_TABLE_CHANNELS} more channels are not shown; use the "
                     f"find_channels and find_dead tools.")
    return "\n".join(lines) + "\n"


def render_card(card: ChannelCard) -> str:
    """Render a channel card as markdown."""
    lines = [f"# {card.layer} channel {card.channel} ({card.policy})", ""]
    if card.stats is None:
        lines.append("No statistics yet: call compute_stats.")
    else:
        s = card.stats
        lines += [f"Analysis {card.analysis_id} over runs {card.run_ids}: mean {_number(s.mean)}, "
                  f"std {_number(s.std)}, min {_number(s.min)}, max {_number(s.max)}, active on "
                  f"{_number(s.frac_active, 2)} of {s.count} steps" + (" (dead)" if s.dead else "") + "."]
    if card.correlations:
        lines += ["", "## Correlations", ""]
        lines += [f"- {c.variable}: {_number(c.r, 2)}" for c in card.correlations]
    if card.top_moments:
        lines += ["", "## Top moments", "", "| rank | run | step | value | episode | t | context |",
                  "|---|---|---|---|---|---|---|"]
        for m in card.top_moments:
            context = ", ".join(f"{k}={_number(v)}" for k, v in m.variables.items())
            lines.append(f"| {m.rank} | {m.run_id} | {m.step} | {_number(m.value)} | "
                         f"{m.episode} | {m.t} | {context} |")
    lines += ["", "## Explanation", ""]
    if card.explanation is None:
        lines.append("None yet.")
    else:
        e = card.explanation
        lines.append(f"Version {e.version} of {card.explanation_versions}, by {e.author}: {e.text}")
        if e.predicate:
            lines.append(f"\nPredicate: `{e.predicate}`")
    if card.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n.created_at} {n.author}: {_cell(n.text)}" for n in card.notes]
    return "\n".join(lines) + "\n"
