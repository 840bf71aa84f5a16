"""Checking explanations against the data: score_explanation and ranking channels by a predicate."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.store import ExplanationRecord, LayerRecord, Store
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import (
    AnalysisId,
    Channel,
    LayerName,
    Limit,
    Offset,
    Page,
    PolicyRef,
    check_channel,
    next_offset,
    resolve_analysis,
    resolve_layer,
    shorten,
)
from interlatent_mcp.tools.journal import ExplanationInfo, explanation_info

logger = logging.getLogger(__name__)

tools = ToolSet()
register = tools.register

PredicateText = Annotated[str, Field(min_length=1, max_length=2000, description="An expression over per-step variables: comparisons (< <= > >= == !=, chained), and/or/not, + - * /, abs(), numbers, e.g. 'pole_angle > 0.05 and action == 1' (fires when true) or 'abs(pole_angle)' (tracks the value).")]


class PredicateScoreInfo(BaseModel):
    """The separation of a channel's firing steps from the rest by a predicate."""

    predicate: str
    kind: Literal["boolean", "numeric"] = Field(description="boolean: a claim about when the channel fires; numeric: a quantity the channel tracks.")
    analysis_id: int
    threshold: float = Field(description="The channel fires at a step when its activation is above this.")
    threshold_rule: Literal["active", "quantile"]
    threshold_description: str
    n_steps: int
    n_firing: int
    auroc: float | None = Field(description="Probability that a firing step gets a higher predicate value than a quiet one (0.5 = chance, 1 = perfect); null if no step or every step fires.")
    correlation: float | None = Field(description="Pearson correlation of the activation with the predicate's value (true = 1).")
    precision: float | None = Field(None, description="Boolean predicates: fraction of the steps where it is true that fire.")
    recall: float | None = Field(None, description="Boolean predicates: fraction of the firing steps where it is true.")
    f1: float | None = None
    n_predicted: int | None = Field(None, description="Boolean predicates: steps where it is true.")
    true_positives: int | None = None
    false_positives: int | None = None
    false_negatives: int | None = None
    true_negatives: int | None = None


class SimulationScoreInfo(BaseModel):
    """The accuracy of an LLM that predicts the channel from the explanation's text alone."""

    correlation: float = Field(description="Pearson r of predicted and real activations on held-out steps (0 = no better than a constant).")
    constant_predictions: bool
    n_steps: int
    n_firing_shown: int
    analysis_id: int
    model: str
    input_tokens: int
    output_tokens: int


class ScoreResult(BaseModel):
    explanation: ExplanationInfo = Field(description="The explanation version that was scored, with every score it now has.")
    predicate: PredicateScoreInfo | None
    simulation: SimulationScoreInfo | None
    next_step: str


class PredicateRankedChannel(BaseModel):
    channel: int
    auroc: float | None
    f1: float | None
    correlation: float | None
    n_firing: int
    explanation: str | None = Field(description="The channel's current explanation, shortened, if it has one.")


class PredicateRanking(Page):
    layer: str
    predicate: str
    kind: Literal["boolean", "numeric"]
    analysis_id: int
    order: Literal["auroc", "f1", "correlation"]
    channels: list[PredicateRankedChannel]


def _pick_version(store: Store, layer: LayerRecord, channel: int,
                  explanation_id: int | None) -> ExplanationRecord:
    if explanation_id is None:
        record = store.latest_explanation(layer.layer_id, channel)
        if record is None:
            raise NotFoundError(
                f"channel {channel} of layer {layer.name!r} has no explanation yet; write one with "
                f"write_explanation (with a predicate) and score it then"
            )
        return record
    record = store.get_explanation(explanation_id)
    if (record.layer_id, record.channel) != (layer.layer_id, channel):
        raise InvalidArgumentError(
            f"explanation {explanation_id} explains channel {record.channel} of layer id "
            f"{record.layer_id}, not channel {channel} of layer {layer.name!r}; omit "
            f"explanation_id to score the channel's latest version"
        )
    return record


def simulation_backend(context: ServerContext) -> Any:
    """Return the server's LLM backend for simulation, or one built from ANTHROPIC_API_KEY."""
    if context.llm is not None:
        return context.llm
    from interlatent_mcp.explain.llm import AnthropicBackend

    return AnthropicBackend()


def _score_infos(record: ExplanationRecord) -> tuple[PredicateScoreInfo | None,
                                                      SimulationScoreInfo | None]:
    predicate = record.scores.get("predicate")
    simulation = record.scores.get("simulation")
    return (None if predicate is None else PredicateScoreInfo.model_validate(predicate),
            None if simulation is None else SimulationScoreInfo.model_validate(simulation))


