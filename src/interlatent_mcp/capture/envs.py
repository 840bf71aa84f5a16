"""Gymnasium environments: creation with clear errors, and names for observation components."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from interlatent_mcp.errors import InvalidArgumentError, UnknownEnvironmentError, closest_names

logger = logging.getLogger(__name__)

# Flat observations with up to this many components are stored per step as variables. Larger
# ones (images, grids) are not, because a variable per pixel is neither useful nor cheap.
MAX_OBSERVATION_VARIABLES = 64

# Names of the observation components, from each environment's Gymnasium documentation.
OBSERVATION_NAMES: dict[str, tuple[str, ...]] = {
    "CartPole": ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
    "MountainCar": ("car_position", "car_velocity"),
    "MountainCarContinuous": ("car_position", "car_velocity"),
    "Acrobot": (
        "cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2",
        "theta1_angular_velocity", "theta2_angular_velocity",
    ),
    "Pendulum": ("cos_theta", "sin_theta", "angular_velocity"),
    "LunarLander": (
        "x", "y", "x_velocity", "y_velocity", "angle", "angular_velocity",
        "left_leg_contact", "right_leg_contact",
    ),
}


@dataclass(frozen=True)
class EnvInfo:
    """Description of one environment id: its spaces and observation names."""

    env_id: str
    observation_names: tuple[str, ...] | None
    observation_space: str
    action_space: str


def _base_name(env_id: str) -> str:
    """'CartPole-v1' -> 'CartPole'; 'ALE/Pong-v5' -> 'Pong'."""
    return env_id.rsplit("/", 1)[-1].rsplit("-v", 1)[0]


def observation_names(env_id: str, observation_space: Any) -> list[str] | None:
    """Return one variable name per observation component, or None when obs are not stored.

    Known environments get their documented names; other flat Box spaces get obs_0, obs_1, ...
    """
    import gymnasium.spaces as spaces

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        return None
    size = int(observation_space.shape[0])
    known = OBSERVATION_NAMES.get(_base_name(env_id))
    if known is not None and len(known) == size:
        return list(known)
    if size > MAX_OBSERVATION_VARIABLES:
        return None
    return [f"obs_{i}" for i in range(size)]


def action_names(action_space: Any) -> list[str]:
    """Return the variable names of an action: 'action' for a scalar, action_0... for a vector."""
    import gymnasium.spaces as spaces

    if isinstance(action_space, spaces.Discrete):
        return ["action"]
    size = int(np.prod(action_space.shape)) if action_space.shape else 1
    return ["action"] if size == 1 else [f"action_{i}" for i in range(size)]


def registered_env_ids() -> list[str]:
    import gymnasium as gym

    return sorted(gym.envs.registry.keys())


def make_env(env_id: str, **env_kwargs: Any) -> Any:
    """Create a Gymnasium environment; an unknown id names close matches."""
    import gymnasium as gym

    _import_optional_env_packages(env_id)
    if env_id not in gym.envs.registry:
        hint = closest_names(env_id, registered_env_ids())
        raise UnknownEnvironmentError(
            f"environment {env_id!r} is not registered with Gymnasium"
            + (f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else "")
            + "; list environments with `interlatent envs`"
        )
    try:
        return gym.make(env_id, **env_kwargs)
    except TypeError as e:
        raise InvalidArgumentError(f"invalid keyword arguments for {env_id}: {e}") from e
    except gym.error.Error as e:
        raise InvalidArgumentError(f"could not create {env_id}: {e}") from e


def _import_optional_env_packages(env_id: str) -> None:
    """Import the package that registers an id's namespace, when it is installed."""
    modules = {"ALE/": "ale_py", "MiniGrid-": "minigrid", "BabyAI-": "minigrid"}
    for prefix, module in modules.items():
        if env_id.startswith(prefix):
            try:
                __import__(module)
            except ImportError:
                logger.debug("%s is not installed, so %s environments are unavailable", module, prefix)


def describe_env(env_id: str) -> EnvInfo:
    """Create the environment once and describe its spaces and named components."""
    env = make_env(env_id)
    try:
        names = observation_names(env_id, env.observation_space)
        return EnvInfo(env_id, tuple(names) if names else None, str(env.observation_space),
                       str(env.action_space))
    finally:
        env.close()


def list_envs(prefix: str | None = None) -> list[str]:
    """Return registered environment ids, optionally those starting with `prefix`."""
    ids = registered_env_ids()
    return [env_id for env_id in ids if prefix is None or env_id.startswith(prefix)]
