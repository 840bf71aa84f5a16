"""Prompts: investigate a layer, explain one channel, audit the explanations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from interlatent_mcp.tools.base import ServerContext

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer


def _policy_clause(policy: str | None) -> str:
    return f" of policy {policy}" if policy else ""


def _policy_argument(policy: str | None) -> str:
    return f", policy={policy!r}" if policy else ""


def investigate_layer(
    layer: Annotated[str, Field(description="Layer name, e.g. 'act1:post'.")],
    policy: Annotated[str | None, Field(description="Policy name or id; may be omitted when only one policy has the layer.")] = None,
) -> str:
    """Investigate what the channels of one layer represent, and record explanations."""
    p = _policy_argument(policy)
    return f"""\
Investigate layer {layer!r}{_policy_clause(policy)} with the interlatent tools.

1. If no run recorded this layer, call record_rollout (20 episodes is a good start), then
   compute_stats on the run. get_run lists the per-step variables you can correlate with.
2. Call find_dead(layer={layer!r}{p}) and leave dead channels out.
3. For each variable of interest, call find_channels(layer={layer!r}, variable=...{p}) and note
   the channels with the largest |r|.
4. For each promising channel, read get_channel, then top_activations and plot_channel. Form a
   hypothesis that names the variables and thresholds, and check it against channel_timeline.
5. Record each finding with write_explanation (add a predicate when you can state the claim as
   an expression over per-step variables) and your open questions with add_note.
6. Finish with a short summary of the layer: which channels encode what, which are dead, and
   what remains unexplained."""


def explain_channel(
    layer: Annotated[str, Field(description="Layer name, e.g. 'act1:post'.")],
    channel: Annotated[str, Field(description="Channel index within the layer.")],
    policy: Annotated[str | None, Field(description="Policy name or id; may be omitted when only one policy has the layer.")] = None,
) -> str:
    """Explain what one channel represents, from its card, moments and timeline."""
    p = _policy_argument(policy)
    return f"""\
Explain channel {channel} of layer {layer!r}{_policy_clause(policy)}.

1. Read its card: get_channel(layer={layer!r}, channel={channel}{p}). Note its statistics, its
   strongest correlations and any earlier explanation and notes.
2. Look at top_activations (what do the top moments have in common?) and plot_channel (is it
   sparse, graded, periodic?). Use channel_timeline around a top moment to see what happens
   before and after it.
3. State one explanation in plain words, with the evidence, and a predicate over per-step
   variables if the claim can be tested (e.g. 'pole_angle > 0.05 and action == 1').
4. Save it with write_explanation; it becomes a new version and never overwrites the old one.
   Note anything that does not fit with add_note."""


def audit_explanations(
    layer: Annotated[str | None, Field(description="Only this layer; omitted means all explanations.")] = None,
    policy: Annotated[str | None, Field(description="Policy name or id of the layer.")] = None,
) -> str:
    """Audit existing explanations against the recorded data."""
    scope = f"of layer {layer!r}{_policy_clause(policy)}" if layer else "in the store"
    listing = (f"get_explanations(layer={layer!r}, latest_only=True{_policy_argument(policy)})"
               if layer else "search_explanations with the concepts you expect (or query the "
               "explanations table)")
    return f"""\
Audit the explanations {scope}.

1. List them with {listing}.
2. For each one, read the channel's card with get_channel and compare the explanation with its
   correlations and top moments. Check a predicate against channel_timeline where the
   channel fires and where it does not.
3. Where an explanation is wrong, vague or contradicted by the data, write a corrected version
   with write_explanation and say in the text what changed and why. Where it holds, add a note
   with add_note that it was checked.
4. Report which explanations held, which you revised, and which channels still lack one."""


def register(server: MCPServer, context: ServerContext) -> None:
    for prompt in (investigate_layer, explain_channel, audit_explanations):
        server.prompt()(prompt)
