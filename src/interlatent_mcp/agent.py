"""The autodescribe loop: an LLM explains a layer's channels through interlatent's MCP tools.

The loop is an MCP client of our own server, connected in-process through the SDK's `Client`,
so the model gets exactly the tools that an external client lists. It goes channel by channel
(unexplained channels first, then the lowest-scoring ones), lets the model study each channel
with the cards, top moments, timelines and plots, and scores every explanation the model writes
with score_explanation. The model revises while the score improves, up to `max_revisions`. The
best version ends up as the channel's latest one, and a note tagged "autodescribe" records the
outcome. Explanations and notes are written with the model's name as author.

A run stops cleanly when its budget (tool calls, tokens or channels) is spent, when
`should_stop()` returns True (the command line sets it on Ctrl-C), or on KeyboardInterrupt.
What was written stays in the store. A channel counts as done once its note is written, so a
rerun with the same author skips done channels and continues with the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from interlatent_mcp.errors import InterlatentError, InvalidArgumentError
from interlatent_mcp.agent_records import (
    Budget,
    ChannelOutcome,
    DescribeConfig,
    DescribeReport,
    StopReason,
    Version,
    format_auroc,
    format_report,
)
from interlatent_mcp.explain.llm import (
    ImageBlock,
    LLMBackend,
    LLMResponse,
    Message,
    TextBlock,
    TokenUsage,
    ToolCall,
    ToolResult,
    ToolSpec,
)

__all__ = [
    "Budget", "ChannelOutcome", "DescribeConfig", "DescribeReport", "InterruptFlag", "Version",
    "describe_layer", "format_report", "plan_channels", "run_describe",
]

logger = logging.getLogger(__name__)

# The tools the model may call; recording and statistics are left to the person running it.
AGENT_TOOLS = (
    "get_channel", "top_activations", "channel_timeline", "plot_channel", "find_channels",
    "find_channels_by_predicate", "get_explanations", "search_explanations",
    "write_explanation", "score_explanation", "add_note", "list_notes",
)
# Arguments the loop fills in itself, hidden from the model.
AUTHOR_TOOLS = ("write_explanation", "add_note")
DONE_TAG = "autodescribe"
PAGE = 200

SYSTEM_PROMPT = """\
You explain what single channels (units) inside a neural-network policy represent. The policy
acts in a Gymnasium environment; its activations were recorded together with per-step
variables (observation components, action, reward, t = step within the episode).

For the channel you are given:
1. Read its card with get_channel: statistics, correlations with the per-step variables, top
   moments and any earlier explanation. Use top_activations, channel_timeline and plot_channel
   when the card is not enough.
2. Write one explanation with write_explanation: plain words with the evidence, and a
   predicate over per-step variables that is true when the channel fires, e.g.
   'pole_angle > 0.02 and pole_angular_velocity > 0'. The predicate language has comparisons
   (chained too), and/or/not, + - * /, abs() and numbers.
3. The explanation is scored against every recorded step: AUROC of the predicate for the
   steps where the channel fires (above the threshold the score states). If the score can be
   improved, look at what the predicate gets wrong and write a revised version.
4. When the explanation is as good as you can make it, add_note with what you checked and what
   remains open, then reply with a short summary and no tool call.
Be concise: every tool call and token counts against a budget."""


class _Stop(Exception):
    """Raised inside the loop when the budget is spent or a stop was requested."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason: StopReason = reason


def _result_blocks(result: Any, max_chars: int) -> tuple[TextBlock | ImageBlock, ...]:
    blocks: list[TextBlock | ImageBlock] = []
    for item in result.content:
        if item.type == "text":
            text = item.text if len(item.text) <= max_chars else (
                item.text[:max_chars] + f"... [cut at {max_chars} characters]")
            blocks.append(TextBlock(text))
        elif item.type == "image":
            blocks.append(ImageBlock(item.data, item.mime_type))
    return tuple(blocks) or (TextBlock("(empty result)"),)


def _tool_specs(tools: Sequence[Any]) -> list[ToolSpec]:
    specs = []
    for tool in tools:
        if tool.name not in AGENT_TOOLS:
            continue
        schema = json.loads(json.dumps(tool.input_schema))
        if tool.name in AUTHOR_TOOLS:
            schema.get("properties", {}).pop("author", None)
        specs.append(ToolSpec(tool.name, tool.description or "", schema))
    return specs


