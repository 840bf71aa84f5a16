"""Shared by every tools module: the server context, tool registration and error conversion.

A tools module declares `tools = ToolSet()`, decorates its functions with `@tools.tool()` (and
its job functions with `@tools.job(name)`), and exports `register = tools.register`. A tool
function takes the `ServerContext` as its first parameter; the MCP client never sees it. Every
`InterlatentError` a tool raises reaches the model as a tool error with the library's message.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import ConfigDict

from interlatent_mcp.errors import InterlatentError
from interlatent_mcp.jobs import JobFunction, JobKind, JobRunner
from interlatent_mcp.store import Store

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class ServerContext:
    """The store and the job runner that every tool of one server uses."""

    store: Store
    jobs: JobRunner
    llm: Any = None
    """The LLM backend for simulation scoring; None builds one from ANTHROPIC_API_KEY on use."""

    @classmethod
    def open(cls, store: Store | str | PathLike[str] | None) -> ServerContext:
        """Open the store and mark the jobs and runs a stopped server left running as interrupted."""
        store = store if isinstance(store, Store) else Store(store)
        jobs = store.mark_unfinished_jobs_interrupted()
        runs = store.mark_running_runs_interrupted()
        if jobs or runs:
            logger.warning("marked jobs %s and runs %s interrupted: a server stopped while they ran",
                           jobs, runs)
        return cls(store=store, jobs=JobRunner(store))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop running jobs (recorded as interrupted) and close the store."""
        self.jobs.shutdown(timeout_s)
        self.store.close()


@dataclass(frozen=True)
class _ToolSpec:
    fn: Callable[..., Any]
    title: str | None
    annotations: ToolAnnotations


@dataclass
class ToolSet:
    """The tools and job kinds of one module, registered on a server together."""

    _tools: list[_ToolSpec] = field(default_factory=list)
    _jobs: list[JobKind] = field(default_factory=list)

    def tool(self, *, title: str | None = None, read_only: bool = True,
             idempotent: bool | None = None) -> Callable[[_F], _F]:
        """Declare a tool; its docstring is the description the model reads."""
        annotations = ToolAnnotations(
            title=title, read_only_hint=read_only, destructive_hint=False,
            idempotent_hint=read_only if idempotent is None else idempotent, open_world_hint=False,
        )

        def decorate(fn: _F) -> _F:
            self._tools.append(_ToolSpec(fn, title, annotations))
            return fn

        return decorate

    def job(self, name: str) -> Callable[[JobFunction], JobFunction]:
        """Declare a job kind run by the server's JobRunner as `fn(control, params)`."""

        def decorate(fn: JobFunction) -> JobFunction:
            self._jobs.append(JobKind(name, fn))
            return fn

        return decorate

    def tool_names(self) -> list[str]:
        return [spec.fn.__name__ for spec in self._tools]

    def register(self, server: MCPServer, context: ServerContext) -> None:
        for kind in self._jobs:
            context.jobs.add_kind(kind)
        for spec in self._tools:
            server.add_tool(bind_context(spec.fn, context), name=spec.fn.__name__,
                            title=spec.title, annotations=spec.annotations)
            reject_unknown_arguments(server, spec.fn.__name__)


def reject_unknown_arguments(server: MCPServer, name: str) -> None:
    """Make the tool `name` reject arguments it does not declare, instead of ignoring them.

    The SDK's argument models ignore extra keys, so a misspelt optional argument (say
    `predicat=...`) would silently fall back to its default and return a plausible but wrong
    result. A strict subclass of the model turns it into a validation error, which the SDK
    reports as a tool error naming the argument, and the published input schema gets
    `additionalProperties: false`.
    """
    # NOTE: the SDK (mcp 2.3) offers no public hook for this; `_tool_manager` is private, and
    # tests/test_tools_properties.py fails if a future SDK stops honouring the strict model.
    tool = server._tool_manager.get_tool(name)  # noqa: SLF001
    if tool is None:
        raise LookupError(f"tool {name!r} was not registered")
    loose = tool.fn_metadata.arg_model
    strict = type(f"{loose.__name__}Strict", (loose,),
                  {"model_config": ConfigDict(**loose.model_config, extra="forbid"),
                   "__module__": loose.__module__})
    tool.fn_metadata.arg_model = strict
    tool.parameters = {**tool.parameters, "additionalProperties": False}


def bind_context(fn: Callable[..., Any], context: ServerContext) -> Callable[..., Any]:
    """Return `fn` with its first parameter bound to `context` and library errors as tool errors.

    The returned function's signature lacks the first parameter, so the SDK builds the tool's
    input schema from the remaining, client-facing parameters.
    """
    signature = inspect.signature(fn, eval_str=True)
    parameters = list(signature.parameters.values())[1:]

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def call_async(**kwargs: Any) -> Any:
            try:
                return await fn(context, **kwargs)
            except InterlatentError as e:
                raise ToolError(str(e)) from e

        wrapper: Callable[..., Any] = call_async
    else:
        @functools.wraps(fn)
        def call(**kwargs: Any) -> Any:
            try:
                return fn(context, **kwargs)
            except InterlatentError as e:
                raise ToolError(str(e)) from e

        wrapper = call
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    wrapper.__annotations__["return"] = signature.return_annotation
    return wrapper
