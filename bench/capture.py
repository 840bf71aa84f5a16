"""Benchmark the cost of recording activations during a CartPole rollout.

Prints, from one run on this machine, steps/s of:
  unhooked  the built-in CartPole policy acting in CartPole-v1, nothing recorded;
  hooked    `record_rollout` into a SQLite store, both hidden layers, :pre and :post (4 points,
            256 values per step), with the per-step context;
  naive     the same capture written as one JSON row per channel per step, one commit per row;
and the ratios unhooked/hooked (target: hooked costs at most 1.3x) and hooked/naive (target: at
least 1000x faster). Each of unhooked and hooked is the median of --repeats runs.

Usage: python bench/capture.py [--steps 20000] [--repeats 3] [--naive-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import torch

from interlatent_mcp.capture import load_policy, make_env, record_rollout
from interlatent_mcp.capture.hooks import capture
from interlatent_mcp.capture.rollout import describe_layers
from interlatent_mcp.store import Store

LAYERS = ["act1:pre", "act1:post", "act2:pre", "act2:post"]


def unhooked_steps_per_second(policy, steps: int) -> float:
    env = make_env("CartPole-v1")
    episode = 0
    obs, _ = env.reset(seed=episode)
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(steps):
            obs, _reward, terminated, truncated, _info = env.step(policy.act(obs))
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=episode)
    elapsed = time.perf_counter() - started
    env.close()
    return steps / elapsed


def hooked_steps_per_second(policy, steps: int, directory: Path, index: int) -> float:
    with Store(directory / f"hooked-{index}.sqlite") as store:
        run = record_rollout(store, policy, steps=steps, layers=LAYERS, seed=0)
        return run.n_steps / run.duration_s


def naive_steps_per_second(policy, seconds: float, directory: Path) -> float:
    """Record one JSON row per channel per step, committing each row, for about `seconds`."""
    # SQLite's defaults (rollback journal, synchronous=FULL), as a first prototype would use them.
    conn = sqlite3.connect(directory / "naive.sqlite")
    conn.execute("CREATE TABLE activations (step INTEGER, layer TEXT, channel INTEGER, row TEXT)")
    env = make_env("CartPole-v1")
    obs, _ = env.reset(seed=0)
    widths = describe_layers(policy)
    steps = 0
    started = time.perf_counter()
    with torch.inference_mode(), capture(policy.module, LAYERS, widths, 1) as recorder:
        while time.perf_counter() - started < seconds:
            action = policy.act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            for layer, block in recorder.take(1).items():
                for channel, value in enumerate(block[0].tolist()):
                    row = json.dumps({"value": value, "obs": obs.tolist(), "reward": reward,
                                      "action": int(action)})
                    conn.execute("INSERT INTO activations VALUES (?, ?, ?, ?)",
                                 (steps, layer, channel, row))
                    conn.commit()
            steps += 1
            if terminated or truncated:
                obs, _ = env.reset()
    elapsed = time.perf_counter() - started
    env.close()
    conn.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="steps per timed rollout")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts per variant")
    parser.add_argument("--naive-seconds", type=float, default=10.0,
                        help="how long the naive recorder runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = load_policy("cartpole-ppo")
    describe_layers(policy)
    unhooked_steps_per_second(policy, 2000)  # warm-up: imports, allocator, branch caches

    unhooked, hooked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for index in range(args.repeats):
            # Interleave the variants so that a burst of load elsewhere hits both.
            unhooked.append(unhooked_steps_per_second(policy, args.steps))
            hooked.append(hooked_steps_per_second(policy, args.steps, directory, index))
        naive = naive_steps_per_second(policy, args.naive_seconds, directory)

    unhooked_rate, hooked_rate = statistics.median(unhooked), statistics.median(hooked)
    print(f"unhooked rollout      {unhooked_rate:>10.0f} steps/s  (runs: "
          f"{', '.join(f'{r:.0f}' for r in unhooked)})")
    print(f"hooked, 4 points      {hooked_rate:>10.0f} steps/s  (runs: "
          f"{', '.join(f'{r:.0f}' for r in hooked)})")
    print(f"naive JSON per value  {naive:>10.1f} steps/s")
    print(f"hooked cost: unhooked/hooked = {unhooked_rate / hooked_rate:.2f}x (target <= 1.30)")
    print(f"hooked vs naive: {hooked_rate / naive:.0f}x faster (target >= 1000)")


if __name__ == "__main__":
    main()
