"""Train the demo policies shipped with interlatent and write their weights into the package.

Usage: python scripts/train_demo_policies.py [--seed 0] [--timesteps 100000]

Trains PPO (Stable-Baselines3) on CartPole-v1 with a ReLU actor of two 64-unit layers, copies the
actor into the package's plain torch MLP (`interlatent_mcp.capture.builtin.build_mlp`), checks
that greedy actions reach a mean return of at least 475 over 20 evaluation episodes, and saves a
weights-only state dict plus a JSON record of the training and evaluation.
PPO hyperparameters follow the rl-baselines3-zoo settings for CartPole-v1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from interlatent_mcp.capture.builtin import BUILTIN_POLICIES, build_mlp, weights_path

REQUIRED_MEAN_RETURN = 475.0
EVAL_EPISODES = 20


def linear_schedule(initial: float):
    return lambda progress_remaining: progress_remaining * initial


def copy_actor(model: PPO, hidden_sizes: tuple[int, ...]) -> nn.Module:
    """Copy the SB3 actor (policy_net Linear layers + action_net) into build_mlp's module."""
    policy_linears = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    module = build_mlp(4, hidden_sizes, 2)
    for index, source in enumerate(policy_linears, start=1):
        getattr(module, f"fc{index}").load_state_dict(source.state_dict())
    module.logits.load_state_dict(model.policy.action_net.state_dict())
    return module.eval()


def evaluate(module: nn.Module, episodes: int, seed: int) -> list[float]:
    """Run greedy episodes with paired seeds seed, seed+1, ... and return their returns."""
    env = gym.make("CartPole-v1")
    returns = []
    with torch.inference_mode():
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                logits = module(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))
                obs, reward, terminated, truncated, _ = env.step(int(logits.argmax(dim=1)))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    env.close()
    return returns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--timesteps", type=int, default=100_000, help="PPO environment steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = BUILTIN_POLICIES["cartpole-ppo"]

    started = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = PPO(
        "MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
        ent_coef=0.0, learning_rate=linear_schedule(1e-3), clip_range=linear_schedule(0.2),
        policy_kwargs=dict(net_arch=dict(pi=list(spec.hidden_sizes), vf=[64, 64]),
                           activation_fn=nn.ReLU),
        seed=args.seed, device="cpu", verbose=0,
    )
    model.learn(total_timesteps=args.timesteps)
    train_seconds = time.perf_counter() - started

    module = copy_actor(model, spec.hidden_sizes)
    returns = evaluate(module, EVAL_EPISODES, seed=10_000)
    mean_return = float(np.mean(returns))
    print(f"trained {args.timesteps} steps in {train_seconds:.1f} s; greedy mean return over "
          f"{EVAL_EPISODES} episodes: {mean_return:.1f} (min {min(returns):.0f})")
    if mean_return < REQUIRED_MEAN_RETURN:
        print(f"mean return {mean_return:.1f} is below {REQUIRED_MEAN_RETURN}; try another --seed "
              f"or more --timesteps", file=sys.stderr)
        return 1

    path = weights_path(spec)
    torch.save(module.state_dict(), path)
    record = {
        "env_id": spec.env_id, "algorithm": "PPO (stable-baselines3)", "seed": args.seed,
        "timesteps": args.timesteps, "train_seconds": round(train_seconds, 1),
        "eval_episodes": EVAL_EPISODES, "eval_seeds": [10_000, 10_000 + EVAL_EPISODES - 1],
        "eval_mean_return": mean_return, "eval_min_return": float(min(returns)),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
