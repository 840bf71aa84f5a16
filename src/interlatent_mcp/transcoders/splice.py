"""Splice-in fidelity: the policy acting with a layer replaced by a coder's reconstruction.

This is the reinforcement-learning counterpart of the "loss recovered" measure of language-model
transcoders. The spliced policy runs in its environment with the same episode seeds as the
original (episode e is reset with seed + e, as `record_rollout` does). The result compares mean
returns and, at every state the spliced policy visits, whether the original policy would have
taken the same action.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from interlatent_mcp.capture.envs import make_env
from interlatent_mcp.capture.hooks import HookPoint, parse_layer_name
from interlatent_mcp.capture.policies import Policy
from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError
from interlatent_mcp.transcoders.model import SparseCoder

logger = logging.getLogger(__name__)

MAX_SPLICE_EPISODES = 1000


class SpliceHandle:
    """The state of an installed splice: `bypassed()` runs the original module for a while."""

    def __init__(self) -> None:
        self.enabled = True
        self.replacements = 0

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        previous = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = previous


def _replace_first(value: Any, replacement: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return replacement
    return (replacement, *value[1:])


def _first(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value[0]


def _reconstruct(coder: SparseCoder, source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return the coder's reconstruction from `source`, shaped and typed like `like`."""
    y_hat, _ = coder(source.reshape(source.shape[0], -1).to(torch.float32))
    return y_hat.reshape(like.shape).to(like.dtype)


@contextmanager
def splice(module: nn.Module, coder: SparseCoder, input_layer: str,
           output_layer: str) -> Iterator[SpliceHandle]:
    """Replace `output_layer` of `module` by `coder` applied to `input_layer`; undo it on exit.

    An autoencoder (input_layer == output_layer) replaces that point by its reconstruction; a
    transcoder replaces a `:post` point by its reconstruction from the input point, which must
    be computed earlier in the forward pass.
    """
    source, target = parse_layer_name(input_layer), parse_layer_name(output_layer)
    modules = dict(module.named_modules())
    for point in (source, target):
        if point.module_path not in modules or not point.module_path:
            raise UnknownLayerError(
                f"layer {point.name!r} is not a module of the policy; known modules: "
                f"{', '.join(name for name in modules if name)}"
            )
    if target.point == "pre" and source != target:
        raise InvalidArgumentError(
            f"a transcoder must replace a module output (':post'), not {target.name!r}"
        )
    coder.eval()
    handle = SpliceHandle()
    removers = []
    try:
        removers.extend(_install(modules, coder, source, target, handle))
        yield handle
    finally:
        for remover in removers:
            remover.remove()


def _install(modules: Mapping[str, nn.Module], coder: SparseCoder, source: HookPoint,
             target: HookPoint, handle: SpliceHandle) -> list[Any]:
    if target.point == "pre":
        def replace_input(_module: nn.Module, args: tuple) -> tuple | None:
            if not handle.enabled:
                return None
            handle.replacements += 1
            return (_reconstruct(coder, args[0], args[0]), *args[1:])
        return [modules[target.module_path].register_forward_pre_hook(replace_input)]

    captured: list[torch.Tensor] = []
    removers = []
    same_module = source.module_path == target.module_path
    if not same_module:
        def capture_source(_module: nn.Module, inputs: tuple, output: Any) -> None:
            captured[:] = [inputs[0] if source.point == "pre" else _first(output)]
        removers.append(modules[source.module_path].register_forward_hook(capture_source))

    def replace_output(_module: nn.Module, inputs: tuple, output: Any) -> Any:
        if not handle.enabled:
            return None
        if same_module:
            x = inputs[0] if source.point == "pre" else _first(output)
        elif captured:
            x = captured[0]
        else:
            raise InvalidArgumentError(
                f"{target.name} ran before {source.name} in the forward pass; a transcoder's "
                f"input must be computed before its output"
            )
        handle.replacements += 1
        return _replace_first(output, _reconstruct(coder, x, _first(output)))

    removers.append(modules[target.module_path].register_forward_hook(replace_output))
    return removers


