"""The demo policies shipped inside the package, and their registry.

Each entry names an environment, a small torch module and a weights-only state dict under
`capture/weights/`, trained by `scripts/train_demo_policies.py`. `load_builtin` rebuilds the
module and loads the weights with `torch.load(..., weights_only=True)`, so no pickled code runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from interlatent_mcp.errors import UnknownPolicyError, closest_names

WEIGHTS_PACKAGE = "interlatent_mcp.capture.weights"


@dataclass(frozen=True)
class BuiltinPolicySpec:
    """How to rebuild one shipped policy."""

    name: str
    env_id: str
    description: str
    weights_file: str
    hidden_sizes: tuple[int, ...]
    default_layers: tuple[str, ...]
    env_kwargs: dict[str, Any] = field(default_factory=dict)


BUILTIN_POLICIES: dict[str, BuiltinPolicySpec] = {
    spec.name: spec
    for spec in (
        BuiltinPolicySpec(
            name="cartpole-ppo",
            env_id="CartPole-v1",
            description=(
                "PPO actor for CartPole-v1: 4 observations -> 64 ReLU -> 64 ReLU -> 2 action "
                "logits; greedy actions reach the 500-step limit."
            ),
            weights_file="cartpole_ppo.pt",
            hidden_sizes=(64, 64),
            default_layers=("act1:pre", "act1:post", "act2:pre", "act2:post"),
        ),
    )
}


def build_mlp(n_inputs: int, hidden_sizes: tuple[int, ...], n_outputs: int) -> Any:
    """Build the demo policies' MLP with named modules fc1, act1, ..., logits."""
    from collections import OrderedDict

    import torch.nn as nn

    modules: OrderedDict[str, nn.Module] = OrderedDict()
    width = n_inputs
    for index, hidden in enumerate(hidden_sizes, start=1):
        modules[f"fc{index}"] = nn.Linear(width, hidden)
        modules[f"act{index}"] = nn.ReLU()
        width = hidden
    modules["logits"] = nn.Linear(width, n_outputs)
    return nn.Sequential(modules)


def get_builtin_spec(name: str) -> BuiltinPolicySpec:
    try:
        return BUILTIN_POLICIES[name]
    except KeyError:
        hint = closest_names(name, list(BUILTIN_POLICIES))
        raise UnknownPolicyError(
            f"no built-in policy named {name!r}; built-in policies: "
            f"{', '.join(BUILTIN_POLICIES)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + "; a Stable-Baselines3 policy is given by the path of its .zip file"
        ) from None


def weights_path(spec: BuiltinPolicySpec) -> Path:
    return Path(str(resources.files(WEIGHTS_PACKAGE).joinpath(spec.weights_file)))


def training_record(spec: BuiltinPolicySpec) -> dict[str, Any]:
    """Return what the training script measured for a shipped policy (returns, steps, seed)."""
    path = weights_path(spec).with_suffix(".json")
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def load_builtin(name: str) -> Any:
    """Rebuild a shipped policy as a TorchPolicy with its weights loaded."""
    import gymnasium as gym
    import torch

    from interlatent_mcp.capture.policies import TorchPolicy

    spec = get_builtin_spec(name)
    path = weights_path(spec)
    if not path.exists():
        raise UnknownPolicyError(
            f"the weights of built-in policy {name!r} are missing at {path}; reinstall the "
            f"package or run scripts/train_demo_policies.py"
        )
    env = gym.make(spec.env_id, **spec.env_kwargs)
    try:
        n_inputs = int(env.observation_space.shape[0])
        n_outputs = int(env.action_space.n)
        module = build_mlp(n_inputs, spec.hidden_sizes, n_outputs)
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        module.eval()
        return TorchPolicy(
            module,
            observation_space=env.observation_space,
            action_space=env.action_space,
            name=spec.name,
            kind="builtin",
            source=f"builtin:{spec.name}",
            default_layers=spec.default_layers,
            env_id=spec.env_id,
        )
    finally:
        env.close()