class _Session:
    """One run's connection, budget accounting and stop checks."""

    def __init__(self, client: Any, backend: LLMBackend, config: DescribeConfig,
                 report: DescribeReport, should_stop: Callable[[], bool] | None) -> None:
        self.client, self.backend, self.config, self.report = client, backend, config, report
        self.should_stop = should_stop
        self.tools: list[ToolSpec] = []
        self.start_usage = backend.usage

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise _Stop("interrupted")

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call an MCP tool, counting it against the budget."""
        self.check()
        limit = self.config.budget.tool_calls
        if limit is not None and self.report.tool_calls >= limit:
            raise _Stop("tool_calls")
        self.report.tool_calls += 1
        return await self.client.call_tool(name, arguments)

    async def complete(self, messages: list[Message]) -> LLMResponse:
        """Ask the model for its next turn, unless the token budget is spent."""
        import anyio

        self.check()
        limit = self.config.budget.tokens
        used = self.backend.usage.total - self.start_usage.total
        if limit is not None and used >= limit:
            raise _Stop("tokens")
        response = await anyio.to_thread.run_sync(lambda: self.backend.complete(
            messages, system=SYSTEM_PROMPT, tools=self.tools,
            max_tokens=self.config.max_tokens_per_turn))
        self.report.usage = TokenUsage(
            self.backend.usage.input_tokens - self.start_usage.input_tokens,
            self.backend.usage.output_tokens - self.start_usage.output_tokens)
        return response

    async def ok(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call a bookkeeping tool that must succeed; return its structured result."""
        result = await self.call(name, arguments)
        if result.is_error:
            text = " ".join(getattr(item, "text", "") for item in result.content)
            raise InvalidArgumentError(f"{name} failed: {text}")
        return result.structured_content or {}


def _layer_arguments(config: DescribeConfig) -> dict[str, Any]:
    return {"layer": config.layer} if config.policy is None else {
        "layer": config.layer, "policy": config.policy}


