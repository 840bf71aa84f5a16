"""LLM backends: the Anthropic client against a local stand-in for the API, and the script."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from interlatent_mcp.explain.llm import (
    AnthropicBackend,
    ImageBlock,
    LLMError,
    LLMResponse,
    Message,
    RetryPolicy,
    ScriptedBackend,
    ScriptExhaustedError,
    TextBlock,
    TokenUsage,
    ToolCall,
    ToolResult,
    ToolSpec,
)

requires_anthropic = pytest.mark.skipif(importlib.util.find_spec("anthropic") is None,
                                        reason="the optional anthropic package is not installed")

MESSAGE_REPLY = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test",
    "content": [
        {"type": "text", "text": "Looking at the card first."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_channel",
         "input": {"layer": "act1:post", "channel": 3}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 120, "output_tokens": 30},
}


class FakeMessagesAPI:
    """A local HTTP server in place of the remote Messages API.

    It replies with the queued (status, headers, body) triples in order, or with what a
    function of the request body returns, and keeps every request body it receives.
    """

    def __init__(self, replies: list[tuple[int, dict[str, str], dict]] | Callable[[dict], dict]
                 ) -> None:
        self.replies = replies if callable(replies) else list(replies)
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                length = int(self.headers["content-length"])
                api.requests.append({"path": self.path,
                                     "body": json.loads(self.rfile.read(length))})
                if callable(api.replies):
                    status, headers, body = 200, {}, api.replies(api.requests[-1]["body"])
                else:
                    status, headers, body = api.replies.pop(0)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeMessagesAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def error_body(kind: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": f"{kind} for the test"}}


@requires_anthropic
def test_anthropic_retries_then_parses() -> None:
    replies = [
        (429, {"retry-after": "0"}, error_body("rate_limit_error")),
        (529, {}, error_body("overloaded_error")),
        (200, {}, MESSAGE_REPLY),
    ]
    sleeps: list[float] = []
    with FakeMessagesAPI(replies) as api:
        backend = AnthropicBackend("claude-test", api_key="test-key", base_url=api.url,
                                   retry=RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05),
                                   sleep=sleeps.append)
        conversation = [
            Message.user("Explain channel 3."),
            Message("assistant", (ToolCall("toolu_00", "plot_channel", {"channel": 3}),)),
            Message("user", (ToolResult("toolu_00", (TextBlock("a plot"),
                                                     ImageBlock("iVBORw0KGgo="))),)),
        ]
        response = backend.complete(
            conversation, system="You explain channels.", max_tokens=300,
            tools=[ToolSpec("get_channel", "One channel's card.", {"type": "object"})])

    assert len(api.requests) == 3
    assert sleeps[0] == 0.0  # the server's retry-after
    assert 0 < sleeps[1] <= 0.05
    assert response.text == "Looking at the card first."
    assert response.tool_calls == (ToolCall("toolu_01", "get_channel",
                                            {"layer": "act1:post", "channel": 3}),)
    assert response.usage == TokenUsage(120, 30)
    assert response.stop_reason == "tool_use"
    assert backend.usage == TokenUsage(120, 30)
    body = api.requests[-1]["body"]
    assert api.requests[-1]["path"] == "/v1/messages"
    assert body["model"] == "claude-test"
    assert body["system"] == "You explain channels."
    assert body["max_tokens"] == 300
    assert body["tools"][0]["name"] == "get_channel"
    assert body["messages"][1]["content"][0] == {
        "type": "tool_use", "id": "toolu_00", "name": "plot_channel", "input": {"channel": 3}}
    result = body["messages"][2]["content"][0]
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == "toolu_00"
    assert result["content"][1]["source"]["media_type"] == "image/png"


@requires_anthropic
def test_anthropic_client_error_not_retried() -> None:
    with FakeMessagesAPI([(400, {}, error_body("invalid_request_error"))]) as api:
        backend = AnthropicBackend("claude-test", api_key="test-key", base_url=api.url,
                                   sleep=lambda s: None)
        with pytest.raises(LLMError, match="after 1 attempt.*status 400"):
            backend.complete([Message.user("hi")])
    assert len(api.requests) == 1


@requires_anthropic
def test_anthropic_gives_up_after_max_attempts() -> None:
    replies = [(503, {}, error_body("api_error"))] * 3
    with FakeMessagesAPI(replies) as api:
        backend = AnthropicBackend("claude-test", api_key="test-key", base_url=api.url,
                                   retry=RetryPolicy(max_attempts=3, initial_delay_s=0.0,
                                                     max_delay_s=0.0),
                                   sleep=lambda s: None)
        with pytest.raises(LLMError, match="after 3 attempt"):
            backend.complete([Message.user("hi")])
    assert len(api.requests) == 3


@requires_anthropic
def test_missing_api_key_message(monkeypatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(LLMError, match="set the ANTHROPIC_API_KEY environment variable"):
        AnthropicBackend("claude-test")


def test_missing_package_message(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail
    with pytest.raises(LLMError, match=r"pip install 'interlatent-mcp\[llm\]'"):
        AnthropicBackend("claude-test", api_key="test-key")


def test_retry_policy_validated() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    assert RetryPolicy(max_delay_s=5).delay(10, None) <= 5
    assert RetryPolicy(max_delay_s=5).delay(1, 30.0) == 5


def test_scripted_backend_replays_in_order() -> None:
    def second(messages):
        return LLMResponse(text=f"saw {len(messages)} messages", usage=TokenUsage(5, 1))

    backend = ScriptedBackend([LLMResponse(text="first", usage=TokenUsage(10, 2)), second])
    first = backend.complete([Message.user("a")], system="s")
    reply = backend.complete([Message.user("a"), first.as_message(), Message.user("b")])

    assert first.text == "first"
    assert first.model == "scripted"
    assert reply.text == "saw 3 messages"
    assert backend.usage == TokenUsage(15, 3)
    assert backend.requests[0]["system"] == "s"
    assert backend.remaining == 0
    with pytest.raises(ScriptExhaustedError):
        backend.complete([Message.user("c")])


def test_response_as_message_keeps_tool_calls() -> None:
    call = ToolCall("id1", "add_note", {"text": "x"})
    message = LLMResponse(text="noting", tool_calls=(call,)).as_message()
    assert message.role == "assistant"
    assert message.content == (TextBlock("noting"), call)
