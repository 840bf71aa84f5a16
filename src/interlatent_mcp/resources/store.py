"""Resources: the store's schema, the runs, a layer's channel table and one channel's card.

Each renders markdown (the schema: SQL) for a model or a person to read. Expected failures
(an unknown layer, a channel out of range) become resource errors with the library's message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from interlatent_mcp.errors import InterlatentError, NotFoundError
from interlatent_mcp.resources.markdown import render_card, render_channel_table, render_runs
from interlatent_mcp.tools.base import ServerContext
from interlatent_mcp.tools.channels import build_card
from interlatent_mcp.tools.common import resolve_layer
from interlatent_mcp.tools.discover import summarize_run

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

_F = TypeVar("_F", bound=Callable[..., str])

RUNS_LISTED = 50


def _resource_errors(fn: _F) -> _F:
    """Turn library errors into resource errors that carry the library's message."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> str:
        try:
            return fn(*args, **kwargs)
        except NotFoundError as e:
            raise ResourceNotFoundError(str(e)) from e
        except InterlatentError as e:
            raise ResourceError(str(e)) from e

    return call  # type: ignore[return-value]


def register(server: MCPServer, context: ServerContext) -> None:
    store = context.store

    @server.resource("interlatent://schema", name="schema", title="Store schema",
                     description="The SQL schema of the store (every table, index and trigger), for the query tool.",
                     mime_type="text/plain")
    @_resource_errors
    def schema() -> str:
        parts = [f"-- {o.kind} {o.name}\n{o.sql};" for o in store.describe_schema() if o.sql]
        return "\n\n".join(parts) + "\n"

    @server.resource("interlatent://runs", name="runs", title="Recorded runs",
                     description=f"The newest {RUNS_LISTED} recorded runs as a markdown table.",
                     mime_type="text/markdown")
    @_resource_errors
    def runs() -> str:
        names: dict[int, str] = {}
        listed = [summarize_run(store, run, names) for run in store.list_runs(limit=RUNS_LISTED)]
        return render_runs(listed, store.count_runs())

    @server.resource("interlatent://policies/{policy}/layers/{layer}/channels", name="channel_table",
                     title="Channel table of a layer",
                     description="Every channel of a layer with its statistics, strongest correlation and current explanation (markdown). policy is a policy id or name.",
                     mime_type="text/markdown")
    @_resource_errors
    def channel_table(policy: str, layer: str) -> str:
        return render_channel_table(store, resolve_layer(store, layer, policy))

    @server.resource("interlatent://policies/{policy}/layers/{layer}/channels/{channel}",
                     name="channel_card", title="Channel card",
                     description="One channel's card: statistics, correlations, top moments, explanation and notes (markdown).",
                     mime_type="text/markdown")
    @_resource_errors
    def channel_card(policy: str, layer: str, channel: int) -> str:
        return render_card(build_card(store, resolve_layer(store, layer, policy), channel, None))
