"""Policies, layers, runs, episodes and the chunked activation and step data."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from interlatent_mcp.errors import (
    InvalidArgumentError,
    NotFoundError,
    UnknownLayerError,
    UnknownPolicyError,
    UnknownRunError,
)
from interlatent_mcp.store.connection import Connections, utc_now
from interlatent_mcp.store.records import (
    ACTIVATION_DTYPE,
    FLAG_TERMINATED,
    FLAG_TRUNCATED,
    INDEX_DTYPE,
    VARIABLE_DTYPE,
    EpisodeRecord,
    LayerRecord,
    PolicyRecord,
    RunRecord,
    StepChunk,
    StepContext,
    decode_array,
    encode_array,
)

RUN_STATUSES = ("running", "complete", "interrupted", "failed")


class RunsMixin:
    """Store methods for what a rollout records."""

    connections: Connections

    # Policies and layers

    def add_policy(
        self,
        *,
        name: str,
        kind: str,
        source: str,
        fingerprint: str,
        observation_space: str,
        action_space: str,
        layers: Mapping[str, int],
    ) -> PolicyRecord:
        """Register a policy and its hookable layers; an identical policy is returned as it is."""
        with self.connections.atomic() as tx:
            row = tx.execute(
                "SELECT policy_id FROM policies WHERE source = ? AND fingerprint = ?",
                (source, fingerprint),
            ).fetchone()
            if row is None:
                policy_id = tx.execute(
                    "INSERT INTO policies (name, kind, source, fingerprint, observation_space,"
                    " action_space, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, kind, source, fingerprint, observation_space, action_space, utc_now()),
                ).lastrowid
            else:
                policy_id = row["policy_id"]
            for layer_name, width in layers.items():
                self.add_layer(policy_id, layer_name, width)
            return self.get_policy(policy_id)

    def add_layer(self, policy_id: int, name: str, width: int, kind: str = "module") -> LayerRecord:
        """Register a layer of a policy, or return the existing one with the same name."""
        with self.connections.atomic() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO layers (policy_id, name, width, kind) VALUES (?, ?, ?, ?)",
                (policy_id, name, int(width), kind),
            )
            return self.get_layer(policy_id, name)

    def get_policy(self, policy: int | str) -> PolicyRecord:
        """Return a policy by id, or by name (the most recently registered with that name)."""
        conn = self.connections.get()
        if isinstance(policy, int):
            row = conn.execute("SELECT * FROM policies WHERE policy_id = ?", (policy,)).fetchone()
        else:
            row = conn.execute(
                "SELECT * FROM policies WHERE name = ? ORDER BY policy_id DESC LIMIT 1", (policy,)
            ).fetchone()
        if row is None:
            known = [p.name for p in self.list_policies()]
            raise UnknownPolicyError(
                f"policy {policy!r} is not in the store; policies in the store: {known or 'none'}"
            )
        return PolicyRecord(**dict(row))

    def list_policies(self) -> list[PolicyRecord]:
        rows = self.connections.get().execute("SELECT * FROM policies ORDER BY policy_id")
        return [PolicyRecord(**dict(row)) for row in rows]

    def get_layer(self, policy_id: int, name: str) -> LayerRecord:
        """Return the layer `name` of a policy; an unknown name lists the known ones."""
        row = (
            self.connections.get()
            .execute("SELECT * FROM layers WHERE policy_id = ? AND name = ?", (policy_id, name))
            .fetchone()
        )
        if row is None:
            known = [layer.name for layer in self.list_layers(policy_id)]
            raise UnknownLayerError(
                f"layer {name!r} not found for policy {policy_id}; known layers: "
                f"{', '.join(known) or 'none'}"
            )
        return LayerRecord(**dict(row))

    def get_layer_by_id(self, layer_id: int) -> LayerRecord:
        row = self.connections.get().execute(
            "SELECT * FROM layers WHERE layer_id = ?", (layer_id,)
        ).fetchone()
        if row is None:
            raise UnknownLayerError(f"layer id {layer_id} is not in the store")
        return LayerRecord(**dict(row))

    def list_layers(self, policy_id: int) -> list[LayerRecord]:
        rows = self.connections.get().execute(
            "SELECT * FROM layers WHERE policy_id = ? ORDER BY layer_id", (policy_id,)
        )
        return [LayerRecord(**dict(row)) for row in rows]

    # Runs

    def create_run(
        self,
        *,
        policy_id: int,
        env_id: str,
        env_kwargs: Mapping[str, Any],
        seed: int | None,
        layer_ids: Sequence[int],
        variables: Sequence[str],
        chunk_steps: int,
        requested_episodes: int | None = None,
        requested_steps: int | None = None,
        tags: Sequence[str] = (),
    ) -> RunRecord:
        """Insert a run in status 'running' and return it."""
        with self.connections.atomic() as tx:
            run_id = tx.execute(
                "INSERT INTO runs (policy_id, env_id, env_kwargs, seed, status, tags,"
                " requested_episodes, requested_steps, chunk_steps, variables, started_at)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (
                    policy_id,
                    env_id,
                    json.dumps(dict(env_kwargs), sort_keys=True, default=str),
                    seed,
                    json.dumps(list(tags)),
                    requested_episodes,
                    requested_steps,
                    chunk_steps,
                    json.dumps(list(variables)),
                    utc_now(),
                ),
            ).lastrowid
            tx.executemany(
                "INSERT INTO run_layers (run_id, layer_id) VALUES (?, ?)",
                [(run_id, layer_id) for layer_id in layer_ids],
            )
        return self.get_run(run_id)

    def finish_run(
        self, run_id: int, *, status: str, duration_s: float, error: str | None = None
    ) -> RunRecord:
        """Set a run's final status and its step and episode counts from what was written."""
        if status not in RUN_STATUSES:
            raise InvalidArgumentError(f"run status {status!r} is not one of {RUN_STATUSES}")
        with self.connections.atomic() as tx:
            tx.execute(
                "UPDATE runs SET status = ?, finished_at = ?, duration_s = ?, error = ?,"
                " n_steps = (SELECT coalesce(sum(n_steps), 0) FROM step_chunks WHERE run_id = ?),"
                " n_episodes = (SELECT count(*) FROM episodes WHERE run_id = ?)"
                " WHERE run_id = ?",
                (status, utc_now(), duration_s, error, run_id, run_id, run_id),
            )
        return self.get_run(run_id)

    def mark_running_runs_interrupted(self) -> list[int]:
        """Mark runs left 'running' by a process that died as 'interrupted'; return their ids."""
        with self.connections.atomic() as tx:
            ids = [r[0] for r in tx.execute("SELECT run_id FROM runs WHERE status = 'running'")]
            for run_id in ids:
                tx.execute(
                    "UPDATE runs SET status = 'interrupted', error = coalesce(error, ?),"
                    " n_steps = (SELECT coalesce(sum(n_steps), 0) FROM step_chunks WHERE run_id = ?),"
                    " n_episodes = (SELECT count(*) FROM episodes WHERE run_id = ?)"
                    " WHERE run_id = ?",
                    ("the recording process stopped before the run finished", run_id, run_id, run_id),
                )
        return ids

    def get_run(self, run_id: int) -> RunRecord:
        """Return a run. The error for an unknown id names the command and tool that list runs."""
        with self.connections.reading() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise UnknownRunError(
                    f"run {run_id} is not in the store; list the runs with `interlatent runs` "
                    f"or the list_runs tool"
                )
            layers = [
                r[0]
                for r in conn.execute(
                    "SELECT l.name FROM run_layers rl JOIN layers l USING (layer_id)"
                    " WHERE rl.run_id = ? ORDER BY l.layer_id",
                    (run_id,),
                )
            ]
        return RunRecord.from_row(row, layers)

    def list_runs(
        self,
        *,
        offset: int = 0,
        limit: int | None = None,
        policy_id: int | None = None,
        env_id: str | None = None,
        status: str | None = None,
    ) -> list[RunRecord]:
        """Return runs, newest first, optionally filtered."""
        clauses, params = [], []
        for column, value in (("policy_id", policy_id), ("env_id", env_id), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params += [-1 if limit is None else limit, offset]
        with self.connections.reading() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT run_id FROM runs {where} ORDER BY run_id DESC LIMIT ? OFFSET ?", params
                )
            ]
            return [self.get_run(run_id) for run_id in ids]

    def get_finished_runs(self, run_ids: Sequence[int], *, purpose: str) -> list[RunRecord]:
        """Return the distinct runs `run_ids`, checked to exist, to share one policy and to have
        finished recording. `purpose` completes the error messages ("analyse", "train on")."""
        if not run_ids:
            raise InvalidArgumentError(
                f"give at least one run id to {purpose}; list runs with `interlatent runs` or "
                f"the list_runs tool"
            )
        runs = [self.get_run(int(run_id)) for run_id in dict.fromkeys(run_ids)]
        policies = {run.policy_id for run in runs}
        if len(policies) > 1:
            raise InvalidArgumentError(
                f"runs {[r.run_id for r in runs]} belong to different policies "
                f"{sorted(policies)}; {purpose} runs of one policy together"
            )
        recording = [run.run_id for run in runs if run.status == "running"]
        if recording:
            raise InvalidArgumentError(
                f"runs {recording} are still recording; wait for them to finish or pass other runs"
            )
        return runs

    def count_runs(self) -> int:
        return self.connections.get().execute("SELECT count(*) FROM runs").fetchone()[0]

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its chunks and episodes (derived analyses keep their numbers)."""
        self.get_run(run_id)
        with self.connections.atomic() as tx:
            tx.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def run_layer_ids(self, run_id: int) -> dict[str, int]:
        rows = self.connections.get().execute(
            "SELECT l.name, l.layer_id FROM run_layers rl JOIN layers l USING (layer_id)"
            " WHERE rl.run_id = ? ORDER BY l.layer_id",
            (run_id,),
        )
        return {row[0]: row[1] for row in rows}

    # Episodes

    def add_episodes(self, episodes: Sequence[EpisodeRecord]) -> None:
        with self.connections.atomic() as tx:
            tx.executemany(
                "INSERT INTO episodes (run_id, episode, seed, first_step, length, return,"
                " terminated, truncated, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.run_id,
                        e.episode,
                        e.seed,
                        e.first_step,
                        e.length,
                        e.return_,
                        int(e.terminated),
                        int(e.truncated),
                        json.dumps(e.metrics),
                    )
                    for e in episodes
                ],
            )

    def has_episode(self, run_id: int, episode: int) -> bool:
        row = self.connections.get().execute(
            "SELECT 1 FROM episodes WHERE run_id = ? AND episode = ?", (run_id, episode)
        ).fetchone()
        return row is not None

    def has_step_chunk(self, run_id: int, chunk: int) -> bool:
        row = self.connections.get().execute(
            "SELECT 1 FROM step_chunks WHERE run_id = ? AND chunk = ?", (run_id, chunk)
        ).fetchone()
        return row is not None

    def list_episodes(self, run_id: int) -> list[EpisodeRecord]:
        rows = self.connections.get().execute(
            "SELECT * FROM episodes WHERE run_id = ? ORDER BY episode", (run_id,)
        )
        return [
            EpisodeRecord(
                run_id=row["run_id"],
                episode=row["episode"],
                seed=row["seed"],
                first_step=row["first_step"],
                length=row["length"],
                return_=row["return"],
                terminated=bool(row["terminated"]),
                truncated=bool(row["truncated"]),
                metrics=json.loads(row["metrics"]),
            )
            for row in rows
        ]

    # Chunks

    def write_chunk(
        self,
        run_id: int,
        chunk: int,
        steps: StepChunk,
        activations: Mapping[int, np.ndarray],
        episodes: Sequence[EpisodeRecord] = (),
    ) -> None:
        """Write one chunk: the step context, every layer's (n_steps, width) block and the
        episodes that ended in it, in a single transaction."""
        n_steps = steps.n_steps
        rows = []
        for layer_id, values in activations.items():
            if values.ndim != 2 or values.shape[0] != n_steps:
                raise InvalidArgumentError(
                    f"activation block for layer {layer_id} has shape {values.shape}; "
                    f"expected ({n_steps}, width)"
                )
            rows.append(
                (run_id, layer_id, chunk, steps.step_start, n_steps, values.shape[1],
                 encode_array(values, ACTIVATION_DTYPE))
            )
        with self.connections.atomic() as tx:
            tx.execute(
                "INSERT INTO step_chunks (run_id, chunk, step_start, n_steps, episode, t, flags,"
                " variables) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    chunk,
                    steps.step_start,
                    n_steps,
                    encode_array(steps.episode, INDEX_DTYPE),
                    encode_array(steps.t, INDEX_DTYPE),
                    encode_array(steps.flags(), np.dtype("u1")),
                    encode_array(steps.variables, VARIABLE_DTYPE),
                ),
            )
            tx.executemany(
                "INSERT INTO activation_chunks (run_id, layer_id, chunk, step_start, n_steps,"
                " width, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if episodes:
                self.add_episodes(episodes)

    def iter_activation_chunks(self, run_id: int, layer_id: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (step_start, (n_steps, width) float32 array) for each chunk, in step order.

        Chunks are fetched one at a time, so memory stays at one chunk whatever the run's length.
        """
        conn = self.connections.get()
        chunks = [
            r[0]
            for r in conn.execute(
                "SELECT chunk FROM activation_chunks WHERE run_id = ? AND layer_id = ? ORDER BY chunk",
                (run_id, layer_id),
            )
        ]
        for chunk in chunks:
            row = conn.execute(
                "SELECT step_start, n_steps, width, data FROM activation_chunks"
                " WHERE run_id = ? AND layer_id = ? AND chunk = ?",
                (run_id, layer_id, chunk),
            ).fetchone()
            yield row[0], decode_array(row[3], ACTIVATION_DTYPE, row[1], row[2])

    def iter_step_chunks(self, run_id: int) -> Iterator[StepChunk]:
        """Yield the per-step context of a run chunk by chunk, in step order."""
        n_variables = len(self.get_run(run_id).variables)
        conn = self.connections.get()
        chunks = [
            r[0]
            for r in conn.execute(
                "SELECT chunk FROM step_chunks WHERE run_id = ? ORDER BY chunk", (run_id,)
            )
        ]
        for chunk in chunks:
            row = conn.execute(
                "SELECT * FROM step_chunks WHERE run_id = ? AND chunk = ?", (run_id, chunk)
            ).fetchone()
            yield _decode_step_chunk(row, n_variables)

    def read_activations(
        self, run_id: int, layer_id: int, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Return the activations of steps [start, stop) as one (n, width) float32 array."""
        conn = self.connections.get()
        stop_clause = "" if stop is None else " AND step_start < ?"
        params: list[Any] = [run_id, layer_id, start]
        if stop is not None:
            params.append(stop)
        rows = conn.execute(
            "SELECT step_start, n_steps, width, data FROM activation_chunks"
            " WHERE run_id = ? AND layer_id = ? AND step_start + n_steps > ?"
            f"{stop_clause} ORDER BY chunk",
            params,
        ).fetchall()
        if not rows:
            width = self.get_layer_by_id(layer_id).width
            return np.zeros((0, width), dtype=np.float32)
        blocks = []
        for step_start, n_steps, width, data in rows:
            block = decode_array(data, ACTIVATION_DTYPE, n_steps, width)
            lo = max(start - step_start, 0)
            hi = n_steps if stop is None else min(stop - step_start, n_steps)
            blocks.append(block[lo:hi])
        return np.concatenate(blocks, axis=0)

    def read_step_range(self, run_id: int, start: int = 0, stop: int | None = None) -> StepChunk:
        """Return the per-step context of steps [start, stop) as one StepChunk."""
        return self._read_step_range(self.get_run(run_id), start, stop)

    def _read_step_range(self, run: RunRecord, start: int, stop: int | None) -> StepChunk:
        run_id = run.run_id
        conn = self.connections.get()
        stop_clause = "" if stop is None else " AND step_start < ?"
        params: list[Any] = [run_id, start] + ([] if stop is None else [stop])
        rows = conn.execute(
            "SELECT * FROM step_chunks WHERE run_id = ? AND step_start + n_steps > ?"
            f"{stop_clause} ORDER BY chunk",
            params,
        ).fetchall()
        parts = []
        for row in rows:
            chunk = _decode_step_chunk(row, len(run.variables))
            lo = max(start - chunk.step_start, 0)
            hi = chunk.n_steps if stop is None else min(stop - chunk.step_start, chunk.n_steps)
            parts.append(chunk.slice(lo, hi))
        if not parts:
            empty = np.zeros(0, dtype=np.int32)
            return StepChunk(start, empty, empty, empty.astype(bool), empty.astype(bool),
                             np.zeros((0, len(run.variables))))
        return StepChunk(
            step_start=parts[0].step_start,
            episode=np.concatenate([p.episode for p in parts]),
            t=np.concatenate([p.t for p in parts]),
            terminated=np.concatenate([p.terminated for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
            variables=np.concatenate([p.variables for p in parts]),
        )

    def get_step_context(self, run_id: int, step: int) -> StepContext:
        """Return what the environment was doing at one step of a run."""
        run = self.get_run(run_id)
        if not 0 <= step < run.n_steps and run.status != "running":
            raise NotFoundError(
                f"step {step} is outside run {run_id}, which has steps 0 to {run.n_steps - 1}"
            )
        chunk = self._read_step_range(run, step, step + 1)
        if chunk.n_steps == 0:
            raise NotFoundError(f"step {step} of run {run_id} has not been written")
        return StepContext(
            run_id=run_id,
            step=step,
            episode=int(chunk.episode[0]),
            t=int(chunk.t[0]),
            terminated=bool(chunk.terminated[0]),
            truncated=bool(chunk.truncated[0]),
            variables={name: float(v) for name, v in zip(run.variables, chunk.variables[0])},
        )


def _decode_step_chunk(row: Any, n_variables: int) -> StepChunk:
    n = row["n_steps"]
    flags = decode_array(row["flags"], np.dtype("u1"), n)
    return StepChunk(
        step_start=row["step_start"],
        episode=decode_array(row["episode"], INDEX_DTYPE, n),
        t=decode_array(row["t"], INDEX_DTYPE, n),
        terminated=(flags & FLAG_TERMINATED).astype(bool),
        truncated=(flags & FLAG_TRUNCATED).astype(bool),
        variables=decode_array(row["variables"], VARIABLE_DTYPE, n, n_variables),
    )