async def _pages(session: _Session, name: str, arguments: dict[str, Any],
                 key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read every page of a paged tool; return the items under `key` and the first page."""
    items: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    offset: int | None = 0
    while offset is not None:
        page = await session.ok(name, {**arguments, "offset": offset, "limit": PAGE})
        first = first or page
        items += page[key]
        offset = page.get("next_offset")
    return items, first or {}


def _auroc(explanation: dict[str, Any] | None) -> float | None:
    if not explanation:
        return None
    return ((explanation.get("scores") or {}).get("predicate") or {}).get("auroc")


async def plan_channels(session: _Session, author: str) -> tuple[
        list[int], list[int], dict[int, dict[str, Any]]]:
    """Return the channels to describe in order, those an earlier run by `author` finished, and
    the latest explanation of each explained channel.

    Dead channels are left out. Channels that an interrupted run of `author` started come
    first, then unexplained channels, then explained ones by ascending predicate AUROC
    (unscored first).
    """
    arguments = _layer_arguments(session.config)
    dead, first = await _pages(session, "find_dead", arguments, "channels")
    latest, _ = await _pages(session, "get_explanations", {**arguments, "latest_only": True},
                             "explanations")
    notes, _ = await _pages(session, "list_notes", arguments, "notes")
    explanations = {e["channel"]: e for e in latest}
    done = sorted({n["channel"] for n in notes if n["channel"] is not None
                   and n["author"] == author and DONE_TAG in n["tags"]})
    skip = {c["channel"] for c in dead} | set(done)
    live = [c for c in range(first["width"]) if c not in skip]

    def priority(channel: int) -> tuple[int, float, int]:
        explanation = explanations.get(channel)
        if explanation is None:
            return (1, 0.0, channel)
        if explanation["author"] == author:
            return (0, 0.0, channel)  # started by an interrupted run: continue it first
        auroc = _auroc(explanation)
        return (2, -1.0 if auroc is None else auroc, channel)

    return sorted(live, key=priority), done, explanations


def _channel_prompt(config: DescribeConfig, channel: int, current: dict[str, Any] | None) -> str:
    policy = f" of policy {config.policy}" if config.policy is not None else ""
    lines = [f"Explain channel {channel} of layer {config.layer!r}{policy}."]
    if current:
        lines.append(f"Its current explanation (version {current['version']} by "
                     f"{current['author']}): {current['text']}")
        if current.get("predicate"):
            lines.append(f"Predicate: {current['predicate']} (AUROC {_auroc(current)}). Keep "
                         f"it unless you can write a version that scores higher.")
    else:
        lines.append("It has no explanation yet.")
    return "\n".join(lines)


@dataclass
class _ChannelState:
    """Progress on one channel: versions written, the best one, and whether to stop."""

    channel: int
    current: dict[str, Any] | None
    best: Version | None = None
    latest: Version | None = None
    written: int = 0
    finished: bool = False
    kept_existing: bool = False
    stop_reason: str = "the model finished"

    def record(self, version: Version, config: DescribeConfig) -> str:
        """Count a scored version; return a line for the model with its best score so far."""
        self.written += 1
        self.latest = version
        best = self.best
        improved = best is None or (version.auroc is not None and (
            best.auroc is None or version.auroc > best.auroc))
        if improved:
            self.best = version
        revisions_left = config.max_revisions - (self.written - 1)
        if not improved:
            self.finished, self.stop_reason = True, "a revision did not improve the score"
        elif version.auroc is not None and version.auroc >= config.good_auroc:
            self.finished, self.stop_reason = True, f"AUROC reached {config.good_auroc}"
        elif revisions_left <= 0:
            self.finished, self.stop_reason = True, "the revision limit was reached"
        if self.finished:
            return f"This channel is finished: {self.stop_reason}."
        return (f"Best AUROC so far: {self.best.auroc if self.best else None}. You may write "
                f"{revisions_left} more revised version(s) while the score improves.")

    def outcome(self, finished: bool) -> ChannelOutcome:
        return ChannelOutcome(self.channel, self.best, self.written, finished, self.kept_existing)

    def existing_is_better(self) -> bool:
        """Return True if the explanation from before this run outscores every new version."""
        prior = _auroc(self.current)
        if self.written == 0 or prior is None or not (self.current or {}).get("predicate"):
            return False
        return self.best is None or self.best.auroc is None or self.best.auroc < prior


async def _score_written(session: _Session, state: _ChannelState,
                         written: dict[str, Any]) -> tuple[TextBlock | ImageBlock, ...]:
    """Score a version the model just wrote for the current channel and report it."""
    config = session.config
    if written.get("layer") != config.layer or written.get("channel") != state.channel:
        return ()
    if not written.get("predicate"):
        state.record(Version(written["explanation_id"], written["text"], None, None), config)
        return (TextBlock("This version has no predicate, so it cannot be scored against the "
                          "data; write a version with a predicate."),)
    result = await session.call("score_explanation", {
        **_layer_arguments(config), "channel": state.channel,
        "explanation_id": written["explanation_id"]})
    blocks = _result_blocks(result, config.max_result_chars)
    if result.is_error:
        return blocks
    auroc = (result.structured_content.get("predicate") or {}).get("auroc")
    version = Version(written["explanation_id"], written["text"], written["predicate"], auroc)
    return (*blocks, TextBlock(state.record(version, config)))


async def _run_tool(session: _Session, state: _ChannelState, call: ToolCall,
                    author: str) -> ToolResult:
    available = [spec.name for spec in session.tools]
    if call.name not in available:
        return ToolResult(call.id, (TextBlock(
            f"tool {call.name!r} is not available here; use one of {', '.join(available)}"),),
            is_error=True)
    arguments = dict(call.arguments)
    if call.name in AUTHOR_TOOLS:
        arguments["author"] = author
    result = await session.call(call.name, arguments)
    blocks = _result_blocks(result, session.config.max_result_chars)
    if call.name == "write_explanation" and not result.is_error:
        blocks = (*blocks, *await _score_written(session, state, result.structured_content or {}))
    return ToolResult(call.id, blocks, is_error=bool(result.is_error))


async def _finish_channel(session: _Session, state: _ChannelState, author: str,
                          summary: str) -> None:
    """Make the best version the latest one, and write the note that marks the channel done.

    The best version is the highest-scoring one of this run, or the explanation the channel had
    before, restored under its own author, when that one scores higher.
    """
    arguments = {**_layer_arguments(session.config), "channel": state.channel}
    best = state.best
    restore: dict[str, Any] | None = None
    if state.existing_is_better() and state.current is not None:
        state.kept_existing = True
        restore = {"text": state.current["text"], "predicate": state.current["predicate"],
                   "author": state.current["author"]}
    elif best is not None and state.latest is not None and best != state.latest:
        restore = {"text": best.text, "predicate": best.predicate, "author": author}
    if restore is not None:
        rewritten = await session.ok("write_explanation", {**arguments, **restore})
        if restore["predicate"]:
            await session.ok("score_explanation", {
                **arguments, "explanation_id": rewritten["explanation_id"]})
    outcome = (f"best new version: explanation {best.explanation_id}, predicate "
               f"{best.predicate!r}, AUROC {format_auroc(best.auroc)}" if best
               else "no scored version")
    if state.kept_existing:
        outcome += (f"; the earlier explanation scores higher (AUROC {format_auroc(_auroc(state.current))}) "
                    f"and was restored as the latest version")
    text = (f"Autodescribe by {author}: {state.written} version(s) written; {outcome}. Stopped "
            f"because {state.stop_reason}. Summary: {summary.strip()[:1500] or '(none)'}")
    await session.ok("add_note", {**arguments, "text": text, "tags": [DONE_TAG],
                                  "author": author})


async def _describe_channel(session: _Session, state: _ChannelState, author: str) -> None:
    messages = [Message.user(_channel_prompt(session.config, state.channel, state.current))]
    summary = ""
    for _ in range(session.config.max_turns):
        response = await session.complete(messages)
        summary = response.text or summary
        messages.append(response.as_message())
        if not response.tool_calls:
            break
        results = [await _run_tool(session, state, call, author) for call in response.tool_calls]
        messages.append(Message("user", tuple(results)))
        if state.finished:
            break
    else:
        state.stop_reason = f"the turn limit ({session.config.max_turns}) was reached"
    await _finish_channel(session, state, author, summary)


async def describe_layer(server: Any, backend: LLMBackend, config: DescribeConfig,
                         should_stop: Callable[[], bool] | None = None) -> DescribeReport:
    """Run the autodescribe loop over one layer, connected in-process to `server`."""
    from mcp import Client

    author = config.author or backend.model
    report = DescribeReport(config.layer, author)
    failure: InterlatentError | None = None
    async with Client(server) as client:
        session = _Session(client, backend, config, report, should_stop)
        state: _ChannelState | None = None
        try:
            session.tools = _tool_specs((await client.list_tools()).tools)
            channels, report.already_done, explanations = await plan_channels(session, author)
            logger.info("describing %d channels of %s as %s (%d done before)", len(channels),
                        config.layer, author, len(report.already_done))
            for channel in channels:
                if config.budget.channels is not None and len(report.outcomes) >= config.budget.channels:
                    raise _Stop("channels")
                state = _ChannelState(channel, explanations.get(channel))
                await _describe_channel(session, state, author)
                report.outcomes.append(state.outcome(finished=True))
                state = None
        except _Stop as stop:
            report.stopped = stop.reason
        except KeyboardInterrupt:
            report.stopped = "interrupted"
        except InterlatentError as e:
            # Raised after the client has closed: inside it, the SDK's task group would wrap
            # the error in an exception group.
            failure = e
        if state is not None:
            report.outcomes.append(state.outcome(finished=False))
    if failure is not None:
        raise failure
    logger.info("describe stopped (%s) after %d tool calls and %d tokens", report.stopped,
                report.tool_calls, report.usage.total)
    return report


def run_describe(store: Any, backend: LLMBackend, config: DescribeConfig,
                 should_stop: Callable[[], bool] | None = None) -> DescribeReport:
    """Open the store, build the MCP server over it and run `describe_layer` to the end."""
    import functools

    import anyio

    from interlatent_mcp.server import create_server
    from interlatent_mcp.tools.base import ServerContext

    # Simulation scoring through score_explanation then uses, and counts, the same backend.
    context = ServerContext.open(store)
    context.llm = backend
    try:
        server = create_server(context)
        return anyio.run(functools.partial(describe_layer, server, backend, config, should_stop))
    finally:
        context.close()


class InterruptFlag:
    """Turn Ctrl-C into a stop request while the block runs.

    The first SIGINT sets the flag, so the loop stops before its next model or tool call; a
    second one raises KeyboardInterrupt at once. Call the instance as `should_stop`.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("stopping after the current step; press Ctrl-C again to stop at once")

    def __enter__(self) -> InterruptFlag:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
