"""Writing tools: versioned explanations of channels, and the notes of the investigation journal."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.store import ExplanationRecord, LayerRecord, NoteRecord, Store
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import (
    Channel,
    LayerName,
    Limit,
    Offset,
    Page,
    PolicyRef,
    check_channel,
    next_offset,
    resolve_layer,
)

tools = ToolSet()
register = tools.register

Author = Annotated[str, Field(min_length=1, max_length=100, description="Who writes this (a model or person name), stored with it.")]
Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=20, description="Free-form labels.")]


class ExplanationInfo(BaseModel):
    explanation_id: int
    layer: str
    channel: int
    version: int = Field(description="1 for the first explanation of the channel, then 2, 3, ...; old versions are kept.")
    text: str
    predicate: str | None
    author: str
    method: str
    scores: dict[str, Any]
    created_at: str


class ExplanationPage(Page):
    explanations: list[ExplanationInfo]


class NoteInfo(BaseModel):
    note_id: int
    text: str
    author: str
    layer: str | None
    channel: int | None
    run_id: int | None
    tags: list[str]
    created_at: str


class NotePage(Page):
    notes: list[NoteInfo]


def explanation_info(store: Store, record: ExplanationRecord,
                     layer_names: dict[int, str] | None = None) -> ExplanationInfo:
    names = layer_names if layer_names is not None else {}
    if record.layer_id not in names:
        names[record.layer_id] = store.get_layer_by_id(record.layer_id).name
    return ExplanationInfo(
        explanation_id=record.explanation_id, layer=names[record.layer_id], channel=record.channel,
        version=record.version, text=record.text, predicate=record.predicate,
        author=record.author, method=record.method, scores=record.scores,
        created_at=record.created_at,
    )


def note_info(store: Store, record: NoteRecord) -> NoteInfo:
    layer = None if record.layer_id is None else store.get_layer_by_id(record.layer_id).name
    return NoteInfo(note_id=record.note_id, text=record.text, author=record.author, layer=layer,
                    channel=record.channel, run_id=record.run_id, tags=record.tags,
                    created_at=record.created_at)


def _check_predicate(store: Store, layer: LayerRecord, predicate: str) -> None:
    """Parse the predicate against the variables of the newest run of the layer's policy."""
    from interlatent_mcp.explain.predicate import parse_predicate

    runs = store.list_runs(policy_id=layer.policy_id, limit=1)
    if runs:
        parse_predicate(predicate, runs[0].variables)


@tools.tool(title="Write an explanation", read_only=False, idempotent=False)
def write_explanation(
    context: ServerContext,
    layer: LayerName,
    channel: Channel,
    text: Annotated[str, Field(min_length=1, max_length=4000, description="What the channel represents, in plain words, with the evidence.")],
    predicate: Annotated[str | None, Field(max_length=2000, description="Optional testable claim over per-step variables, e.g. 'pole_angle > 0.05 and action == 1' (fires when true) or 'abs(pole_angle)' (tracks the value).")] = None,
    policy: PolicyRef = None,
    author: Author = "agent",
) -> ExplanationInfo:
    """Record an explanation of what a channel represents, as a new version.

    Earlier versions are never overwritten; get_explanations shows the history and
    search_explanations finds explanations by their words. A predicate is checked against the
    variables of the policy's runs and can later be scored against the recorded data. Cheap.
    """
    store = context.store
    found = resolve_layer(store, layer, policy)
    check_channel(found, channel)
    if not text.strip():
        raise InvalidArgumentError("an explanation needs non-empty text")
    if predicate is not None and predicate.strip():
        _check_predicate(store, found, predicate)
    else:
        predicate = None
    record = store.add_explanation(layer_id=found.layer_id, channel=channel, text=text,
                                   author=author, method="agent", predicate=predicate)
    return explanation_info(store, record)


