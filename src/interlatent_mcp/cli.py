"""The `interlatent` command line.

Each subcommand maps its options onto one library call and prints the result. Library errors
are printed as one line on stderr, without a traceback, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from interlatent_mcp import __version__
from interlatent_mcp.errors import InterlatentError, InvalidArgumentError

logger = logging.getLogger("interlatent_mcp.cli")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _open_store(path: str | None, *, announce: bool = True) -> Any:
    from interlatent_mcp.store import Store

    store = Store(path)
    if announce:
        print(f"store: {store.path}", file=sys.stderr)
    return store


def _progress_bar(total: int | None, unit: str, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, file=sys.stderr, leave=False,
                disable=None, dynamic_ncols=True)


def _add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="PATH",
        help="SQLite store file (default: $INTERLATENT_STORE, else the per-user data directory)",
    )


def _set_single_thread() -> None:
    # Small policies run several times faster on one thread on a 2-core machine shared with
    # other work, because torch's thread pool contends for the cores.
    import torch

    torch.set_num_threads(1)


# Capture: rollout, layers, policies, envs, runs


def _record(store: Any, policy: str, env_id: str | None, *, episodes: int | None,
            steps: int | None, layers: Sequence[str] | None, seed: int | None,
            env_kwargs: dict[str, Any] | None = None, tags: Sequence[str] = (),
            chunk_steps: int = 1024) -> Any:
    from interlatent_mcp.capture import record_rollout

    total, unit = (episodes, "episode") if steps is None else (steps, "step")
    with _progress_bar(total, unit, "recording") as bar:
        def progress(done_steps: int, done_episodes: int) -> None:
            bar.update((done_episodes if steps is None else done_steps) - bar.n)

        return record_rollout(store, policy, env_id, episodes=episodes, steps=steps,
                              layers=layers, seed=seed, env_kwargs=env_kwargs, tags=tags,
                              chunk_steps=chunk_steps, progress=progress)


def _print_run(store: Any, run: Any) -> None:
    episodes = store.list_episodes(run.run_id)
    returns = [e.return_ for e in episodes]
    mean = sum(returns) / len(returns) if returns else float("nan")
    print(f"run {run.run_id}: {run.status}, {run.n_steps} steps, {run.n_episodes} episodes of "
          f"{run.env_id}, mean return {mean:.1f}, {run.n_steps / max(run.duration_s or 1e-9, 1e-9):.0f} "
          f"steps/s")
    print(f"  layers: {', '.join(run.layers)}")
    print(f"  variables: {', '.join(run.variables)}")


def cmd_rollout(args: argparse.Namespace) -> int:
    _set_single_thread()
    if args.episodes is None and args.steps is None:
        args.episodes = 5
    env_kwargs = _parse_json_object(args.env_kwargs, "--env-kwargs")
    with _open_store(args.store) as store:
        run = _record(store, args.policy, args.env, episodes=args.episodes, steps=args.steps,
                      layers=args.layers, seed=args.seed, env_kwargs=env_kwargs, tags=args.tag,
                      chunk_steps=args.chunk_steps)
        _print_run(store, run)
    return 0


def _parse_json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"{option} must be a JSON object, got {text!r}: {e}") from e
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{option} must be a JSON object, got {text!r}")
    return value


def cmd_layers(args: argparse.Namespace) -> int:
    from interlatent_mcp.capture import describe_layers, load_policy

    policy = load_policy(args.policy)
    default = set(policy.default_layers)
    print(f"{policy.name} ({policy.kind}): observation {policy.observation_space}, "
          f"action {policy.action_space}")
    for name, width in describe_layers(policy).items():
        marker = "  (recorded by default)" if name in default else ""
        print(f"  {name:<40} {width:>6}{marker}")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from interlatent_mcp.capture import BUILTIN_POLICIES

    print("built-in policies:")
    for spec in BUILTIN_POLICIES.values():
        print(f"  {spec.name:<16} {spec.env_id:<16} {spec.description}")
    if args.store:
        with _open_store(args.store) as store:
            print("policies in the store:")
            for policy in store.list_policies():
                print(f"  {policy.policy_id:>4} {policy.name:<16} {policy.kind:<10} {policy.source}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from interlatent_mcp.capture import list_envs

    for env_id in list_envs(args.prefix):
        print(env_id)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _open_store(args.store) as store:
        runs = store.list_runs(limit=args.limit)
        if not runs:
            print("no runs yet; record one with `interlatent rollout cartpole-ppo`")
        for run in runs:
            print(f"{run.run_id:>5}  {run.status:<11} {run.env_id:<16} policy {run.policy_id:<3} "
                  f"{run.n_steps:>8} steps {run.n_episodes:>5} episodes  {run.started_at}")
    return 0


# Analysis: stats, demo


def _compute(store: Any, run_ids: Sequence[int], layers: Sequence[str] | None,
             top_k: int = 32) -> Any:
    from interlatent_mcp.analysis import AnalysisParams, compute_stats

    with _progress_bar(None, "step", "analysing") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return compute_stats(store, run_ids, layers, params=AnalysisParams(top_k=top_k),
                             progress=progress)


def cmd_stats(args: argparse.Namespace) -> int:
    from interlatent_mcp.analysis.summary import summarize

    with _open_store(args.store) as store:
        run_ids = args.runs or [run.run_id for run in store.list_runs(limit=1)]
        if not run_ids:
            raise InvalidArgumentError("the store has no runs; record one with `interlatent rollout`")
        analysis = _compute(store, run_ids, args.layers, args.top_k)
        print(summarize(store, analysis))
    return 0


DemoStep = Callable[[Any, Any, argparse.Namespace], None]
# Further demo steps (transcoders, explanations) run after the summary, in this order.
EXTRA_DEMO_STEPS: list[DemoStep] = []


def cmd_demo(args: argparse.Namespace) -> int:
    from interlatent_mcp.analysis.summary import SummaryOptions, summarize

    _set_single_thread()
    with _open_store(args.store, announce=False) as store:
        print(f"store: {store.path}")
        print(f"Recording {args.episodes} episodes of the built-in cartpole-ppo policy in "
              f"CartPole-v1 (seed {args.seed}) ...")
        run = _record(store, "cartpole-ppo", None, episodes=args.episodes, steps=None,
                      layers=None, seed=args.seed)
        _print_run(store, run)
        print("Computing statistics, correlations and top activations ...")
        analysis = _compute(store, [run.run_id], None)
        print(summarize(store, analysis, SummaryOptions(correlations_per_layer=3, channels=2,
                                                        moments=2)))
        for step in EXTRA_DEMO_STEPS:
            step(store, analysis, args)
    return 0


# Server: serve, claude-config


def cmd_serve(args: argparse.Namespace) -> int:
    from interlatent_mcp.server import run_server

    run_server(args.store, args.transport, args.host, args.port)
    return 0


def cmd_claude_config(args: argparse.Namespace) -> int:
    from interlatent_mcp.server import claude_config

    print(json.dumps(claude_config(args.store), indent=2))
    return 0


def _add_server_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve the store to MCP clients (stdio by default)")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                       help="stdio (default; what Claude Desktop starts) or streamable HTTP")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address the HTTP server binds to (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")
    _add_store_option(serve)
    serve.set_defaults(handler=cmd_serve)

    config = sub.add_parser("claude-config",
                            help="print the mcpServers JSON entry for Claude Desktop")
    _add_store_option(config)
    config.set_defaults(handler=cmd_claude_config)


# Explanations: describe, and the demo's heuristic drafts


def cmd_describe(args: argparse.Namespace) -> int:
    from interlatent_mcp.agent import (
        Budget,
        DescribeConfig,
        InterruptFlag,
        format_report,
        run_describe,
    )
    from interlatent_mcp.explain.llm import AnthropicBackend

    backend = AnthropicBackend(args.model)
    budget = Budget(tool_calls=args.budget, tokens=args.max_tokens, channels=args.channels)
    config = DescribeConfig(layer=args.layer, policy=args.policy, budget=budget)
    with InterruptFlag() as stop_requested:
        report = run_describe(args.store, backend, config, should_stop=stop_requested)
    print(format_report(report))
    return EXIT_INTERRUPTED if report.stopped == "interrupted" else 0


def _add_describe_command(sub: Any) -> None:
    from interlatent_mcp.explain.llm import DEFAULT_MODEL

    describe = sub.add_parser(
        "describe", help="let an LLM explain a layer's channels through the MCP tools")
    describe.add_argument("--layer", required=True, help="layer to describe, e.g. act1:post")
    describe.add_argument("--policy", help="policy name or id (needed when several have the layer)")
    describe.add_argument("--budget", type=int, default=200,
                          help="maximum MCP tool calls (default 200)")
    describe.add_argument("--max-tokens", type=int, default=500_000,
                          help="maximum model tokens, input plus output (default 500000)")
    describe.add_argument("--channels", type=int, help="maximum channels to describe")
    describe.add_argument("--model", default=DEFAULT_MODEL,
                          help=f"Anthropic model (default {DEFAULT_MODEL}); needs ANTHROPIC_API_KEY")
    _add_store_option(describe)
    describe.set_defaults(handler=cmd_describe)


def _demo_explanations(store: Any, analysis: Any, args: argparse.Namespace) -> None:
    from interlatent_mcp.analysis.summary import strongest_correlations
    from interlatent_mcp.explain.heuristic import draft_explanations

    print("\nDrafting explanations without an LLM: a predicate per live channel, scored by its "
          "AUROC against every recorded step ...")
    for layer_id in analysis.layer_ids:
        drafts = {d.channel: d for d in draft_explanations(store, layer_id, analysis=analysis)}
        scored = sorted(d.score.auroc for d in drafts.values()
                        if d.score is not None and d.score.auroc is not None)
        if not scored:
            continue
        print(f"  {store.get_layer_by_id(layer_id).name}: {len(scored)} drafts, median AUROC "
              f"{scored[len(scored) // 2]:.3f}")
        for corr in strongest_correlations(store, analysis, layer_id, 2):
            draft = drafts.get(corr.channel)
            if draft is not None and draft.score is not None and draft.score.auroc is not None:
                print(f"    channel {corr.channel:>3}  AUROC {draft.score.auroc:.3f}  "
                      f"{draft.predicate}")


# Transcoders: train, and the demo's transcoder


def _train(store: Any, run_ids: Sequence[int], input_layer: str, output_layer: str | None,
           config: Any, name: str | None = None, latents_as_layer: bool = True) -> Any:
    from interlatent_mcp.transcoders import train_transcoder

    with _progress_bar(config.max_epochs, "epoch", "training") as bar:
        def progress(done: float, total: float, message: str) -> None:
            bar.update(int(done) - bar.n)

        return train_transcoder(store, run_ids, input_layer, output_layer, config=config,
                                name=name, latents_as_layer=latents_as_layer, progress=progress)


def cmd_train(args: argparse.Namespace) -> int:
    from interlatent_mcp.transcoders import TranscoderConfig, compute_splice_fidelity
    from interlatent_mcp.transcoders.report import describe_splice, describe_transcoder

    _set_single_thread()
    config = TranscoderConfig(architecture=args.architecture, n_latents=args.latents, k=args.k,
                              skip_connection=args.skip, max_epochs=args.epochs, seed=args.seed)
    with _open_store(args.store) as store:
        run_ids = args.runs or [run.run_id for run in store.list_runs(status="complete", limit=1)]
        if not run_ids:
            raise InvalidArgumentError("the store has no runs; record one with `interlatent rollout`")
        trained = _train(store, run_ids, args.input, args.output, config, args.name,
                         not args.no_latents)
        print(describe_transcoder(store, trained.record))
        if args.splice_episodes:
            fidelity = compute_splice_fidelity(store, trained.record.transcoder_id,
                                               episodes=args.splice_episodes, seed=args.seed)
            print(describe_splice(fidelity))
    return 0


def _add_train_command(sub: Any) -> None:
    train = sub.add_parser("train", help="train a sparse transcoder or autoencoder on recorded runs")
    train.add_argument("runs", nargs="*", type=int, help="run ids (default: the latest complete run)")
    train.add_argument("--input", required=True, metavar="LAYER",
                       help="input layer, e.g. act2:pre")
    train.add_argument("--output", metavar="LAYER",
                       help="output layer, e.g. act2:post (default: an autoencoder of --input)")
    # The names of transcoders.ARCHITECTURES, written out so that --help does not import torch.
    train.add_argument("--architecture", choices=("topk", "batchtopk", "relu", "jumprelu"),
                       default="topk",
                       help="sparsity mechanism (default topk)")
    train.add_argument("--latents", type=int, help="number of latents (default 4x the output width)")
    train.add_argument("--k", type=int, default=8,
                       help="active latents per step for topk and batchtopk (default 8)")
    train.add_argument("--skip", action="store_true",
                       help="add a linear skip connection (transcoders only)")
    train.add_argument("--epochs", type=int, default=100,
                       help="maximum training epochs (default 100); training stops earlier when "
                            "the validation loss has not improved by 0.1%% for 8 epochs")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the split, initialisation and splice-in episodes (default 0)")
    train.add_argument("--name", help="name to store it under (default: generated)")
    train.add_argument("--splice-episodes", type=int, default=10,
                       help="episodes of the splice-in test, 0 to skip it (default 10)")
    train.add_argument("--no-latents", action="store_true",
                       help="do not record the latents as a layer of the runs")
    _add_store_option(train)
    train.set_defaults(handler=cmd_train)


def _demo_transcoder(store: Any, analysis: Any, args: argparse.Namespace) -> None:
    from interlatent_mcp.transcoders import TranscoderConfig, compute_splice_fidelity
    from interlatent_mcp.transcoders.report import describe_splice, describe_transcoder

    if args.episodes < 3:
        print("\nSkipping the transcoder: it needs at least 3 episodes (training, validation, "
              "held-out).")
        return
    print("\nTraining a TopK transcoder act2:pre -> act2:post and splicing it into the policy ...")
    trained = _train(store, analysis.run_ids, "act2:pre", "act2:post",
                     TranscoderConfig(max_epochs=DEMO_TRANSCODER_EPOCHS))
    print(describe_transcoder(store, trained.record))
    print(describe_splice(compute_splice_fidelity(store, trained.record.transcoder_id,
                                                  episodes=5, seed=args.seed)))


# Enough for the demo's FVU to reach about 0.003 on 10 episodes in a few seconds.
DEMO_TRANSCODER_EPOCHS = 40
EXTRA_DEMO_STEPS.append(_demo_transcoder)
EXTRA_DEMO_STEPS.append(_demo_explanations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlatent",
        description="Record, analyse and explain the channels of neural-network policies.",
    )
    parser.add_argument("--version", action="version", version=f"interlatent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="record and analyse the built-in CartPole policy")
    _add_store_option(demo)
    demo.add_argument("--episodes", type=int, default=10, help="episodes to record (default 10)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    demo.set_defaults(handler=cmd_demo)

    rollout = sub.add_parser("rollout", help="record a policy's activations in an environment")
    rollout.add_argument("policy", help="built-in policy name or path to a Stable-Baselines3 .zip")
    rollout.add_argument("--env", help="Gymnasium environment id (default: the policy's own)")
    budget = rollout.add_mutually_exclusive_group()
    budget.add_argument("--episodes", type=int, help="episodes to record (default 5)")
    budget.add_argument("--steps", type=int, help="steps to record")
    rollout.add_argument("--layers", nargs="+", metavar="LAYER",
                         help="hook points such as fc1:post (default: the policy's defaults)")
    rollout.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    rollout.add_argument("--env-kwargs", metavar="JSON", help="keyword arguments for gymnasium.make")
    rollout.add_argument("--tag", action="append", default=[], help="tag the run (repeatable)")
    rollout.add_argument("--chunk-steps", type=int, default=1024,
                         help="steps per stored chunk (default 1024)")
    _add_store_option(rollout)
    rollout.set_defaults(handler=cmd_rollout)

    stats = sub.add_parser("stats", help="compute and summarise statistics over recorded runs")
    stats.add_argument("runs", nargs="*", type=int, help="run ids (default: the latest run)")
    stats.add_argument("--layers", nargs="+", metavar="LAYER", help="layers (default: all recorded)")
    stats.add_argument("--top-k", type=int, default=32, help="top steps kept per channel (default 32)")
    _add_store_option(stats)
    stats.set_defaults(handler=cmd_stats)

    layers = sub.add_parser("layers", help="list a policy's hook points and their widths")
    layers.add_argument("policy", help="built-in policy name or path to a Stable-Baselines3 .zip")
    layers.set_defaults(handler=cmd_layers)

    policies = sub.add_parser("policies", help="list built-in policies (and those in a store)")
    _add_store_option(policies)
    policies.set_defaults(handler=cmd_policies)

    envs = sub.add_parser("envs", help="list registered Gymnasium environment ids")
    envs.add_argument("--prefix", help="only ids starting with this")
    envs.set_defaults(handler=cmd_envs)

    runs = sub.add_parser("runs", help="list recorded runs, newest first")
    runs.add_argument("--limit", type=int, default=20, help="maximum runs listed (default 20)")
    _add_store_option(runs)
    runs.set_defaults(handler=cmd_runs)

    _add_server_commands(sub)
    _add_describe_command(sub)
    _add_train_command(sub)
    for add_commands in EXTRA_COMMANDS:
        add_commands(sub)
    return parser


# Functions that add the subcommands of other parts (server, transcoders, explanations).
EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except InterlatentError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; the steps recorded so far are kept and the run is marked "
              "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
