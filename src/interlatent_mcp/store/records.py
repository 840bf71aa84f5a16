"""Plain records returned by the store, and the binary layout of chunk BLOBs.

Activation chunks are little-endian float32 arrays of shape (n_steps, width) in row-major order.
Step chunks hold the per-step context of the same steps as columns: episode and t as int32,
flags as uint8 (bit 0 terminated, bit 1 truncated) and the named variables as a float64 array of
shape (n_steps, n_variables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ACTIVATION_DTYPE = np.dtype("<f4")
VARIABLE_DTYPE = np.dtype("<f8")
INDEX_DTYPE = np.dtype("<i4")
FLAG_TERMINATED = 1
FLAG_TRUNCATED = 2


def encode_array(values: np.ndarray, dtype: np.dtype) -> bytes:
    """Serialise `values` as a contiguous little-endian buffer of `dtype`."""
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def decode_array(blob: bytes, dtype: np.dtype, n_rows: int, width: int | None = None) -> np.ndarray:
    """Read a BLOB written by `encode_array` back into an array of n_rows (x width)."""
    flat = np.frombuffer(blob, dtype=dtype)
    if width is None:
        return flat[:n_rows]
    return flat.reshape(n_rows, width)


@dataclass(frozen=True)
class PolicyRecord:
    """A policy known to the store, identified by its source and a fingerprint of its weights."""

    policy_id: int
    name: str
    kind: str
    source: str
    fingerprint: str
    observation_space: str
    action_space: str
    created_at: str


@dataclass(frozen=True)
class LayerRecord:
    """A hook point of a policy (`module.path:pre|post`) or a transcoder's latents."""

    layer_id: int
    policy_id: int
    name: str
    width: int
    kind: str


@dataclass(frozen=True)
class RunRecord:
    """One recorded rollout: a policy acting in an environment, with its status and timing."""

    run_id: int
    policy_id: int
    env_id: str
    env_kwargs: dict[str, Any]
    seed: int | None
    status: str
    tags: list[str]
    requested_episodes: int | None
    requested_steps: int | None
    n_steps: int
    n_episodes: int
    chunk_steps: int
    variables: list[str]
    started_at: str
    finished_at: str | None
    duration_s: float | None
    error: str | None
    layers: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Any, layers: list[str]) -> RunRecord:
        values = dict(row)
        values["env_kwargs"] = json.loads(values["env_kwargs"])
        values["tags"] = json.loads(values["tags"])
        values["variables"] = json.loads(values["variables"])
        return cls(**values, layers=layers)


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished (or cut off) episode of a run."""

    run_id: int
    episode: int
    seed: int | None
    first_step: int
    length: int
    return_: float
    terminated: bool
    truncated: bool
    metrics: dict[str, float]


@dataclass
class StepChunk:
    """The per-step context of a contiguous block of steps of one run."""

    step_start: int
    episode: np.ndarray  # (n,) int32
    t: np.ndarray  # (n,) int32
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    variables: np.ndarray  # (n, n_variables) float64

    @property
    def n_steps(self) -> int:
        return int(self.episode.shape[0])

    def flags(self) -> np.ndarray:
        return (self.terminated.astype(np.uint8) * FLAG_TERMINATED) | (
            self.truncated.astype(np.uint8) * FLAG_TRUNCATED
        )

    def slice(self, start: int, stop: int) -> StepChunk:
        """Return the rows [start, stop) of this chunk, as positions within it."""
        return StepChunk(
            step_start=self.step_start + start,
            episode=self.episode[start:stop],
            t=self.t[start:stop],
            terminated=self.terminated[start:stop],
            truncated=self.truncated[start:stop],
            variables=self.variables[start:stop],
        )


@dataclass(frozen=True)
class StepContext:
    """The environment's state at one step, shown beside top activations and timelines."""

    run_id: int
    step: int
    episode: int
    t: int
    terminated: bool
    truncated: bool
    variables: dict[str, float]