def _score_advice(predicate: PredicateScoreInfo | None) -> str:
    if predicate is None or predicate.auroc is None:
        return "compare the explanation with top_activations and channel_timeline"
    if predicate.auroc >= 0.9:
        return "the predicate separates the firing steps well; add a note on what you checked"
    return ("revise the predicate (see false positives and negatives in top_activations and "
            "channel_timeline) and write a new version with write_explanation")


@tools.tool(title="Score an explanation", read_only=False, idempotent=True)
def score_explanation(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    explanation_id: Annotated[int | None, Field(ge=1, description="The version to score; omitted means the channel's latest explanation.")] = None,
    method: Annotated[Literal["predicate", "simulation"], Field(description="predicate: check the explanation's predicate against every recorded step (exact, no LLM). simulation: an LLM predicts the activation from the text on held-out steps (needs an LLM backend on the server).")] = "predicate",
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
) -> ScoreResult:
    """Score an explanation version against the recorded data and store the score with it.

    The channel fires at a step when its activation is above a threshold chosen from its
    distribution (its 0.9 quantile, or > 0 for a sparse non-negative channel); the result
    states the rule. Predicate scoring reports AUROC, precision, recall and F1 for a boolean
    predicate, AUROC and correlation for a numeric one. It reads the analysis's runs once:
    about a second per million steps. Simulation scoring calls an LLM once (40 steps).
    """
    from interlatent_mcp.explain.scoring import score_explanation_predicate
    from interlatent_mcp.explain.simulation import score_by_simulation

    store = context.store
    found = resolve_layer(store, layer, policy)
    check_channel(found, channel)
    analysis = resolve_analysis(store, found, analysis_id)
    record = _pick_version(store, found, channel, explanation_id)
    if method == "predicate":
        record = score_explanation_predicate(store, record, analysis=analysis)
    else:
        record = score_by_simulation(store, record, simulation_backend(context), analysis=analysis)
    predicate, simulation = _score_infos(record)
    return ScoreResult(explanation=explanation_info(store, record), predicate=predicate,
                       simulation=simulation, next_step=_score_advice(predicate))


def rank_by_predicate(store: Store, layer: LayerRecord, predicate: str,
                      order: Literal["auroc", "f1", "correlation"], analysis_id: int | None,
                      offset: int, limit: int) -> PredicateRanking:
    """Score `predicate` against every channel of `layer` and return one page, best first."""
    from interlatent_mcp.explain.scoring import score_predicate_channels

    analysis = resolve_analysis(store, layer, analysis_id)
    scores = score_predicate_channels(store, layer.layer_id, predicate, analysis=analysis)
    if order == "f1" and scores and scores[0].kind == "numeric":
        raise InvalidArgumentError(
            f"predicate {predicate!r} is numeric, so it has no F1; rank by auroc or correlation, "
            f"or write a comparison such as '{predicate} > 0'"
        )

    def key(score: Any) -> float:
        value = getattr(score, order)
        if value is None:
            return float("-inf")
        return abs(value) if order == "correlation" else value

    ranked = sorted(scores, key=key, reverse=True)
    page = ranked[offset:offset + limit]
    channels = []
    for score in page:
        explanation = store.latest_explanation(layer.layer_id, score.channel)
        channels.append(PredicateRankedChannel(
            channel=score.channel, auroc=score.auroc, f1=score.f1, correlation=score.correlation,
            n_firing=score.n_firing,
            explanation=shorten(explanation.text) if explanation else None))
    return PredicateRanking(
        layer=layer.name, predicate=predicate, kind=scores[0].kind if scores else "boolean",
        analysis_id=analysis.analysis_id, order=order, channels=channels, offset=offset,
        total=len(ranked), next_offset=next_offset(offset, len(page), limit, len(ranked)))


@tools.tool(title="Find channels by predicate")
def find_channels_by_predicate(
    context: ServerContext,
    layer: LayerName,
    predicate: PredicateText,
    order: Annotated[Literal["auroc", "f1", "correlation"], Field(description="Rank by AUROC, by F1 (boolean predicates only), or by |correlation|.")] = "auroc",
    policy: PolicyRef = None,
    analysis_id: AnalysisId = None,
    offset: Offset = 0,
    limit: Limit = 10,
) -> PredicateRanking:
    """Rank the channels of a layer by how well a predicate over per-step variables explains them.

    Use it to test a hypothesis across a whole layer ("which channels fire when the pole leans
    right and the cart moves left?"): every channel is scored as score_explanation would score
    the predicate. Reads the analysis's runs once: about a second per million steps of a
    64-channel layer. Needs compute_stats first. Paged.
    """
    store = context.store
    return rank_by_predicate(store, resolve_layer(store, layer, policy), predicate, order,
                             analysis_id, offset, limit)
