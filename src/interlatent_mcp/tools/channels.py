"""Channel-level tools: the channel card, top activations, the timeline and the plot."""

from __future__ import annotations

import base64
from typing import Annotated

from mcp_types import CallToolResult, ImageContent, TextContent
from pydantic import BaseModel, Field

from interlatent_mcp.analysis.timeline import (
    MAX_TIMELINE_STEPS,
    TimelineStep,
    check_recorded,
    finite_or_none,
    read_channel_timeline,
    read_step_contexts,
)
from interlatent_mcp.errors import AnalysisNotFoundError, InvalidArgumentError
from interlatent_mcp.store import LayerRecord, RunRecord, Store, TopActivation
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import (
    AnalysisId,
    Channel,
    LayerName,
    Offset,
    Page,
    PolicyRef,
    ShortLimit,
    check_channel,
    next_offset,
    resolve_analysis,
    resolve_layer,
)
from interlatent_mcp.tools.journal import ExplanationInfo, NoteInfo, explanation_info, note_info

tools = ToolSet()
register = tools.register

CARD_CORRELATIONS = 8
CARD_MOMENTS = 5
CARD_NOTES = 5


class StatsInfo(BaseModel):
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: dict[str, float]
    frac_active: float | None = Field(description="Fraction of steps with a value above the activity threshold (0).")
    dead: bool
    nan_count: int
    inf_count: int


class CorrelationInfo(BaseModel):
    variable: str
    r: float | None


class Moment(BaseModel):
    rank: int = Field(description="0 for the highest activation.")
    run_id: int
    step: int
    value: float
    episode: int | None
    t: int | None = Field(description="Step within the episode.")
    variables: dict[str, float | None] = Field(description="What the environment was doing at that step.")


class ChannelCard(BaseModel):
    policy: str
    layer: str
    channel: int
    width: int
    analysis_id: int | None
    run_ids: list[int]
    stats: StatsInfo | None
    correlations: list[CorrelationInfo] = Field(description="Strongest correlations with per-step variables, by |r|.")
    top_moments: list[Moment]
    explanation: ExplanationInfo | None = Field(description="The newest explanation version, if any.")
    explanation_versions: int
    notes: list[NoteInfo] = Field(description="The newest notes on this channel.")
    next_step: str


class MomentPage(Page):
    layer: str
    channel: int
    analysis_id: int
    moments: list[Moment]


class Timeline(Page):
    run_id: int
    layer: str
    channel: int
    steps: list[TimelineStep] = Field(description="Consecutive steps: the channel's value (null if not finite) with the step's context.")


class PlotInfo(BaseModel):
    layer: str
    channel: int
    run_id: int
    first_step: int
    n_steps: int
    analysis_id: int | None
    png_bytes: int


def moments_with_context(store: Store, top: list[TopActivation]) -> list[Moment]:
    by_run: dict[int, list[int]] = {}
    for item in top:
        by_run.setdefault(item.run_id, []).append(item.step)
    contexts = {run_id: read_step_contexts(store, run_id, steps) for run_id, steps in by_run.items()}
    moments = []
    for item in top:
        context = contexts[item.run_id].get(item.step)
        moments.append(Moment(
            rank=item.rank, run_id=item.run_id, step=item.step, value=item.value,
            episode=context.episode if context else None, t=context.t if context else None,
            variables={k: finite_or_none(v) for k, v in (context.variables if context else {}).items()},
        ))
    return moments


def build_card(store: Store, layer: LayerRecord, channel: int, analysis_id: int | None) -> ChannelCard:
    """Assemble everything known about one channel; used by get_channel and the card resource."""
    check_channel(layer, channel)
    try:
        analysis = resolve_analysis(store, layer, analysis_id)
    except AnalysisNotFoundError:
        analysis = None
    stats, correlations, moments = None, [], []
    if analysis is not None:
        found = store.get_channel_stats(analysis.analysis_id, layer.layer_id, [channel])
        stats = StatsInfo(**{k: getattr(found[0], k) for k in StatsInfo.model_fields}) if found else None
        correlations = [CorrelationInfo(variable=c.variable, r=c.r) for c in store.get_correlations(
            analysis.analysis_id, layer.layer_id, channel=channel)[:CARD_CORRELATIONS]]
        moments = moments_with_context(store, store.get_top_activations(
            analysis.analysis_id, layer.layer_id, channel, limit=CARD_MOMENTS))
    versions = store.list_explanations(layer.layer_id, channel, limit=1000)
    names = {layer.layer_id: layer.name}
    notes = store.list_notes(layer_id=layer.layer_id, channel=channel, limit=CARD_NOTES)
    return ChannelCard(
        policy=store.get_policy(layer.policy_id).name, layer=layer.name, channel=channel,
        width=layer.width, analysis_id=analysis.analysis_id if analysis else None,
        run_ids=analysis.run_ids if analysis else [], stats=stats, correlations=correlations,
        top_moments=moments,
        explanation=explanation_info(store, versions[0], names) if versions else None,
        explanation_versions=len(versions), notes=[note_info(store, n) for n in notes],
        next_step=_card_advice(analysis is not None, bool(versions)),
    )


def _card_advice(has_stats: bool, has_explanation: bool) -> str:
    if not has_stats:
        return "no statistics cover this layer yet; call compute_stats first"
    if not has_explanation:
        return ("look at top_activations, channel_timeline or plot_channel, then record what the "
                "channel does with write_explanation")
    return "check the explanation against top_activations; write_explanation adds a new version"


@tools.tool(title="Get a channel card")
def get_channel(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
) -> ChannelCard:
    """Return one channel's card: summary statistics, strongest correlations with per-step
    variables, the top-activating moments with what the environment was doing, the current
    explanation and the latest notes.

    This is the main tool for studying a channel. Cheap (precomputed by compute_stats; a few
    KB). Without statistics the card still shows explanations and notes.
    """
    store = context.store
    return build_card(store, resolve_layer(store, layer, policy), channel, analysis_id)


