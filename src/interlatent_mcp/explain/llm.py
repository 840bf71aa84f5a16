"""LLM backends: one small interface, the Anthropic API, and a scripted backend for tests.

A backend turns a conversation (messages of text, images, tool calls and tool results) plus
optional tool definitions into one response: its text, the tool calls it requests, and the
tokens it used. The agent loop and simulation scoring only see this interface, so a test can
replay a fixed script through exactly the code path the real model takes.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

from interlatent_mcp.errors import InterlatentError, InvalidArgumentError

logger = logging.getLogger(__name__)

# NOTE: model names change over time; pass --model to use another one.
DEFAULT_MODEL = "claude-sonnet-4-6"
API_KEY_VARIABLE = "ANTHROPIC_API_KEY"
# HTTP statuses worth retrying: timeouts, conflicts, rate limits, server errors and overload.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


class LLMError(InterlatentError):
    """An LLM backend failed: it is not configured, or the API kept failing after retries."""


class ScriptExhaustedError(LLMError):
    """A scripted backend was asked for more responses than its script holds."""


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ImageBlock:
    data: str
    """Base64-encoded image bytes."""
    media_type: str = "image/png"


@dataclass(frozen=True)
class ToolCall:
    """A tool call requested by the model; `id` pairs it with its ToolResult."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """The output of a tool call, sent back to the model in a user message."""

    tool_call_id: str
    content: tuple[TextBlock | ImageBlock, ...]
    is_error: bool = False


Block = Union[TextBlock, ImageBlock, ToolCall, ToolResult]


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    content: tuple[Block, ...]

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", (TextBlock(text),))


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: name, description and JSON schema of its arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.input_tokens + other.input_tokens,
                          self.output_tokens + other.output_tokens)


@dataclass(frozen=True)
class LLMResponse:
    """One model turn: text, requested tool calls, token usage and why it stopped."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    model: str = ""

    def as_message(self) -> Message:
        """Return the assistant message that records this turn in the conversation."""
        blocks: list[Block] = [TextBlock(self.text)] if self.text else []
        return Message("assistant", (*blocks, *self.tool_calls))


