"""Training data: paired input and output activations read from the store, split by episode."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from interlatent_mcp.capture.hooks import parse_layer_name
from interlatent_mcp.errors import (
    InvalidArgumentError,
    StoreError,
    UnknownLayerError,
    closest_names,
)
from interlatent_mcp.store import PolicyRecord, RunRecord, StepChunk, Store

logger = logging.getLogger(__name__)

# Training keeps its data in memory, so it rejects runs with more bytes of activations than this.
MAX_TRAINING_BYTES = 4 * 1024**3

EpisodeKey = tuple[int, int]  # (run_id, episode)


@dataclass(frozen=True)
class EpisodeSplit:
    """The assignment of episodes to training, validation (early stopping) and held-out sets."""

    train: list[EpisodeKey]
    validation: list[EpisodeKey]
    held_out: list[EpisodeKey]


@dataclass
class PairedActivations:
    """Input and output activations of the same steps (the same array for an autoencoder)."""

    x: np.ndarray  # (n, d_in) float32
    y: np.ndarray  # (n, d_out) float32
    run_ids: np.ndarray  # (n,) int64
    episodes: np.ndarray  # (n,) int64

    @property
    def n_steps(self) -> int:
        return int(self.x.shape[0])

    def episode_keys(self) -> list[EpisodeKey]:
        """Return the distinct (run_id, episode) pairs, in step order."""
        pairs = np.stack([self.run_ids, self.episodes], axis=1)
        _, first = np.unique(pairs, axis=0, return_index=True)
        return [(int(self.run_ids[i]), int(self.episodes[i])) for i in np.sort(first)]

    def mask(self, keys: Sequence[EpisodeKey]) -> np.ndarray:
        """Return a boolean mask of the steps that belong to `keys`."""
        return episode_mask(self.run_ids, self.episodes, keys)


def episode_mask(run_ids: np.ndarray, episodes: np.ndarray,
                 keys: Sequence[EpisodeKey]) -> np.ndarray:
    """Return which steps of (run_ids, episodes) belong to the episodes `keys`."""
    wanted = np.asarray(list(keys), dtype=np.int64).reshape(-1, 2)
    # Pack (run, episode) into one integer so np.isin can match pairs.
    packed = run_ids.astype(np.int64) * (1 << 32) + episodes.astype(np.int64)
    return np.isin(packed, wanted[:, 0] * (1 << 32) + wanted[:, 1])


def normalize_layer_names(input_layer: str, output_layer: str | None) -> tuple[str, str]:
    """Return full layer names; no output layer means an autoencoder of the input layer."""
    for name in (input_layer, output_layer):
        if name is not None and name.startswith("transcoder/"):
            # Latent layers are computed from recorded data, not by a module of the policy,
            # so there is nothing to splice a coder into.
            raise InvalidArgumentError(
                f"layer {name!r} contains a transcoder's latents; train on module layers such as "
                f"act2:pre and act2:post"
            )
    source = parse_layer_name(input_layer).name
    target = source if output_layer is None else parse_layer_name(output_layer).name
    return source, target


def check_runs(store: Store, run_ids: Sequence[int], layers: Sequence[str]) -> list[RunRecord]:
    """Check that the runs exist, share one policy, are finished and recorded every layer."""
    runs = store.get_finished_runs(run_ids, purpose="train on")
    # An autoencoder passes its layer twice, as input and output.
    required = list(dict.fromkeys(layers))
    for run in runs:
        missing = [layer for layer in required if layer not in run.layers]
        if missing:
            raise _missing_layer_error(store, run, missing, required)
    return runs


def _missing_layer_error(store: Store, run: RunRecord, missing: list[str],
                         required: list[str]) -> UnknownLayerError:
    """Return the error for layers that `run` lacks: either the policy has no such layer, or
    the rollout did not record it, and the error says how to record it."""
    policy_layers = [layer.name for layer in store.list_layers(run.policy_id)]
    policy = store.get_policy(run.policy_id)
    unknown = [name for name in missing if name not in policy_layers]
    if unknown:
        hint = closest_names(unknown[0], policy_layers)
        return UnknownLayerError(
            f"layer {unknown[0]!r} does not exist in policy {policy.name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; its layers: {', '.join(policy_layers) or 'none'}"
        )
    spec = _policy_spec(policy)
    return UnknownLayerError(
        f"run {run.run_id} did not record layer{'s' if len(missing) > 1 else ''} "
        f"{', '.join(repr(m) for m in missing)}; it recorded "
        f"{', '.join(run.layers) or 'no layers'}. Record a run with "
        f"`interlatent rollout {shlex.quote(spec)} --layers {' '.join(required)}` (command line) "
        f"or record_rollout with policy={spec!r} and layers={required} (MCP), then pass its run id"
    )


def _policy_spec(policy: PolicyRecord) -> str:
    """Return how `interlatent rollout` and record_rollout name the policy."""
    if policy.source.startswith("python:"):
        # Neither can load a policy defined in Python code by name; the name still tells the
        # user which policy to record.
        return policy.name
    return policy.source.removeprefix("builtin:")


def iter_run_blocks(store: Store, run_id: int, input_layer: str,
                    output_layer: str) -> Iterator[tuple[int, StepChunk, np.ndarray, np.ndarray]]:
    """Yield (chunk index, step context, input block, output block) for each chunk of a run."""
    layer_ids = store.run_layer_ids(run_id)
    inputs = store.iter_activation_chunks(run_id, layer_ids[input_layer])
    outputs = (inputs if output_layer == input_layer
               else store.iter_activation_chunks(run_id, layer_ids[output_layer]))
    for index, steps in enumerate(store.iter_step_chunks(run_id)):
        x_start, x = next(inputs, (-1, None))
        y_start, y = (x_start, x) if output_layer == input_layer else next(outputs, (-1, None))
        aligned = x is not None and y is not None and x_start == y_start == steps.step_start
        if not aligned or len(x) != steps.n_steps or len(y) != steps.n_steps:
            raise StoreError(
                f"run {run_id}: activation chunks of {input_layer} and {output_layer} do not line "
                f"up with the step chunks at step {steps.step_start}; the run's data is "
                f"inconsistent, so record it again"
            )
        yield index, steps, x, y


def load_paired_activations(store: Store, runs: Sequence[RunRecord], input_layer: str,
                            output_layer: str) -> PairedActivations:
    """Read both layers of every run chunk by chunk into paired in-memory arrays."""
    widths = [store.get_layer(runs[0].policy_id, name).width for name in (input_layer, output_layer)]
    total_steps = sum(run.n_steps for run in runs)
    n_bytes = total_steps * 4 * (widths[0] + (widths[1] if output_layer != input_layer else 0))
    if n_bytes > MAX_TRAINING_BYTES:
        raise InvalidArgumentError(
            f"the runs hold {total_steps} steps ({n_bytes / 1024**3:.1f} GiB of activations), more "
            f"than the {MAX_TRAINING_BYTES / 1024**3:.0f} GiB training reads into memory; train on "
            f"fewer runs"
        )
    xs, ys, run_ids, episodes = [], [], [], []
    for run in runs:
        for _index, steps, x, y in iter_run_blocks(store, run.run_id, input_layer, output_layer):
            xs.append(x)
            ys.append(y)
            run_ids.append(np.full(steps.n_steps, run.run_id, dtype=np.int64))
            episodes.append(steps.episode.astype(np.int64))
    if not xs:
        raise InvalidArgumentError(
            f"runs {[run.run_id for run in runs]} have no recorded steps; record a rollout first"
        )
    x_all = np.concatenate(xs)
    y_all = x_all if output_layer == input_layer else np.concatenate(ys)
    logger.info("read %d steps of %s -> %s from runs %s", len(x_all), input_layer, output_layer,
                [run.run_id for run in runs])
    return PairedActivations(x_all, y_all, np.concatenate(run_ids), np.concatenate(episodes))


def split_episodes(keys: Sequence[EpisodeKey], held_out_fraction: float,
                   validation_fraction: float, seed: int) -> EpisodeSplit:
    """Split episodes at random (seeded) into train, validation and held-out sets.

    Whole episodes go to one set, so no held-out step has a near-duplicate neighbour in training.
    Each set gets at least one episode.
    """
    n = len(keys)
    n_held_out = max(1, round(n * held_out_fraction))
    n_validation = max(1, round(n * validation_fraction))
    if n - n_held_out - n_validation < 1:
        raise InvalidArgumentError(
            f"the runs contain {n} episode(s), too few to split into training, validation "
            f"({validation_fraction:.0%}) and held-out ({held_out_fraction:.0%}) episodes; record "
            f"at least {n_held_out + n_validation + 1} episodes"
        )
    order = np.random.default_rng(seed).permutation(n)
    chosen = [keys[i] for i in order]
    return EpisodeSplit(
        train=sorted(chosen[n_held_out + n_validation:]),
        validation=sorted(chosen[n_held_out:n_held_out + n_validation]),
        held_out=sorted(chosen[:n_held_out]),
    )


def geometric_median(points: np.ndarray, *, iterations: int = 100, tolerance: float = 1e-6,
                     max_points: int = 20_000, seed: int = 0) -> np.ndarray:
    """Return the geometric median of the rows of `points` by Weiszfeld's algorithm.

    At most `max_points` rows (a seeded random subset) are used.
    """
    if len(points) > max_points:
        points = points[np.random.default_rng(seed).choice(len(points), max_points, replace=False)]
    points = points.astype(np.float64)
    median = points.mean(axis=0)
    for _ in range(iterations):
        distances = np.linalg.norm(points - median, axis=1)
        weights = 1.0 / np.maximum(distances, 1e-12)
        updated = (weights[:, None] * points).sum(axis=0) / weights.sum()
        moved = np.linalg.norm(updated - median)
        median = updated
        if moved <= tolerance * max(np.linalg.norm(median), 1.0):
            break
    return median
