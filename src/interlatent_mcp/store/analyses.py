"""Derived results: per-channel statistics, correlations and precomputed top activations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from interlatent_mcp.errors import AnalysisNotFoundError
from interlatent_mcp.store.connection import Connections, utc_now


@dataclass(frozen=True)
class AnalysisRecord:
    """One computation of statistics over a set of runs of one policy."""

    analysis_id: int
    policy_id: int
    run_ids: list[int]
    n_steps: int
    params: dict[str, Any]
    created_at: str
    duration_s: float | None
    layer_ids: list[int]


@dataclass(frozen=True)
class ChannelStats:
    """Summary statistics of one channel over an analysis's steps (finite values only)."""

    layer_id: int
    channel: int
    count: int
    nan_count: int
    inf_count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: dict[str, float]
    frac_active: float | None
    hist_edges: list[float]
    hist_counts: list[int]
    dead: bool


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation of one channel with one per-step variable (None when undefined)."""

    layer_id: int
    channel: int
    variable: str
    r: float | None


@dataclass(frozen=True)
class TopActivation:
    """One of a channel's highest-activating steps."""

    layer_id: int
    channel: int
    rank: int
    run_id: int
    step: int
    value: float


@dataclass
class LayerResults:
    """Everything one analysis computes for one layer, ready to be written."""

    layer_id: int
    stats: list[ChannelStats]
    correlations: list[Correlation]
    top: list[TopActivation]


