"""The query tool: read-only SQL over the store, for questions no other tool covers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from interlatent_mcp.store.query import MAX_QUERY_ROWS
from interlatent_mcp.tools.base import ServerContext, ToolSet

tools = ToolSet()
register = tools.register

QUERY_TIME_LIMIT_S = 5.0


class QueryRows(BaseModel):
    columns: list[str]
    rows: list[list[Any]] = Field(description="Row values in column order; BLOBs appear as '<BLOB n bytes>'.")
    truncated: bool = Field(description="True when the query had more rows than max_rows.")
    elapsed_ms: float


@tools.tool(title="Query the store (read-only SQL)")
def query(
    context: ServerContext,
    sql: Annotated[str, Field(min_length=1, max_length=20_000, description="One SQLite SELECT (or WITH ... SELECT) statement.")],
    max_rows: Annotated[int, Field(ge=1, le=MAX_QUERY_ROWS, description=f"Maximum rows to return (1 to {MAX_QUERY_ROWS}).")] = 100,
) -> QueryRows:
    """Run one read-only SQL SELECT over the store, for questions no other tool answers (for
    example counting episodes by length, or joining notes with explanations).

    Tables: policies, layers, runs, run_layers, episodes, analyses, channel_stats, correlations,
    top_activations, jobs, notes, explanations (the resource interlatent://schema has every
    column). Activations and per-step data are binary chunks: use channel_timeline for those.
    Writes, PRAGMAs that change settings and ATTACH are rejected; a query is stopped after
    5 seconds and returns at most max_rows rows.
    """
    result = context.store.query_read_only(sql, max_rows=max_rows, time_limit_s=QUERY_TIME_LIMIT_S)
    return QueryRows(columns=result.columns, rows=result.rows, truncated=result.truncated,
                     elapsed_ms=round(result.elapsed_s * 1000, 3))
