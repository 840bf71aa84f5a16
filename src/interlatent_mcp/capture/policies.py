"""Policy adapters: a torch module plus the code that turns an observation into an action.

`Policy.module` is the `torch.nn.Module` whose submodules are hook points; `Policy.act` runs one
forward pass on a single observation (so every hook fires once per step) and returns an action
the environment accepts.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from interlatent_mcp.errors import SpaceMismatchError, UnknownPolicyError

logger = logging.getLogger(__name__)


def describe_space(space: Any) -> str:
    """Return a short, stable text form of a Gymnasium space, e.g. 'Box(-inf, inf, (4,), float32)'."""
    return str(space)


class Policy:
    """Base adapter. Subclasses set the attributes and implement `forward_action`."""

    module: nn.Module
    observation_space: Any
    action_space: Any
    name: str
    kind: str
    source: str
    default_layers: tuple[str, ...] = ()
    env_id: str | None = None

    def obs_to_tensor(self, obs: Any) -> torch.Tensor:
        """Turn one observation into a batch of one for the module."""
        return torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0)

    def forward_action(self, obs_tensor: torch.Tensor) -> Any:
        """Run the module on a batch of one and return the environment action."""
        raise NotImplementedError

    def act(self, obs: Any) -> Any:
        """Return the action for one observation (one forward pass, so hooks fire once)."""
        return self.forward_action(self.obs_to_tensor(obs))

    def fingerprint(self) -> str:
        """Return a SHA-256 of the module's state dict, so identical weights share a record."""
        digest = hashlib.sha256()
        for key, value in sorted(self.module.state_dict().items()):
            digest.update(key.encode())
            buffer = io.BytesIO()
            np.save(buffer, value.detach().cpu().numpy(), allow_pickle=False)
            digest.update(buffer.getvalue())
        return digest.hexdigest()

    def sample_observation(self) -> Any:
        """Return a reproducible observation from the observation space, for probing shapes."""
        space = self.observation_space
        space.seed(0)
        sample = space.sample()
        if isinstance(sample, np.ndarray) and np.issubdtype(sample.dtype, np.floating):
            # Unbounded Box spaces sample huge values; probe with finite, moderate numbers.
            sample = np.clip(np.nan_to_num(sample), -1.0, 1.0).astype(sample.dtype)
        return sample

    def check_spaces(self, env: Any) -> None:
        """Raise SpaceMismatchError unless the env's spaces fit this policy's, naming both."""
        _check_space("action", self.action_space, env.action_space, self.name, env)
        _check_space("observation", self.observation_space, env.observation_space, self.name, env)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, source={self.source!r})"


def _check_space(kind: str, policy_space: Any, env_space: Any, name: str, env: Any) -> None:
    import gymnasium.spaces as spaces

    fits = type(policy_space) is type(env_space)
    if fits and isinstance(env_space, spaces.Discrete):
        fits = int(policy_space.n) == int(env_space.n)
    elif fits and isinstance(env_space, spaces.Box):
        fits = tuple(policy_space.shape) == tuple(env_space.shape)
    elif fits and isinstance(env_space, spaces.MultiDiscrete):
        fits = tuple(policy_space.nvec) == tuple(env_space.nvec)
    if not fits:
        env_id = getattr(getattr(env, "spec", None), "id", "the environment")
        raise SpaceMismatchError(
            f"policy {name!r} has {kind} space {describe_space(policy_space)} but {env_id} has "
            f"{kind} space {describe_space(env_space)}; choose an environment this policy was "
            f"trained on"
        )