@tools.tool(title="Top activations")
def top_activations(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
    offset: Offset = 0,
    limit: ShortLimit = 10,
) -> MomentPage:
    """Return a channel's highest-activating steps, highest first, each with the step's context
    (observation, action, reward, episode and time in the episode).

    Use it to see what the moments a channel responds to have in common. compute_stats keeps
    top_k steps per channel (32 by default). Cheap; paged.
    """
    store = context.store
    found = resolve_layer(store, layer, policy)
    check_channel(found, channel)
    analysis = resolve_analysis(store, found, analysis_id)
    every = store.get_top_activations(analysis.analysis_id, found.layer_id, channel)
    page = every[offset:offset + limit]
    return MomentPage(layer=found.name, channel=channel, analysis_id=analysis.analysis_id,
                      moments=moments_with_context(store, page), offset=offset, total=len(every),
                      next_offset=next_offset(offset, len(page), limit, len(every)))


def default_run(store: Store, layer: LayerRecord, run_id: int | None) -> RunRecord:
    """Return the given run, checked to record the layer, or the newest run that recorded it."""
    if run_id is not None:
        run = store.get_run(run_id)
        check_recorded(store, run, layer.layer_id)
        return run
    for run in store.list_runs(policy_id=layer.policy_id, limit=100):
        if layer.name in run.layers:
            return run
    raise InvalidArgumentError(
        f"no run recorded layer {layer.name!r}; record one with record_rollout (layers=[{layer.name!r}])"
    )


@tools.tool(title="Channel timeline")
def channel_timeline(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    run_id: Annotated[int | None, Field(ge=1, description="Run to read; omitted means the newest run that recorded the layer.")] = None,
    variables: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=64, description="Per-step variables to include; omitted means all of the run's.")] = None,
    policy: PolicyRef = None,
    offset: Annotated[int, Field(ge=0, le=10**9, description="First step to return; pass next_offset to continue.")] = 0,
    limit: Annotated[int, Field(ge=1, le=1000, description="Number of consecutive steps (1 to 1000).")] = 100,
) -> Timeline:
    """Return a channel's value at consecutive steps of a run, each with the step's episode, time
    in the episode, termination flags and per-step variables.

    Use it to watch how a channel evolves within episodes, e.g. around a failure. Works without
    compute_stats. About 150 bytes per step; paged by offset/limit.
    """
    store = context.store
    found = resolve_layer(store, layer, policy)
    check_channel(found, channel)
    run = default_run(store, found, run_id)
    page = read_channel_timeline(store, run.run_id, found.layer_id, channel, start=offset,
                                 limit=limit, variables=variables)
    return Timeline(run_id=run.run_id, layer=found.name, channel=channel, steps=page.steps,
                    offset=offset, total=page.run_steps, next_offset=page.next_start)


@tools.tool(title="Plot a channel")
def plot_channel(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    run_id: Annotated[int | None, Field(ge=1, description="Run for the timeline; omitted means the newest run that recorded the layer.")] = None,
    start: Annotated[int, Field(ge=0, le=10**9, description="First step of the timeline.")] = 0,
    steps: Annotated[int, Field(ge=10, le=MAX_TIMELINE_STEPS, description=f"Steps in the timeline (10 to {MAX_TIMELINE_STEPS}).")] = 1000,
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
) -> Annotated[CallToolResult, PlotInfo]:
    """Plot a channel as a small PNG image: the histogram of its values over the analysed steps
    (left) and its value over a stretch of a run with episode starts marked (right).

    Use it to see at a glance whether a channel is sparse, bimodal or periodic. The image is
    about 15-30 KB (720 x 260 pixels) and takes a fraction of a second.
    """
    from interlatent_mcp.analysis.plots import plot_channel as render
    from interlatent_mcp.analysis.timeline import read_channel_values

    store = context.store
    found = resolve_layer(store, layer, policy)
    check_channel(found, channel)
    run = default_run(store, found, run_id)
    if start >= run.n_steps:
        raise InvalidArgumentError(
            f"start {start} is past the end of run {run.run_id}, which has {run.n_steps} steps"
        )
    values = read_channel_values(store, run.run_id, found.layer_id, channel, start, start + steps)
    edges, counts, analysis_used = _stored_histogram(store, found, channel, analysis_id)
    episode_starts = [e.first_step for e in store.list_episodes(run.run_id)
                      if start <= e.first_step < start + values.shape[0]]
    png = render(values, first_step=start, hist_edges=edges, hist_counts=counts,
                 episode_starts=episode_starts,
                 title=f"{found.name} channel {channel} (run {run.run_id})")
    info = PlotInfo(layer=found.name, channel=channel, run_id=run.run_id, first_step=start,
                    n_steps=int(values.shape[0]), analysis_id=analysis_used, png_bytes=len(png))
    return CallToolResult(
        content=[ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"),
                 TextContent(type="text", text=info.model_dump_json())],
        structured_content=info.model_dump(mode="json"),
    )


def _stored_histogram(store: Store, layer: LayerRecord, channel: int,
                      analysis_id: int | None) -> tuple[list[float], list[int], int | None]:
    try:
        analysis = resolve_analysis(store, layer, analysis_id)
    except AnalysisNotFoundError:
        if analysis_id is not None:
            raise
        return [], [], None
    stats = store.get_channel_stats(analysis.analysis_id, layer.layer_id, [channel])
    if not stats:
        return [], [], analysis.analysis_id
    return stats[0].hist_edges, stats[0].hist_counts, analysis.analysis_id

