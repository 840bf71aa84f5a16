"""Argument types, page models and name lookups shared by the tools and resources."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError, UnknownPolicyError
from interlatent_mcp.store import AnalysisRecord, LayerRecord, PolicyRecord, Store

MAX_PAGE = 200

Offset = Annotated[int, Field(ge=0, le=10**9, description="Index of the first item to return (0-based); pass next_offset from the previous page to continue.")]
LayerName = Annotated[str, Field(min_length=1, max_length=200, description="Layer (hook point) name, e.g. 'act1:post'; describe_policy lists a policy's layers.")]
Channel = Annotated[int, Field(ge=0, le=10**7, description="Channel index within the layer (0-based).")]
PolicyRef = Annotated[int | str | None, Field(description="Policy id or name in the store; may be omitted when only one policy in the store has the layer.")]
AnalysisId = Annotated[int | None, Field(ge=1, description="Analysis to read; omitted means the newest analysis that covers the layer.")]
RunId = Annotated[int, Field(ge=1, description="Run id, as list_runs returns it.")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Maximum number of items to return (1 to {MAX_PAGE}).")]
ShortLimit = Annotated[int, Field(ge=1, le=50, description="Maximum number of items to return (1 to 50).")]


class Page(BaseModel):
    """Fields every paged result has."""

    offset: int = Field(description="Index of the first item of this page.")
    total: int | None = Field(None, description="Number of items in all pages, when known.")
    next_offset: int | None = Field(description="Pass as offset to get the next page; null on the last page.")


def next_offset(offset: int, returned: int, limit: int, total: int | None = None) -> int | None:
    """Return the offset of the next page, or None when this page was the last."""
    following = offset + returned
    if total is not None:
        return following if following < total else None
    return following if returned == limit else None


def resolve_policy(store: Store, policy: int | str) -> PolicyRecord:
    """Return the policy given by id or name; a name of digits that is no name is read as an id."""
    if isinstance(policy, str) and policy.strip().isdigit():
        try:
            return store.get_policy(policy)
        except UnknownPolicyError:
            return store.get_policy(int(policy))
    return store.get_policy(policy)


def resolve_layer(store: Store, layer: str, policy: int | str | None = None) -> LayerRecord:
    """Return a layer by name, within `policy` or, when omitted, the one policy that has it."""
    if policy is not None:
        return store.get_layer(resolve_policy(store, policy).policy_id, layer)
    policies = store.list_policies()
    if not policies:
        raise UnknownLayerError(
            f"layer {layer!r} not found: the store has no policies yet; record a rollout with "
            f"record_rollout first"
        )
    matches = [(p, found) for p in policies for found in store.list_layers(p.policy_id)
               if found.name == layer]
    if len(matches) == 1:
        return matches[0][1]
    if not matches:
        known = {p.name + f" (id {p.policy_id})": [x.name for x in store.list_layers(p.policy_id)]
                 for p in policies}
        listing = "; ".join(f"{name}: {', '.join(names)}" for name, names in known.items())
        raise UnknownLayerError(f"layer {layer!r} not found; known layers by policy: {listing}")
    owners = ", ".join(f"{p.name} (id {p.policy_id})" for p, _ in matches)
    raise InvalidArgumentError(
        f"layer {layer!r} exists in several policies: {owners}; pass policy=<id> to choose one"
    )


def resolve_analysis(store: Store, layer: LayerRecord, analysis_id: int | None) -> AnalysisRecord:
    """Return the given analysis, checked to cover the layer, or the newest one that does."""
    if analysis_id is None:
        return store.latest_analysis(layer.layer_id)
    analysis = store.get_analysis(analysis_id)
    if layer.layer_id not in analysis.layer_ids:
        covered = [store.get_layer_by_id(layer_id).name for layer_id in analysis.layer_ids]
        raise InvalidArgumentError(
            f"analysis {analysis_id} does not cover layer {layer.name!r}; it covers "
            f"{', '.join(covered) or 'no layer'}; omit analysis_id to use the newest analysis "
            f"of the layer"
        )
    return analysis


def check_channel(layer: LayerRecord, channel: int) -> None:
    if not 0 <= channel < layer.width:
        raise InvalidArgumentError(
            f"channel {channel} is out of range for layer {layer.name!r}, which has {layer.width} "
            f"channels (0 to {layer.width - 1})"
        )


def shorten(text: str | None, limit: int = 200) -> str | None:
    """Cut `text` to `limit` characters, marking the cut with an ellipsis."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
