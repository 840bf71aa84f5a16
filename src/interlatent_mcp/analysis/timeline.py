"""One channel's activations over a run's steps, joined with what the environment was doing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError
from interlatent_mcp.store import RunRecord, StepContext, Store

MAX_TIMELINE_STEPS = 5000


@dataclass(frozen=True)
class TimelineStep:
    """One step of a channel timeline; non-finite numbers are None."""

    step: int
    episode: int
    t: int
    value: float | None
    terminated: bool
    truncated: bool
    variables: dict[str, float | None]


@dataclass(frozen=True)
class ChannelTimeline:
    """A page of consecutive steps of one run for one channel."""

    run_id: int
    layer_id: int
    channel: int
    start: int
    steps: list[TimelineStep]
    run_steps: int
    next_start: int | None


def finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def check_recorded(store: Store, run: RunRecord, layer_id: int) -> None:
    """Raise UnknownLayerError unless the run recorded the layer, naming the layers it did record."""
    if layer_id not in store.run_layer_ids(run.run_id).values():
        name = store.get_layer_by_id(layer_id).name
        raise UnknownLayerError(
            f"run {run.run_id} did not record layer {name!r}; it recorded "
            f"{', '.join(run.layers) or 'no layer'}"
        )


def read_channel_values(store: Store, run_id: int, layer_id: int, channel: int,
                        start: int = 0, stop: int | None = None) -> np.ndarray:
    """Return the activations of one channel for steps [start, stop) of a run, shape (n,)."""
    block = store.read_activations(run_id, layer_id, start, stop)  # (n, width)
    if not 0 <= channel < block.shape[1]:
        raise InvalidArgumentError(
            f"channel {channel} is out of range for a layer of {block.shape[1]} channels"
        )
    return block[:, channel].copy()


def read_channel_timeline(
    store: Store,
    run_id: int,
    layer_id: int,
    channel: int,
    *,
    start: int = 0,
    limit: int = 100,
    variables: Sequence[str] | None = None,
) -> ChannelTimeline:
    """Return up to `limit` steps from `start` with the channel's value and the chosen variables.

    `variables` defaults to all the run recorded; an unknown name lists the known ones.
    """
    if not 1 <= limit <= MAX_TIMELINE_STEPS:
        raise InvalidArgumentError(f"limit must be between 1 and {MAX_TIMELINE_STEPS}, got {limit}")
    run = store.get_run(run_id)
    check_recorded(store, run, layer_id)
    columns = _variable_columns(run, variables)
    values = read_channel_values(store, run_id, layer_id, channel, start, start + limit)
    context = store.read_step_range(run_id, start, start + limit)
    n = min(values.shape[0], context.n_steps)
    steps = [
        TimelineStep(
            step=start + i, episode=int(context.episode[i]), t=int(context.t[i]),
            value=finite_or_none(values[i]), terminated=bool(context.terminated[i]),
            truncated=bool(context.truncated[i]),
            variables={name: finite_or_none(context.variables[i, col]) for name, col in columns},
        )
        for i in range(n)
    ]
    following = start + n
    return ChannelTimeline(run_id, layer_id, channel, start, steps, run.n_steps,
                           following if n == limit and following < run.n_steps else None)


def _variable_columns(run: RunRecord, variables: Sequence[str] | None) -> list[tuple[str, int]]:
    if variables is None:
        return list(zip(run.variables, range(len(run.variables))))
    unknown = [name for name in variables if name not in run.variables]
    if unknown:
        raise InvalidArgumentError(
            f"run {run.run_id} has no variables {unknown}; it recorded {', '.join(run.variables)}"
        )
    return [(name, run.variables.index(name)) for name in dict.fromkeys(variables)]


def read_step_contexts(store: Store, run_id: int, steps: Sequence[int]) -> dict[int, StepContext]:
    """Return the context of several steps of one run, reading each stored chunk once."""
    run = store.get_run(run_id)
    window = max(run.chunk_steps, 1)
    found: dict[int, StepContext] = {}
    for first in sorted({step // window * window for step in steps}):
        chunk = store.read_step_range(run_id, first, first + window)
        for step in steps:
            i = step - chunk.step_start
            if 0 <= i < chunk.n_steps:
                found[step] = StepContext(
                    run_id=run_id, step=step, episode=int(chunk.episode[i]), t=int(chunk.t[i]),
                    terminated=bool(chunk.terminated[i]), truncated=bool(chunk.truncated[i]),
                    variables={name: float(v) for name, v in zip(run.variables, chunk.variables[i])},
                )
    return found
