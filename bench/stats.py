"""Benchmark the analysis pass read from the store against numpy on the same data in memory.

Writes a synthetic run of --steps steps x --channels channels (float32, with 8 per-step variables,
chunks of 1024 steps) into a temporary store, then times:
  store   `compute_stats` over the run: streams the chunks, computes moments, quantiles,
          histograms, fraction active, Pearson correlations with every variable and top-k, and
          writes the results;
  numpy   the same quantities from the whole array in memory (np.quantile, np.histogram per
          channel, a correlation matrix product, argpartition for top-k).
Prints both times and their ratio (target: store/numpy at most 2). Each time is the median of
--repeats runs.

Usage: python bench/stats.py [--steps 1000000] [--channels 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from interlatent_mcp.analysis import AnalysisParams, compute_stats
from interlatent_mcp.analysis.compute import DEFAULT_QUANTILES
from interlatent_mcp.store import StepChunk, Store

CHUNK_STEPS = 1024
N_VARIABLES = 8
TOP_K = 32


def synthetic_chunks(steps: int, channels: int, seed: int = 0):
    """Yield (step_start, activations, variables): ReLU-like channels driven by the variables."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((N_VARIABLES, channels))
    for start in range(0, steps, CHUNK_STEPS):
        n = min(CHUNK_STEPS, steps - start)
        variables = rng.standard_normal((n, N_VARIABLES))
        pre = variables @ mixing + 0.5 * rng.standard_normal((n, channels))
        yield start, np.maximum(pre, 0).astype(np.float32), variables


def build_store(path: Path, steps: int, channels: int) -> tuple[Store, int]:
    store = Store(path)
    policy = store.add_policy(name="synthetic", kind="synthetic", source="bench", fingerprint="0",
                              observation_space="-", action_space="-", layers={"h:post": channels})
    layer = store.get_layer(policy.policy_id, "h:post")
    run = store.create_run(policy_id=policy.policy_id, env_id="synthetic", env_kwargs={},
                           seed=0, layer_ids=[layer.layer_id],
                           variables=[f"v{i}" for i in range(N_VARIABLES)], chunk_steps=CHUNK_STEPS)
    for chunk, (start, acts, variables) in enumerate(synthetic_chunks(steps, channels)):
        n = acts.shape[0]
        context = StepChunk(start, np.zeros(n, np.int32), np.arange(start, start + n, dtype=np.int32),
                            np.zeros(n, bool), np.zeros(n, bool), variables)
        store.write_chunk(run.run_id, chunk, context, {layer.layer_id: acts})
    store.finish_run(run.run_id, status="complete", duration_s=0.0)
    return store, run.run_id


def numpy_analysis(x: np.ndarray, y: np.ndarray) -> None:
    """Compute the same outputs as compute_stats from whole arrays in memory.

    Each quantity uses its fastest numpy form measured here: channel-major float32 for
    quantiles, histograms and top-k.
    """
    xt = np.ascontiguousarray(x.T)  # (C, N)
    _count = np.isfinite(xt).sum(axis=1)
    mean, std = xt.mean(axis=1, dtype=np.float64), xt.std(axis=1, dtype=np.float64)
    low, high = xt.min(axis=1), xt.max(axis=1)
    _quantiles = np.quantile(xt, DEFAULT_QUANTILES, axis=1)
    _hist = [np.histogram(xt[c], bins=64, range=(low[c], high[c] + 1e-6)) for c in range(xt.shape[0])]
    _active = (xt > 0).mean(axis=1)
    xs = (xt - mean[:, None].astype(np.float32)) / np.where(std > 0, std, 1)[:, None].astype(np.float32)
    ys = (y - y.mean(axis=0)) / y.std(axis=0)
    _r = xs @ ys.astype(np.float32) / xt.shape[1]
    top = np.argpartition(-xt, TOP_K - 1, axis=1)[:, :TOP_K]
    values = np.take_along_axis(xt, top, axis=1)
    _order = np.argsort(-values, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        store, run_id = build_store(Path(tmp) / "bench.sqlite", args.steps, args.channels)
        print(f"wrote {args.steps} x {args.channels} float32 to the store in "
              f"{time.perf_counter() - started:.1f} s")
        x = np.concatenate([a for _, a, _ in synthetic_chunks(args.steps, args.channels)])
        y = np.concatenate([v for _, _, v in synthetic_chunks(args.steps, args.channels)])

        store_times, numpy_times = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            compute_stats(store, [run_id], params=AnalysisParams(top_k=TOP_K))
            store_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            numpy_analysis(x, y)
            numpy_times.append(time.perf_counter() - started)
        store.close()

    store_time, numpy_time = statistics.median(store_times), statistics.median(numpy_times)
    print(f"store (streaming, writes results) {store_time:6.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in store_times)})")
    print(f"numpy (whole array in memory)     {numpy_time:6.2f} s  (runs: "
          f"{', '.join(f'{t:.2f}' for t in numpy_times)})")
    print(f"store/numpy = {store_time / numpy_time:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()
