"""Benchmark the latency of get_channel over stdio against a trivial tool in the same server.

Records a CartPole run into a temporary store and computes its statistics. Then starts this
script as an MCP server over stdio (the real server plus one `echo` tool that returns its
argument) and calls `echo` and `get_channel` alternately through the SDK client. Prints the median and 90th
percentile latency of each, and the ratio of the medians (target: get_channel at most 3x echo).

Usage: python bench/mcp_latency.py [--calls 200] [--steps 5000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio


def serve(store: str) -> None:
    """Run the interlatent server over stdio, with a trivial `echo` tool added."""
    from interlatent_mcp.server import configure_logging, create_server
    from interlatent_mcp.tools.base import ServerContext

    configure_logging()
    context = ServerContext.open(store)
    server = create_server(context)

    def echo(text: str) -> str:
        """Return the text unchanged (a baseline for transport and dispatch cost)."""
        return text

    server.add_tool(echo)
    try:
        server.run("stdio")
    finally:
        context.close()


def prepare_store(path: Path, steps: int) -> None:
    import torch

    from interlatent_mcp.analysis import compute_stats
    from interlatent_mcp.capture import record_rollout
    from interlatent_mcp.store import Store

    torch.set_num_threads(1)
    with Store(path) as store:
        run = record_rollout(store, "cartpole-ppo", steps=steps, seed=0)
        compute_stats(store, [run.run_id])
        layer = store.get_layer(run.policy_id, "act1:post")
        store.add_explanation(layer_id=layer.layer_id, channel=5, text="benchmark explanation",
                              author="bench", method="manual")
        store.add_note("benchmark note", author="bench", layer_id=layer.layer_id, channel=5)


async def measure(store: Path, calls: int) -> dict[str, list[float]]:
    from mcp import Client, StdioServerParameters

    parameters = StdioServerParameters(command=sys.executable,
                                       args=[__file__, "--serve", str(store)])
    timings: dict[str, list[float]] = {"echo": [], "get_channel": []}
    requests = {"echo": {"text": "ping"}, "get_channel": {"layer": "act1:post", "channel": 5}}
    async with Client(parameters) as client:
        for name, arguments in requests.items():  # warm-up: first-call imports and caches
            for _ in range(5):
                result = await client.call_tool(name, arguments)
                assert not result.is_error, result.content
        for _ in range(calls):
            for name, arguments in requests.items():
                started = time.perf_counter()
                await client.call_tool(name, arguments)
                timings[name].append(time.perf_counter() - started)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls of each tool (default 200)")
    parser.add_argument("--steps", type=int, default=5000, help="steps recorded (default 5000)")
    parser.add_argument("--serve", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    with tempfile.TemporaryDirectory() as directory:
        store = Path(directory) / "bench.sqlite"
        prepare_store(store, args.steps)
        timings = anyio.run(measure, store, args.calls)
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    for name, values in timings.items():
        print(f"{name:12s} median {medians[name]:7.2f} ms   p90 {percentile(values, 0.9) * 1000:7.2f} ms"
              f"   ({len(values)} calls over stdio)")
    print(f"ratio get_channel / echo (medians): {medians['get_channel'] / medians['echo']:.2f}x "
          f"(target: at most 3x)")


if __name__ == "__main__":
    main()