class LLMBackend(Protocol):
    """The interface to a language model that the agent loop and simulation scoring use."""

    model: str
    usage: TokenUsage
    """Tokens used by every call so far."""

    def complete(self, messages: Sequence[Message], *, system: str | None = None,
                 tools: Sequence[ToolSpec] = (), max_tokens: int = 2048) -> LLMResponse:
        """Return the model's next turn after `messages`."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for rate limits, overload and connection failures."""

    max_attempts: int = 6
    """Calls made in total before giving up (1 to 20)."""
    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    """Maximum wait between attempts in seconds, also the cap on a server's retry-after."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise InvalidArgumentError(f"max_attempts must be between 1 and 20, got "
                                       f"{self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise InvalidArgumentError(
                f"delays must satisfy 0 <= initial_delay_s <= max_delay_s, got "
                f"{self.initial_delay_s} and {self.max_delay_s}")

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempts count from 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        backoff = self.initial_delay_s * 2 ** (attempt - 1)
        return min(backoff * (0.5 + random.random() / 2), self.max_delay_s)


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = None if response is None else response.headers.get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None  # an HTTP date: fall back to the backoff schedule


def _import_anthropic() -> Any:
    try:
        import anthropic
    except ImportError:
        raise LLMError(
            "the anthropic package is not installed; install it with "
            "`pip install 'interlatent-mcp[llm]'` (or `pip install anthropic`)"
        ) from None
    return anthropic


def _block_to_anthropic(block: Block) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        return {"type": "image", "source": {"type": "base64", "media_type": block.media_type,
                                            "data": block.data}}
    if isinstance(block, ToolCall):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.arguments}
    return {"type": "tool_result", "tool_use_id": block.tool_call_id, "is_error": block.is_error,
            "content": [_block_to_anthropic(part) for part in block.content]}


def _response_from_anthropic(message: Any) -> LLMResponse:
    texts, calls = [], []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            calls.append(ToolCall(block.id, block.name, dict(block.input or {})))
    usage = TokenUsage(int(message.usage.input_tokens), int(message.usage.output_tokens))
    return LLMResponse("\n".join(texts), tuple(calls), usage, message.stop_reason,
                       str(message.model))


class AnthropicBackend:
    """Claude through the Messages API of the `anthropic` package.

    The API key comes from `api_key` or the ANTHROPIC_API_KEY environment variable. Rate limits
    (429), overload (529), server errors and dropped connections are retried with exponential
    backoff, honouring the server's retry-after header. Token usage accumulates in `usage`.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, api_key: str | None = None,
                 base_url: str | None = None, retry: RetryPolicy | None = None,
                 timeout_s: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> None:
        anthropic = _import_anthropic()
        key = api_key or os.environ.get(API_KEY_VARIABLE)
        if not key:
            raise LLMError(
                f"no Anthropic API key: set the {API_KEY_VARIABLE} environment variable "
                f"(export {API_KEY_VARIABLE}=...) and run the command again"
            )
        self.model = model
        self.usage = TokenUsage()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._anthropic = anthropic
        # The client's own retries are off so that every attempt is logged and counted here.
        self._client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0,
                                           timeout=timeout_s)

    def complete(self, messages: Sequence[Message], *, system: str | None = None,
                 tools: Sequence[ToolSpec] = (), max_tokens: int = 2048) -> LLMResponse:
        request: dict[str, Any] = {
            "model": self.model, "max_tokens": max_tokens,
            "messages": [{"role": m.role, "content": [_block_to_anthropic(b) for b in m.content]}
                         for m in messages],
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [{"name": t.name, "description": t.description,
                                 "input_schema": t.input_schema} for t in tools]
        response = _response_from_anthropic(self._create_with_retries(request))
        self.usage = self.usage + response.usage
        return response

    def _create_with_retries(self, request: dict[str, Any]) -> Any:
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return self._client.messages.create(**request)
            except self._anthropic.APIError as e:
                status = getattr(e, "status_code", None)
                retryable = status in RETRYABLE_STATUSES or isinstance(
                    e, self._anthropic.APIConnectionError)
                if not retryable or attempt == self.retry.max_attempts:
                    raise LLMError(
                        f"the Anthropic API call failed after {attempt} attempt(s) "
                        f"(model {self.model}, status {status}): {e}"
                    ) from e
                delay = self.retry.delay(attempt, _retry_after(e))
                logger.warning("Anthropic API attempt %d failed (status %s: %s); retrying in "
                               "%.1f s", attempt, status, type(e).__name__, delay)
                self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


ScriptStep = Union[LLMResponse, Callable[[Sequence[Message]], LLMResponse]]


class ScriptedBackend:
    """Replays a fixed sequence of responses through the backend interface, for tests.

    A step is an LLMResponse, or a function of the conversation so far that returns one (to
    react to ids the tools returned). Every request is kept in `requests`.
    """

    def __init__(self, script: Sequence[ScriptStep], model: str = "scripted") -> None:
        self.model = model
        self.usage = TokenUsage()
        self.requests: list[dict[str, Any]] = []
        self._script = list(script)
        self._position = 0

    @property
    def remaining(self) -> int:
        return len(self._script) - self._position

    def complete(self, messages: Sequence[Message], *, system: str | None = None,
                 tools: Sequence[ToolSpec] = (), max_tokens: int = 2048) -> LLMResponse:
        self.requests.append({"messages": list(messages), "system": system,
                              "tools": [t.name for t in tools], "max_tokens": max_tokens})
        if self._position >= len(self._script):
            raise ScriptExhaustedError(
                f"the scripted backend has no response left after {len(self._script)}; "
                f"add steps to the script"
            )
        step = self._script[self._position]
        self._position += 1
        response = step(messages) if callable(step) else step
        response = LLMResponse(response.text, response.tool_calls, response.usage,
                               response.stop_reason, response.model or self.model)
        self.usage = self.usage + response.usage
        return response