@tools.tool(title="Get explanations")
def get_explanations(
    context: ServerContext,
    layer: LayerName,
    channel: Annotated[int | None, Field(ge=0, le=10**7, description="One channel; omitted means every channel of the layer.")] = None,
    latest_only: Annotated[bool, Field(description="Only the newest version per channel (true), or every version (false).")] = True,
    policy: PolicyRef = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> ExplanationPage:
    """Return the explanations of a layer or of one channel, by channel, newest version first.
    Use latest_only=false to see how an explanation changed. Cheap; paged."""
    store = context.store
    found = resolve_layer(store, layer, policy)
    if channel is not None:
        check_channel(found, channel)
    records = store.list_explanations(found.layer_id, channel, latest_only=latest_only,
                                      offset=offset, limit=limit)
    names = {found.layer_id: found.name}
    return ExplanationPage(explanations=[explanation_info(store, r, names) for r in records],
                           offset=offset, total=None,
                           next_offset=next_offset(offset, len(records), limit))


@tools.tool(title="Search explanations")
def search_explanations(
    context: ServerContext,
    query: Annotated[str, Field(min_length=1, max_length=500, description="Words to find, e.g. 'pole angle'; SQLite FTS5 syntax (AND, OR, NOT, \"phrases\", prefix*) also works.")],
    layer: Annotated[str | None, Field(max_length=200, description="Only explanations of this layer.")] = None,
    policy: PolicyRef = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> ExplanationPage:
    """Full-text search over all explanation versions (text and predicate), best match first.

    Use it to find channels already explained in terms of a concept, and to avoid explaining
    a channel twice. Cheap; paged.
    """
    store = context.store
    if not query.strip():
        raise InvalidArgumentError("a search needs a non-empty query, e.g. 'pole angle'")
    layer_id = None if layer is None else resolve_layer(store, layer, policy).layer_id
    records = store.search_explanations(query, layer_id=layer_id, offset=offset, limit=limit)
    names: dict[int, str] = {}
    return ExplanationPage(explanations=[explanation_info(store, r, names) for r in records],
                           offset=offset, total=None,
                           next_offset=next_offset(offset, len(records), limit))


def _note_target(store: Store, layer: str | None, channel: int | None, run_id: int | None,
                 policy: int | str | None) -> tuple[int | None, int | None]:
    """Check what a note is attached to; return (layer_id, run_id)."""
    if channel is not None and layer is None:
        raise InvalidArgumentError(f"channel {channel} was given without its layer; pass layer too")
    layer_id = None
    if layer is not None:
        found = resolve_layer(store, layer, policy)
        if channel is not None:
            check_channel(found, channel)
        layer_id = found.layer_id
    if run_id is not None:
        store.get_run(run_id)
    return layer_id, run_id


@tools.tool(title="Add a note", read_only=False, idempotent=False)
def add_note(
    context: ServerContext,
    text: Annotated[str, Field(min_length=1, max_length=8000, description="The note: an observation, a hypothesis, a plan.")],
    layer: Annotated[str | None, Field(max_length=200, description="Attach to this layer.")] = None,
    channel: Annotated[int | None, Field(ge=0, le=10**7, description="Attach to this channel of the layer.")] = None,
    run_id: Annotated[int | None, Field(ge=1, description="Attach to this run.")] = None,
    policy: PolicyRef = None,
    tags: Tags = [],  # noqa: B006 - pydantic copies defaults
    author: Author = "agent",
) -> NoteInfo:
    """Write a note in the investigation journal, optionally attached to a layer, a channel or a
    run. Notes of a channel appear on its card (get_channel), so later sessions and other agents
    see them. Cheap."""
    store = context.store
    if not text.strip():
        raise InvalidArgumentError("a note needs non-empty text")
    layer_id, run_id = _note_target(store, layer, channel, run_id, policy)
    record = store.add_note(text, author=author, layer_id=layer_id, channel=channel,
                            run_id=run_id, tags=tags)
    return note_info(store, record)


@tools.tool(title="List notes")
def list_notes(
    context: ServerContext,
    layer: Annotated[str | None, Field(max_length=200, description="Only notes of this layer.")] = None,
    channel: Annotated[int | None, Field(ge=0, le=10**7, description="Only notes of this channel (with layer).")] = None,
    run_id: Annotated[int | None, Field(ge=1, description="Only notes of this run.")] = None,
    policy: PolicyRef = None,
    offset: Offset = 0,
    limit: Limit = 20,
) -> NotePage:
    """List journal notes, newest first, optionally those of a layer, channel or run. Cheap; paged."""
    store = context.store
    layer_id, run_id = _note_target(store, layer, channel, run_id, policy)
    records = store.list_notes(layer_id=layer_id, channel=channel, run_id=run_id, offset=offset,
                               limit=limit)
    return NotePage(notes=[note_info(store, r) for r in records], offset=offset, total=None,
                    next_offset=next_offset(offset, len(records), limit))