class AnalysesMixin:
    """Store methods for derived results."""

    connections: Connections

    def add_analysis(
        self,
        *,
        policy_id: int,
        run_ids: Sequence[int],
        n_steps: int,
        params: dict[str, Any],
        duration_s: float,
        results: Sequence[LayerResults],
    ) -> AnalysisRecord:
        """Write an analysis and all its per-layer results in one transaction."""
        with self.connections.atomic() as tx:
            analysis_id = tx.execute(
                "INSERT INTO analyses (policy_id, run_ids, n_steps, params, created_at, duration_s)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (policy_id, json.dumps(sorted(run_ids)), n_steps, json.dumps(params), utc_now(),
                 duration_s),
            ).lastrowid
            for layer in results:
                self._write_layer_results(tx, analysis_id, layer)
        return self.get_analysis(analysis_id)

    def _write_layer_results(self, tx: Any, analysis_id: int, layer: LayerResults) -> None:
        tx.execute(
            "INSERT INTO analysis_layers (analysis_id, layer_id) VALUES (?, ?)",
            (analysis_id, layer.layer_id),
        )
        tx.executemany(
            "INSERT INTO channel_stats (analysis_id, layer_id, channel, count, nan_count,"
            " inf_count, mean, std, min, max, quantiles, frac_active, hist_edges, hist_counts,"
            " dead) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (analysis_id, s.layer_id, s.channel, s.count, s.nan_count, s.inf_count, s.mean,
                 s.std, s.min, s.max, json.dumps(s.quantiles), s.frac_active,
                 json.dumps(s.hist_edges), json.dumps(s.hist_counts), int(s.dead))
                for s in layer.stats
            ],
        )
        tx.executemany(
            "INSERT INTO correlations (analysis_id, layer_id, channel, variable, r)"
            " VALUES (?, ?, ?, ?, ?)",
            [(analysis_id, c.layer_id, c.channel, c.variable, c.r) for c in layer.correlations],
        )
        tx.executemany(
            "INSERT INTO top_activations (analysis_id, layer_id, channel, rank, run_id, step, value)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(analysis_id, t.layer_id, t.channel, t.rank, t.run_id, t.step, t.value)
             for t in layer.top],
        )

    def get_analysis(self, analysis_id: int) -> AnalysisRecord:
        with self.connections.reading() as conn:
            row = conn.execute(
                "SELECT * FROM analyses WHERE analysis_id = ?", (analysis_id,)
            ).fetchone()
            if row is None:
                raise AnalysisNotFoundError(f"analysis {analysis_id} is not in the store")
            layer_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT layer_id FROM analysis_layers WHERE analysis_id = ? ORDER BY layer_id",
                    (analysis_id,),
                )
            ]
        values = dict(row)
        values["run_ids"] = json.loads(values["run_ids"])
        values["params"] = json.loads(values["params"])
        return AnalysisRecord(**values, layer_ids=layer_ids)

    def latest_analysis(
        self, layer_id: int, run_ids: Sequence[int] | None = None
    ) -> AnalysisRecord:
        """Return the newest analysis that covers `layer_id` (over exactly `run_ids` if given)."""
        conn = self.connections.get()
        params: list[Any] = [layer_id]
        clause = ""
        if run_ids is not None:
            clause = " AND a.run_ids = ?"
            params.append(json.dumps(sorted(run_ids)))
        row = conn.execute(
            "SELECT a.analysis_id FROM analyses a JOIN analysis_layers al USING (analysis_id)"
            f" WHERE al.layer_id = ?{clause} ORDER BY a.analysis_id DESC LIMIT 1",
            params,
        ).fetchone()
        if row is None:
            runs = "" if run_ids is None else f" over runs {sorted(run_ids)}"
            named = conn.execute("SELECT name FROM layers WHERE layer_id = ?", (layer_id,)).fetchone()
            layer = repr(named[0]) if named else f"id {layer_id}"
            raise AnalysisNotFoundError(
                f"no statistics computed for layer {layer}{runs}; compute them first with "
                f"`interlatent stats` or the compute_stats tool"
            )
        return self.get_analysis(row[0])

    def list_analyses(self, policy_id: int | None = None) -> list[AnalysisRecord]:
        conn = self.connections.get()
        if policy_id is None:
            rows = conn.execute("SELECT analysis_id FROM analyses ORDER BY analysis_id")
        else:
            rows = conn.execute(
                "SELECT analysis_id FROM analyses WHERE policy_id = ? ORDER BY analysis_id",
                (policy_id,),
            )
        return [self.get_analysis(r[0]) for r in rows.fetchall()]

    def get_channel_stats(
        self, analysis_id: int, layer_id: int, channels: Sequence[int] | None = None
    ) -> list[ChannelStats]:
        """Return the statistics of the given channels (all channels by default), by channel."""
        conn = self.connections.get()
        sql = "SELECT * FROM channel_stats WHERE analysis_id = ? AND layer_id = ?"
        params: list[Any] = [analysis_id, layer_id]
        if channels is not None:
            sql += f" AND channel IN ({','.join('?' * len(channels))})"
            params += [int(c) for c in channels]
        rows = conn.execute(sql + " ORDER BY channel", params)
        return [_channel_stats_from_row(row) for row in rows]

    def get_correlations(
        self,
        analysis_id: int,
        layer_id: int,
        *,
        channel: int | None = None,
        variable: str | None = None,
    ) -> list[Correlation]:
        """Return correlations filtered by channel and/or variable, strongest |r| first."""
        sql = "SELECT channel, variable, r FROM correlations WHERE analysis_id = ? AND layer_id = ?"
        params: list[Any] = [analysis_id, layer_id]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        if variable is not None:
            sql += " AND variable = ?"
            params.append(variable)
        rows = self.connections.get().execute(
            sql + " ORDER BY abs(coalesce(r, 0)) DESC, channel, variable", params
        )
        return [Correlation(layer_id, row[0], row[1], row[2]) for row in rows]

    def rank_channels_by_correlation(
        self,
        analysis_id: int,
        layer_id: int,
        variable: str,
        *,
        order: Literal["abs", "positive", "negative"] = "abs",
        offset: int = 0,
        limit: int = 10,
    ) -> list[Correlation]:
        """Return channels ranked by their correlation with `variable` (undefined r last)."""
        key = {"abs": "abs(r) DESC", "positive": "r DESC", "negative": "r ASC"}[order]
        rows = self.connections.get().execute(
            "SELECT channel, variable, r FROM correlations"
            " WHERE analysis_id = ? AND layer_id = ? AND variable = ?"
            f" ORDER BY r IS NULL, {key}, channel LIMIT ? OFFSET ?",
            (analysis_id, layer_id, variable, limit, offset),
        )
        return [Correlation(layer_id, row[0], row[1], row[2]) for row in rows]

    def get_top_activations(
        self, analysis_id: int, layer_id: int, channel: int, limit: int | None = None
    ) -> list[TopActivation]:
        """Return a channel's precomputed top-activating steps, highest first."""
        rows = self.connections.get().execute(
            "SELECT rank, run_id, step, value FROM top_activations"
            " WHERE analysis_id = ? AND layer_id = ? AND channel = ? ORDER BY rank LIMIT ?",
            (analysis_id, layer_id, channel, -1 if limit is None else limit),
        )
        return [TopActivation(layer_id, channel, r[0], r[1], r[2], r[3]) for r in rows]


def _channel_stats_from_row(row: Any) -> ChannelStats:
    values = dict(row)
    values.pop("analysis_id")
    values["quantiles"] = json.loads(values["quantiles"])
    values["hist_edges"] = json.loads(values["hist_edges"])
    values["hist_counts"] = json.loads(values["hist_counts"])
    values["dead"] = bool(values["dead"])
    return ChannelStats(**values)
