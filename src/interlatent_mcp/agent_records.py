"""Settings, outcomes and the printed report of the autodescribe loop (see agent.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.explain.llm import TokenUsage

StopReason = Literal["complete", "tool_calls", "tokens", "channels", "interrupted"]


@dataclass(frozen=True)
class Budget:
    """Limits of one describe run; None means no limit of that kind."""

    tool_calls: int | None = 200
    """MCP tool calls, the loop's own bookkeeping calls included."""
    tokens: int | None = 500_000
    """Input plus output tokens of the model; checked before each model call."""
    channels: int | None = None
    """Channels started."""

    def __post_init__(self) -> None:
        for name in ("tool_calls", "tokens", "channels"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgumentError(f"budget {name} must be at least 1, got {value}")


@dataclass(frozen=True)
class DescribeConfig:
    """Settings of one describe run: the layer, the budget and the effort per channel."""

    layer: str
    policy: str | int | None = None
    budget: Budget = field(default_factory=Budget)
    author: str | None = None
    """Author of the explanations and notes; None means the model's name."""
    max_revisions: int = 3
    """Versions written after the first one, per channel."""
    max_turns: int = 12
    """Model calls per channel."""
    good_auroc: float = 0.95
    """A channel whose explanation reaches this AUROC is not revised further."""
    max_tokens_per_turn: int = 2048
    max_result_chars: int = 12000
    """Tool result text longer than this is cut before the model reads it."""

    def __post_init__(self) -> None:
        if self.max_revisions < 0 or self.max_turns < 2:
            raise InvalidArgumentError(f"max_revisions must be >= 0 and max_turns >= 2, got "
                                       f"{self.max_revisions} and {self.max_turns}")
        if not 0.5 <= self.good_auroc <= 1.0:
            raise InvalidArgumentError(f"good_auroc must be in [0.5, 1], got {self.good_auroc}")


@dataclass(frozen=True)
class Version:
    """One scored explanation version written during a run."""

    explanation_id: int
    text: str
    predicate: str | None
    auroc: float | None


@dataclass(frozen=True)
class ChannelOutcome:
    channel: int
    best: Version | None
    versions_written: int
    finished: bool
    """False when the run stopped in the middle of this channel."""
    kept_existing: bool = False
    """True when the explanation the channel had before scored higher than every new version,
    so it was restored as the latest version."""


@dataclass
class DescribeReport:
    """The outcome of one describe run: channels described, costs and the reason it stopped."""

    layer: str
    author: str
    stopped: StopReason = "complete"
    outcomes: list[ChannelOutcome] = field(default_factory=list)
    already_done: list[int] = field(default_factory=list)
    """Channels skipped because an earlier run by the same author finished them."""
    tool_calls: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)


_STOP_MESSAGES: dict[str, str] = {
    "complete": "every live channel is done",
    "tool_calls": "the tool-call budget is spent",
    "tokens": "the token budget is spent",
    "channels": "the channel budget is spent",
    "interrupted": "interrupted",
}


def format_auroc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_report(report: DescribeReport) -> str:
    """Describe a run's outcome in a few lines for a terminal."""
    lines = [f"{len(report.outcomes)} channel(s) of {report.layer} described by {report.author}; "
             f"stopped: {_STOP_MESSAGES[report.stopped]}. {report.tool_calls} tool calls, "
             f"{report.usage.input_tokens} input and {report.usage.output_tokens} output tokens."]
    for outcome in report.outcomes:
        if not outcome.finished:
            lines.append(f"  channel {outcome.channel}: not finished (run again to continue)")
        elif outcome.kept_existing:
            new = "none" if outcome.best is None else format_auroc(outcome.best.auroc)
            lines.append(f"  channel {outcome.channel}: kept the earlier explanation, which "
                         f"scores higher (best new AUROC: {new})")
        elif outcome.best is None:
            lines.append(f"  channel {outcome.channel}: no scored explanation")
        else:
            lines.append(f"  channel {outcome.channel}: AUROC {format_auroc(outcome.best.auroc)}  "
                         f"{outcome.best.predicate}  "
                         f"({outcome.versions_written} version(s))")
    if report.already_done:
        lines.append(f"{len(report.already_done)} channel(s) were done by an earlier run.")
    return "\n".join(lines)
