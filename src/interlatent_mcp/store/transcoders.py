"""Trained transcoders and sparse autoencoders, and the activation chunks of their latents."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError, NotFoundError
from interlatent_mcp.store.connection import Connections, utc_now
from interlatent_mcp.store.records import ACTIVATION_DTYPE, encode_array


@dataclass(frozen=True)
class TranscoderRecord:
    """A trained transcoder (input layer to output layer) or autoencoder (one layer to itself).

    `config` contains the hyperparameters and the training data description (runs, widths,
    episode split); `metrics` contains the held-out evaluation and, once measured, the splice-in
    fidelity. The weights are read separately with `get_transcoder_weights`.
    """

    transcoder_id: int
    name: str
    policy_id: int
    input_layer: str
    output_layer: str
    architecture: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    latent_layer_id: int | None
    created_at: str


# A name becomes part of the latent layer's name ('transcoder/<name>') and of shell commands, so it
# is kept to characters that need no quoting.
TRANSCODER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")

_COLUMNS = ("transcoder_id, name, policy_id, input_layer, output_layer, architecture, config,"
            " metrics, latent_layer_id, created_at")


def _transcoder_from_row(row: Any) -> TranscoderRecord:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    values["metrics"] = json.loads(values["metrics"])
    return TranscoderRecord(**values)


def _check_name_pattern(name: str) -> None:
    if not TRANSCODER_NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError(
            f"transcoder name {name!r} is invalid; use 1 to 100 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit"
        )


def _name_taken_error(name: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"a transcoder named {name!r} already exists; choose another name or list the existing "
        f"ones with list_transcoders"
    )


class TranscodersMixin:
    """Store methods for trained transcoders and for writing a derived layer's activations."""

    connections: Connections

    def add_transcoder(
        self,
        *,
        name: str,
        policy_id: int,
        input_layer: str,
        output_layer: str,
        architecture: str,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        weights: bytes,
    ) -> TranscoderRecord:
        """Insert a trained transcoder; an invalid name or one already in the store is rejected."""
        _check_name_pattern(name)
        with self.connections.atomic() as tx:
            taken = tx.execute("SELECT 1 FROM transcoders WHERE name = ?", (name,)).fetchone()
            if taken is not None:
                raise _name_taken_error(name)
            transcoder_id = tx.execute(
                "INSERT INTO transcoders (name, policy_id, input_layer, output_layer,"
                " architecture, config, metrics, weights, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, policy_id, input_layer, output_layer, architecture,
                 json.dumps(dict(config), default=str), json.dumps(dict(metrics), default=str),
                 weights, utc_now()),
            ).lastrowid
        return self.get_transcoder(transcoder_id)

    def check_transcoder_name(self, name: str) -> None:
        """Raise InvalidArgumentError unless `name` is a valid name that no transcoder has yet."""
        _check_name_pattern(name)
        taken = self.connections.get().execute(
            "SELECT 1 FROM transcoders WHERE name = ?", (name,)).fetchone()
        if taken is not None:
            raise _name_taken_error(name)

    def get_transcoder(self, transcoder: int | str) -> TranscoderRecord:
        """Return a transcoder by id or by name; an unknown one lists the names in the store.

        A string of digits that is no transcoder's name is read as an id.
        """
        conn = self.connections.get()
        column = "transcoder_id" if isinstance(transcoder, int) else "name"
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM transcoders WHERE {column} = ?", (transcoder,)
        ).fetchone()
        if row is None and isinstance(transcoder, str) and transcoder.strip().isdigit():
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM transcoders WHERE transcoder_id = ?",
                (int(transcoder),),
            ).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM transcoders ORDER BY transcoder_id DESC LIMIT 20")]
            raise NotFoundError(
                f"transcoder {transcoder!r} is not in the store; transcoders in the store: "
                f"{', '.join(names) or 'none'}; train one with train_transcoder"
            )
        return _transcoder_from_row(row)

    def list_transcoders(
        self, *, policy_id: int | None = None, offset: int = 0, limit: int | None = None
    ) -> list[TranscoderRecord]:
        """Return transcoders, newest first, optionally those of one policy."""
        where, params = "", []
        if policy_id is not None:
            where = " WHERE policy_id = ?"
            params.append(policy_id)
        rows = self.connections.get().execute(
            f"SELECT {_COLUMNS} FROM transcoders{where} ORDER BY transcoder_id DESC"
            " LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        )
        return [_transcoder_from_row(row) for row in rows]

    def count_transcoders(self, *, policy_id: int | None = None) -> int:
        if policy_id is None:
            sql, params = "SELECT count(*) FROM transcoders", ()
        else:
            sql, params = "SELECT count(*) FROM transcoders WHERE policy_id = ?", (policy_id,)
        return self.connections.get().execute(sql, params).fetchone()[0]

    def get_transcoder_weights(self, transcoder_id: int) -> bytes:
        row = self.connections.get().execute(
            "SELECT weights FROM transcoders WHERE transcoder_id = ?", (transcoder_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"transcoder {transcoder_id} is not in the store")
        return bytes(row[0])

    def update_transcoder_metrics(
        self, transcoder_id: int, metrics: Mapping[str, Any]
    ) -> TranscoderRecord:
        """Merge `metrics` into a transcoder's metrics; keys given replace the stored ones."""
        with self.connections.atomic() as tx:
            row = tx.execute(
                "SELECT metrics FROM transcoders WHERE transcoder_id = ?", (transcoder_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"transcoder {transcoder_id} is not in the store")
            merged = {**json.loads(row[0]), **metrics}
            tx.execute("UPDATE transcoders SET metrics = ? WHERE transcoder_id = ?",
                       (json.dumps(merged, default=str), transcoder_id))
        return self.get_transcoder(transcoder_id)

    def set_transcoder_latent_layer(self, transcoder_id: int, layer_id: int) -> None:
        with self.connections.atomic() as tx:
            tx.execute("UPDATE transcoders SET latent_layer_id = ? WHERE transcoder_id = ?",
                       (layer_id, transcoder_id))

    # Activations of a layer derived after the rollout (transcoder latents)

    def write_activation_chunk(
        self, run_id: int, layer_id: int, chunk: int, step_start: int, values: np.ndarray
    ) -> None:
        """Write one (n_steps, width) block of a layer for an existing run, in one transaction.

        The chunk number and first step should match the run's step chunk, so that the block
        joins with the per-step context. The layer counts as recorded for the run only once
        `add_run_layer` is called.
        """
        if values.ndim != 2 or values.shape[0] == 0:
            raise InvalidArgumentError(
                f"activation block for layer {layer_id} has shape {values.shape}; expected "
                f"(n_steps, width) with n_steps > 0"
            )
        with self.connections.atomic() as tx:
            tx.execute(
                "INSERT INTO activation_chunks (run_id, layer_id, chunk, step_start, n_steps,"
                " width, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, layer_id, chunk, step_start, values.shape[0], values.shape[1],
                 encode_array(values, ACTIVATION_DTYPE)),
            )

    def delete_activation_chunks(self, run_id: int, layer_id: int) -> int:
        """Delete every chunk of one layer of one run, and its run_layers row; return the count.

        Used to clear a derived layer whose writing was interrupted before it is written again.
        """
        with self.connections.atomic() as tx:
            deleted = tx.execute(
                "DELETE FROM activation_chunks WHERE run_id = ? AND layer_id = ?",
                (run_id, layer_id),
            ).rowcount
            tx.execute("DELETE FROM run_layers WHERE run_id = ? AND layer_id = ?",
                       (run_id, layer_id))
        return deleted

    def add_run_layer(self, run_id: int, layer_id: int) -> None:
        """Mark a layer as recorded for a run (after all its chunks are written)."""
        with self.connections.atomic() as tx:
            tx.execute("INSERT OR IGNORE INTO run_layers (run_id, layer_id) VALUES (?, ?)",
                       (run_id, layer_id))
