"""User metrics recorded with every step, beside the observation, action and reward.

A `StepMetric` is a function of one step. An `EpisodeAccumulator` folds the steps of an episode
into a running value, which is recorded at every step; its final value is stored with the episode.
Both receive the observation the policy acted on, and the reward and info that `env.step`
returned for that action.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from interlatent_mcp.errors import InvalidArgumentError

RESERVED_NAMES = frozenset({"reward", "t", "episode", "action", "step"})


@dataclass(frozen=True)
class StepMetric:
    """A per-step variable: `fn(obs, reward, info) -> float`."""

    name: str
    fn: Callable[[Any, float, dict[str, Any]], float]


@dataclass(frozen=True)
class EpisodeAccumulator:
    """A running per-episode variable: `update(value, obs, reward, info) -> new value`.

    The value starts at `initial` at every reset; the recorded value at a step includes that step.
    """

    name: str
    update: Callable[[float, Any, float, dict[str, Any]], float]
    initial: float = 0.0


def episode_return() -> EpisodeAccumulator:
    """The undiscounted return so far in the episode, as an accumulator named 'return_so_far'."""
    return EpisodeAccumulator("return_so_far", lambda value, _obs, reward, _info: value + reward)


def validate_metric_names(
    metrics: Sequence[StepMetric | EpisodeAccumulator], taken: Sequence[str]
) -> list[str]:
    """Return the metrics' names after checking they are identifiers, unique and not reserved."""
    names = []
    for metric in metrics:
        name = metric.name
        if not name.isidentifier():
            raise InvalidArgumentError(
                f"metric name {name!r} must be a Python identifier (letters, digits, underscores), "
                f"so that predicates can refer to it"
            )
        if name in RESERVED_NAMES or name in taken or name in names:
            raise InvalidArgumentError(
                f"metric name {name!r} is already used by another variable; variables so far: "
                f"{', '.join([*taken, *names])}"
            )
        names.append(name)
    return names
