"""The MCP server: assembles the tools, resources and prompts over one store, and runs it.

Each module in TOOL_MODULES and RESOURCE_MODULES exports `register(server, context)`. Adding a
module to one of the tuples is all it takes to serve its tools. Modules are imported when the
server is built. They import torch, gymnasium and matplotlib only inside their functions, so the
MCP handshake does not wait for those.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from interlatent_mcp import __version__
from interlatent_mcp.tools.base import ServerContext

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

logger = logging.getLogger(__name__)

SERVER_NAME = "interlatent"
DEFAULT_HTTP_PORT = 8765
# Seconds the server waits for running jobs to stop (and record their partial data) on exit.
SHUTDOWN_TIMEOUT_S = 10.0

TOOL_MODULES: tuple[str, ...] = (
    "interlatent_mcp.tools.discover",
    "interlatent_mcp.tools.record",
    "interlatent_mcp.tools.stats",
    "interlatent_mcp.tools.channels",
    "interlatent_mcp.tools.journal",
    "interlatent_mcp.tools.explanations",
    "interlatent_mcp.tools.jobs",
    "interlatent_mcp.tools.query",
    "interlatent_mcp.tools.transcoders",
)
RESOURCE_MODULES: tuple[str, ...] = (
    "interlatent_mcp.resources.store",
    "interlatent_mcp.resources.prompts",
)

INSTRUCTIONS = """\
interlatent records the activations of a neural-network policy while it acts in a Gymnasium
environment, and helps you find out what its channels represent.

A typical investigation: list_policies and describe_policy to pick a policy and its layers;
record_rollout to record runs; compute_stats to compute per-channel statistics, correlations with
per-step variables (observations, action, reward) and top-activating steps; find_channels,
find_dead, get_channel, top_activations, channel_timeline and plot_channel to study channels;
write_explanation and add_note to record what you found; search_explanations to find it again.
An explanation's predicate (e.g. 'pole_angle > 0.05 and action == 1') is checked against every
recorded step by score_explanation; find_channels_by_predicate ranks a layer's channels by one.
Raw channels are often polysemantic: train_transcoder learns sparse latents of a layer and
records them as a layer 'transcoder/<name>' that every tool above accepts; evaluate_transcoder
checks that the policy still behaves the same with the transcoder spliced in.
Long work (record_rollout, compute_stats, train_transcoder, evaluate_transcoder) runs as a job:
the call waits up to wait_seconds and otherwise returns a job id to follow with get_job. The
resource interlatent://schema describes the store for the read-only query tool.
"""


def create_server(context: ServerContext) -> MCPServer:
    """Build an MCP server whose tools, resources and prompts use `context`'s store and jobs."""
    from mcp.server.mcpserver import MCPServer

    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, version=__version__,
                                  log_level="INFO")
    for module_name in TOOL_MODULES + RESOURCE_MODULES:
        importlib.import_module(module_name).register(server, context)
    return server


def configure_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr: on stdio, stdout carries the MCP protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def run_server(store_path: str | os.PathLike[str] | None = None,
               transport: Literal["stdio", "http"] = "stdio", host: str = "127.0.0.1",
               port: int = DEFAULT_HTTP_PORT) -> None:
    """Serve the store over stdio or streamable HTTP until the client disconnects or Ctrl-C.

    On start, jobs and runs that a stopped server left running are marked interrupted. On exit,
    running jobs are asked to stop and get SHUTDOWN_TIMEOUT_S seconds to record what they have.
    """
    configure_logging()
    context = ServerContext.open(store_path)
    logger.info("serving store %s over %s", context.store.path, transport)
    try:
        server = create_server(context)
        if transport == "stdio":
            server.run("stdio")
        else:
            if host in ("0.0.0.0", "::"):
                logger.warning("DNS-rebinding protection accepts only requests whose Host header "
                               "is %s:%d; bind to the interface's own address instead", host, port)
            server.run("streamable-http", host=host, port=port,
                       transport_security=http_security(host, port))
    except KeyboardInterrupt:
        logger.info("stopped by keyboard interrupt")
    finally:
        context.close(SHUTDOWN_TIMEOUT_S)
        logger.info("server stopped")


def http_security(host: str, port: int) -> Any:
    """Return DNS-rebinding protection settings that accept only this host and port."""
    from mcp.server.transport_security import TransportSecuritySettings

    names = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
    hosts = [f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in sorted(names)]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts],
    )


def claude_config(store_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Return the `mcpServers` entry that makes Claude Desktop start this server over stdio.

    Paths are absolute because Claude Desktop starts servers from its own working directory.
    """
    from interlatent_mcp.store import default_store_path

    store = Path(store_path).expanduser().resolve() if store_path else default_store_path()
    # The console script next to this interpreter belongs to this installation; one found
    # elsewhere on PATH may not.
    script = Path(os.path.abspath(sys.executable)).parent / "interlatent"
    if script.exists():
        command, args = str(script), ["serve", "--store", str(store)]
    else:
        # Not resolved: a virtual environment's python is a symlink whose target lacks the venv.
        command = os.path.abspath(sys.executable)
        args = ["-m", "interlatent_mcp", "serve", "--store", str(store)]
    return {"mcpServers": {SERVER_NAME: {"command": command, "args": args}}}