@dataclass(frozen=True)
class SpliceFidelity:
    """The spliced policy against the original on the same episode seeds."""

    env_id: str
    episodes: int
    seed: int
    original_returns: list[float]
    spliced_returns: list[float]
    original_mean_return: float
    spliced_mean_return: float
    return_ratio: float | None
    """Spliced mean return / original mean return; None unless the original mean is positive."""
    action_agreement: float
    """Fraction of the spliced rollout's states where both policies choose the same action
    (continuous actions: every component within `action_tolerance`)."""
    mean_action_distance: float
    """Mean Euclidean distance between the two actions over the same states; for discrete
    actions 0 when equal and 1 when not."""
    n_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_splice_fidelity(policy: Policy, coder: SparseCoder, input_layer: str,
                            output_layer: str, *, env_id: str | None = None,
                            env_kwargs: Mapping[str, Any] | None = None, episodes: int = 10,
                            seed: int = 0, action_tolerance: float = 1e-2,
                            max_episode_steps: int = 100_000) -> SpliceFidelity:
    """Run `episodes` original and `episodes` spliced episodes with paired seeds and compare.

    An episode that neither terminates nor is truncated by the environment is cut after
    `max_episode_steps` steps.
    """
    if not 1 <= episodes <= MAX_SPLICE_EPISODES:
        raise InvalidArgumentError(
            f"episodes must be between 1 and {MAX_SPLICE_EPISODES}; got {episodes}")
    env_id = env_id or policy.env_id
    if env_id is None:
        raise InvalidArgumentError(f"policy {policy.name!r} has no default environment; give env_id")
    env = make_env(env_id, **dict(env_kwargs or {}))
    try:
        policy.check_spaces(env)
        with torch.inference_mode():
            original = [_run_episode(env, policy, seed + e, None, action_tolerance,
                                     max_episode_steps)
                        for e in range(episodes)]
            with splice(policy.module, coder, input_layer, output_layer) as handle:
                spliced = [_run_episode(env, policy, seed + e, handle, action_tolerance,
                                        max_episode_steps)
                           for e in range(episodes)]
    finally:
        env.close()
    return _summarise(env_id, seed, original, spliced)


@dataclass
class _EpisodeResult:
    episode_return: float
    steps: int
    agreements: int
    distance_sum: float


def _run_episode(env: Any, policy: Policy, seed: int, handle: SpliceHandle | None,
                 tolerance: float, max_steps: int) -> _EpisodeResult:
    obs, _info = env.reset(seed=seed)
    result = _EpisodeResult(0.0, 0, 0, 0.0)
    while True:
        if handle is not None:
            with handle.bypassed():
                reference = policy.act(obs)
        action = policy.act(obs)
        if handle is not None:
            agrees, distance = _compare_actions(action, reference, tolerance)
            result.agreements += agrees
            result.distance_sum += distance
        obs, reward, terminated, truncated, _info = env.step(action)
        result.episode_return += float(reward)
        result.steps += 1
        if terminated or truncated or result.steps >= max_steps:
            return result


def _compare_actions(action: Any, reference: Any, tolerance: float) -> tuple[bool, float]:
    """Return whether two actions agree and their distance (0 or 1 for discrete actions)."""
    a, b = np.asarray(action), np.asarray(reference)
    if a.ndim == 0 and np.issubdtype(a.dtype, np.integer):
        return bool(a == b), float(a != b)
    difference = a.astype(np.float64) - b.astype(np.float64)
    return bool(np.all(np.abs(difference) <= tolerance)), float(np.linalg.norm(difference))


def _summarise(env_id: str, seed: int, original: list[_EpisodeResult],
               spliced: list[_EpisodeResult]) -> SpliceFidelity:
    original_mean = float(np.mean([r.episode_return for r in original]))
    spliced_mean = float(np.mean([r.episode_return for r in spliced]))
    n_steps = sum(r.steps for r in spliced)
    return SpliceFidelity(
        env_id=env_id, episodes=len(original), seed=seed,
        original_returns=[r.episode_return for r in original],
        spliced_returns=[r.episode_return for r in spliced],
        original_mean_return=original_mean, spliced_mean_return=spliced_mean,
        return_ratio=spliced_mean / original_mean if original_mean > 0 else None,
        action_agreement=sum(r.agreements for r in spliced) / max(n_steps, 1),
        mean_action_distance=sum(r.distance_sum for r in spliced) / max(n_steps, 1),
        n_steps=n_steps,
    )
