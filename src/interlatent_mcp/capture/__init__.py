"""Policies, hook points and recorded rollouts in Gymnasium environments."""

from interlatent_mcp.capture.builtin import BUILTIN_POLICIES, load_builtin
from interlatent_mcp.capture.envs import describe_env, list_envs, make_env, observation_names
from interlatent_mcp.capture.hooks import capture, list_hook_points, parse_layer_name
from interlatent_mcp.capture.metrics import EpisodeAccumulator, StepMetric, episode_return
from interlatent_mcp.capture.policies import Policy, SB3Policy, TorchPolicy, load_policy, load_sb3
from interlatent_mcp.capture.rollout import describe_layers, record_rollout, register_policy

__all__ = [
    "BUILTIN_POLICIES",
    "EpisodeAccumulator",
    "Policy",
    "SB3Policy",
    "StepMetric",
    "TorchPolicy",
    "capture",
    "describe_env",
    "describe_layers",
    "episode_return",
    "list_envs",
    "list_hook_points",
    "load_builtin",
    "load_policy",
    "load_sb3",
    "make_env",
    "observation_names",
    "parse_layer_name",
    "record_rollout",
    "register_policy",
]