class TorchPolicy(Policy):
    """A plain torch module mapping a batch of observations to discrete logits or continuous actions.

    With a Discrete action space the output is treated as logits (or Q-values) and the greedy
    action is taken; with a Box space the output is the action, clipped to the space's bounds.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        observation_space: Any,
        action_space: Any,
        name: str | None = None,
        kind: str = "torch",
        source: str | None = None,
        default_layers: Sequence[str] = (),
        env_id: str | None = None,
    ) -> None:
        import gymnasium.spaces as spaces

        if not isinstance(action_space, (spaces.Discrete, spaces.Box)):
            raise SpaceMismatchError(
                f"TorchPolicy supports Discrete and Box action spaces, not {action_space}"
            )
        self.module = module.eval()
        self.observation_space = observation_space
        self.action_space = action_space
        self.name = name or type(module).__name__
        self.kind = kind
        self.source = source or f"python:{type(module).__module__}.{type(module).__qualname__}"
        self.default_layers = tuple(default_layers)
        self.env_id = env_id
        self._discrete = isinstance(action_space, spaces.Discrete)
        if not self._discrete:
            self._low = np.asarray(action_space.low, dtype=np.float32)
            self._high = np.asarray(action_space.high, dtype=np.float32)

    def forward_action(self, obs_tensor: torch.Tensor) -> Any:
        output = self.module(obs_tensor)
        if self._discrete:
            return int(output.argmax(dim=-1)[0])
        return np.clip(output[0].numpy(), self._low, self._high)


SB3Algorithm = Literal["PPO", "A2C", "DQN", "SAC", "TD3"]
_SB3_ALGORITHMS = ("PPO", "A2C", "DQN", "SAC", "TD3")


class SB3Policy(Policy):
    """A Stable-Baselines3 model loaded from its .zip; the hook root is `model.policy`.

    PPO and A2C policies return (actions, values, log_prob) from their forward pass, so the value
    head fires too; DQN and SAC return actions only (DQN's Q-values come from `q_net`).
    Observations go through the policy's own preprocessing (`obs_to_tensor`).
    """

    def __init__(self, model: Any, *, name: str, source: str, env_id: str | None = None) -> None:
        self.model = model
        self.module = model.policy.eval()
        self.observation_space = model.observation_space
        self.action_space = model.action_space
        self.name = name
        self.kind = f"sb3-{type(model).__name__.lower()}"
        self.source = source
        self.env_id = env_id
        self.algorithm = type(model).__name__

    def obs_to_tensor(self, obs: Any) -> torch.Tensor:
        tensor, _ = self.module.obs_to_tensor(obs)
        return tensor

    def forward_action(self, obs_tensor: torch.Tensor) -> Any:
        import gymnasium.spaces as spaces

        output = self.module(obs_tensor, deterministic=True)
        actions = output[0] if isinstance(output, tuple) else output
        actions = actions.cpu().numpy().reshape((-1, *self.action_space.shape))[0]
        if isinstance(self.action_space, spaces.Box):
            if getattr(self.module, "squash_output", False):
                actions = self.module.unscale_action(actions)
            else:
                actions = np.clip(actions, self.action_space.low, self.action_space.high)
            return actions
        if isinstance(self.action_space, spaces.Discrete):
            return int(actions)
        return actions


def load_sb3(path: str | Path, *, algorithm: SB3Algorithm | None = None) -> SB3Policy:
    """Load a Stable-Baselines3 model from its .zip; the algorithm is read from the file if not given."""
    path = Path(path)
    if not path.exists():
        raise UnknownPolicyError(
            f"policy file {str(path)!r} does not exist; give the path of a Stable-Baselines3 .zip "
            f"or a built-in policy name (see `interlatent policies`)"
        )
    try:
        import stable_baselines3 as sb3
    except ImportError as e:
        raise UnknownPolicyError(
            "loading a .zip policy needs stable-baselines3; install it with "
            "pip install 'interlatent-mcp[sb3]'"
        ) from e
    candidates = [algorithm] if algorithm else _likely_algorithms(path)
    errors = []
    for candidate in candidates:
        if candidate not in _SB3_ALGORITHMS:
            raise UnknownPolicyError(
                f"algorithm {candidate!r} is not supported; choose one of {_SB3_ALGORITHMS}"
            )
        cls = getattr(sb3, candidate)
        try:
            model = cls.load(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - SB3 raises many types for a class mismatch
            errors.append(f"{candidate}: {type(e).__name__}")
            continue
        return SB3Policy(model, name=path.stem, source=str(path.resolve()))
    raise UnknownPolicyError(
        f"{str(path)!r} is not a Stable-Baselines3 model of {', '.join(candidates)} "
        f"({'; '.join(errors)})"
    )


def _likely_algorithms(path: Path) -> list[str]:
    """Order the supported algorithms with the one the file's saved parameters point to first.

    PPO.load also accepts an A2C file, because both use ActorCriticPolicy, so the first class that
    loads does not prove the algorithm. In stable-baselines3 2.x PPO saves `clip_range` and A2C
    saves `vf_coef` without it.
    """
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            keys = set(json.loads(archive.read("data")))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return list(_SB3_ALGORITHMS)
    if "vf_coef" in keys and "clip_range" not in keys:
        return ["A2C", *(name for name in _SB3_ALGORITHMS if name != "A2C")]
    return list(_SB3_ALGORITHMS)


def load_policy(spec: str | Path | Policy) -> Policy:
    """Resolve a policy given as a built-in name, a path to an SB3 .zip, or a Policy instance."""
    from interlatent_mcp.capture.builtin import BUILTIN_POLICIES, load_builtin

    if isinstance(spec, Policy):
        return spec
    text = str(spec)
    if text.startswith("builtin:"):
        text = text.removeprefix("builtin:")
    if text in BUILTIN_POLICIES:
        return load_builtin(text)
    if text.endswith(".zip") or Path(text).exists():
        return load_sb3(text)
    from interlatent_mcp.capture.builtin import get_builtin_spec

    get_builtin_spec(text)  # raises with the list of built-in names and a "did you mean"
    raise AssertionError("unreachable")
