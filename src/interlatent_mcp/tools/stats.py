"""Layer-level analysis tools: compute_stats (a job), find_channels and find_dead."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.jobs import JobControl
from interlatent_mcp.store import AnalysisRecord, Store
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import (
    AnalysisId,
    LayerName,
    Limit,
    Offset,
    Page,
    PolicyRef,
    next_offset,
    resolve_analysis,
    resolve_layer,
    shorten,
)
from interlatent_mcp.tools.jobs import (
    DEFAULT_WAIT_S,
    JobInfo,
    WaitSeconds,
    follow_up,
    job_info,
    start_and_wait,
)

tools = ToolSet()
register = tools.register


class StrongestCorrelation(BaseModel):
    channel: int
    variable: str
    r: float


class LayerSummary(BaseModel):
    layer: str
    width: int
    n_dead: int = Field(description="Channels that are constant on every step (a ReLU output that never fires, for one).")
    strongest: list[StrongestCorrelation] = Field(description="The strongest channel-variable correlations of the layer, by |r|.")


class AnalysisSummary(BaseModel):
    analysis_id: int
    run_ids: list[int]
    n_steps: int
    duration_s: float | None
    layers: list[LayerSummary]


class StatsResult(BaseModel):
    job: JobInfo
    analysis: AnalysisSummary | None = Field(description="The analysis, once the job is complete.")
    next_step: str


class RankedChannel(BaseModel):
    channel: int
    r: float | None = Field(description="Pearson correlation of the channel with the variable over the analysis's steps.")
    explanation: str | None = Field(description="The channel's current explanation, shortened, if it has one.")


class ChannelRanking(Page):
    layer: str
    variable: str
    analysis_id: int
    channels: list[RankedChannel]


class DeadChannel(BaseModel):
    channel: int
    frac_active: float | None
    max: float | None
    std: float | None


class DeadChannels(Page):
    layer: str
    analysis_id: int
    width: int
    channels: list[DeadChannel]


def summarize_analysis(store: Store, analysis: AnalysisRecord, strongest: int = 5) -> AnalysisSummary:
    layers = []
    for layer_id in analysis.layer_ids:
        layer = store.get_layer_by_id(layer_id)
        stats = store.get_channel_stats(analysis.analysis_id, layer_id)
        correlations = [c for c in store.get_correlations(analysis.analysis_id, layer_id)
                        if c.r is not None][:strongest]
        layers.append(LayerSummary(
            layer=layer.name, width=layer.width, n_dead=sum(s.dead for s in stats),
            strongest=[StrongestCorrelation(channel=c.channel, variable=c.variable, r=c.r)
                       for c in correlations if c.r is not None],
        ))
    return AnalysisSummary(analysis_id=analysis.analysis_id, run_ids=analysis.run_ids,
                           n_steps=analysis.n_steps, duration_s=analysis.duration_s, layers=layers)


@tools.job("compute_stats")
def compute_stats_job(control: JobControl, params: dict[str, Any]) -> dict[str, Any]:
    from interlatent_mcp.analysis import AnalysisParams, compute_stats

    def progress(done: int, total: int) -> None:
        control.report(done, total, f"{done} of {total} layer-steps")

    analysis = compute_stats(
        control.store, params["run_ids"], params["layers"],
        params=AnalysisParams(top_k=params["top_k"]), progress=progress,
        should_stop=control.should_stop,
    )
    return summarize_analysis(control.store, analysis).model_dump()


def _default_run_ids(store: Store) -> list[int]:
    runs = store.list_runs(status="complete", limit=1)
    if not runs:
        raise InvalidArgumentError(
            "no complete run in the store to analyse; record one with record_rollout, or pass "
            "run_ids (list_runs shows them)"
        )
    return [runs[0].run_id]


@tools.tool(title="Compute statistics", read_only=False, idempotent=False)
async def compute_stats(
    context: ServerContext,
    ctx: Context,
    run_ids: Annotated[list[Annotated[int, Field(ge=1)]] | None, Field(max_length=100, description="Runs to analyse together (same policy and environment); omitted means the newest complete run.")] = None,
    layers: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=64, description="Layers to analyse; omitted means every layer the runs recorded.")] = None,
    top_k: Annotated[int, Field(ge=1, le=1000, description="Highest-activating steps kept per channel.")] = 32,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> StatsResult:
    """Compute per-channel statistics, correlations with every per-step variable, and the
    top-activating steps of each channel, over one or more recorded runs.

    Run it after record_rollout and before get_channel, find_channels, find_dead or
    top_activations, which read its results. One streaming pass over the data: roughly 4 seconds
    per million layer-steps (steps x layers) of 64-channel layers on one CPU core (an estimate
    from CartPole runs). Waits up to wait_seconds, then returns a
    job id to follow with get_job. The result lists, per layer, the dead channels and the
    strongest correlations, a good starting point.
    """
    if run_ids is None:
        run_ids = await _call_in_thread(_default_run_ids, context.store)
    params = {"run_ids": list(run_ids), "layers": layers, "top_k": top_k}
    record = await start_and_wait(context, ctx, "compute_stats", params, wait_seconds)
    analysis = AnalysisSummary.model_validate(record.result) if record.result else None
    advice = "call find_channels or get_channel to read the results"
    return StatsResult(job=job_info(context, record, with_result=False), analysis=analysis,
                       next_step=follow_up(record, advice))


async def _call_in_thread(fn: Any, *args: Any) -> Any:
    import anyio

    return await anyio.to_thread.run_sync(fn, *args)


@tools.tool(title="Find channels by variable")
def find_channels(
    context: ServerContext,
    layer: LayerName,
    variable: Annotated[str, Field(min_length=1, max_length=200, description="A per-step variable, e.g. 'pole_angle', 'action', 'reward' (get_run lists a run's variables).")],
    order: Annotated[Literal["abs", "positive", "negative"], Field(description="Rank by |r| (abs), by r descending (positive) or ascending (negative).")] = "abs",
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
    offset: Offset = 0,
    limit: Limit = 10,
) -> ChannelRanking:
    """Rank the channels of a layer by their correlation with a per-step variable.

    Use it to find candidate channels for a hypothesis ("which channels track the pole angle?"),
    then read the best ones with get_channel. To rank by a condition over several variables,
    use find_channels_by_predicate. Needs compute_stats first. Cheap; paged.
    """
    store = context.store
    found = resolve_layer(store, layer, policy)
    analysis = resolve_analysis(store, found, analysis_id)
    ranked = store.rank_channels_by_correlation(analysis.analysis_id, found.layer_id, variable,
                                                order=order, offset=offset, limit=limit)
    if not ranked and offset == 0:
        known = sorted({c.variable for c in store.get_correlations(
            analysis.analysis_id, found.layer_id, channel=0)})
        raise InvalidArgumentError(
            f"variable {variable!r} has no correlations in analysis {analysis.analysis_id}; "
            f"known variables: {', '.join(known) or 'none'}"
        )
    channels = []
    for item in ranked:
        explanation = store.latest_explanation(found.layer_id, item.channel)
        channels.append(RankedChannel(channel=item.channel, r=item.r,
                                      explanation=shorten(explanation.text) if explanation else None))
    return ChannelRanking(layer=found.name, variable=variable, analysis_id=analysis.analysis_id,
                          channels=channels, offset=offset, total=found.width,
                          next_offset=next_offset(offset, len(channels), limit, found.width))


@tools.tool(title="Find dead channels")
def find_dead(
    context: ServerContext,
    layer: LayerName,
    max_frac_active: Annotated[float | None, Field(ge=0, le=1, description="Also list channels active on at most this fraction of steps; omitted lists only channels marked dead (constant on every step).")] = None,
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> DeadChannels:
    """List the dead (constant on every step) or rarely active channels of a layer.

    Dead channels carry no information, so skip them when explaining a layer. Needs
    compute_stats first. Cheap; paged.
    """
    store = context.store
    found = resolve_layer(store, layer, policy)
    analysis = resolve_analysis(store, found, analysis_id)
    stats = store.get_channel_stats(analysis.analysis_id, found.layer_id)
    selected = [
        s for s in stats
        if s.dead or (max_frac_active is not None and s.frac_active is not None
                      and s.frac_active <= max_frac_active)
    ]
    page = selected[offset:offset + limit]
    return DeadChannels(
        layer=found.name, analysis_id=analysis.analysis_id, width=found.width,
        channels=[DeadChannel(channel=s.channel, frac_active=s.frac_active, max=s.max, std=s.std)
                  for s in page],
        offset=offset, total=len(selected),
        next_offset=next_offset(offset, len(page), limit, len(selected)),
    )
