"""Discovery tools: which policies, environments and recorded runs there are."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from interlatent_mcp.errors import UnknownPolicyError
from interlatent_mcp.store import RunRecord, Store
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.common import (
    Limit,
    Offset,
    Page,
    RunId,
    ShortLimit,
    next_offset,
    resolve_policy,
)

tools = ToolSet()
register = tools.register

RunStatus = Literal["running", "complete", "interrupted", "failed"]


class BuiltinPolicy(BaseModel):
    name: str
    env_id: str
    description: str
    default_layers: list[str]


class StoredPolicy(BaseModel):
    policy_id: int
    name: str
    kind: str
    source: str
    observation_space: str
    action_space: str
    layers: list[str]


class PolicyList(Page):
    builtin: list[BuiltinPolicy] = Field(description="Policies shipped with interlatent; record_rollout accepts their names.")
    stored: list[StoredPolicy] = Field(description="Policies that have runs in the store (this page).")


class LayerInfo(BaseModel):
    name: str
    width: int = Field(description="Number of channels.")
    kind: str


class PolicyDescription(BaseModel):
    name: str
    policy_id: int | None = Field(description="Id in the store; null when the policy has no runs yet.")
    source: str
    env_id: str | None = Field(description="Default environment of the policy, when it has one.")
    description: str | None
    observation_space: str
    action_space: str
    default_layers: list[str] = Field(description="Layers record_rollout records when none are given.")
    layers: list[LayerInfo]


class EnvList(Page):
    env_ids: list[str]


class RunSummary(BaseModel):
    run_id: int
    policy: str
    policy_id: int
    env_id: str
    status: str
    seed: int | None
    n_steps: int
    n_episodes: int
    layers: list[str]
    tags: list[str]
    started_at: str
    duration_s: float | None
    error: str | None


class RunPage(Page):
    runs: list[RunSummary]


class EpisodeInfo(BaseModel):
    episode: int
    first_step: int
    length: int
    episode_return: float
    terminated: bool
    truncated: bool


class RunDetail(RunSummary):
    variables: list[str] = Field(description="Per-step variables recorded with every step; correlations and timelines use these names.")
    env_kwargs: dict[str, object]
    requested_episodes: int | None
    requested_steps: int | None
    mean_return: float | None
    episodes: list[EpisodeInfo] = Field(description="The first episodes of the run (see episodes_total).")
    episodes_total: int
    analysis_ids: list[int] = Field(description="Analyses (compute_stats results) that include this run, newest last.")


def summarize_run(store: Store, run: RunRecord, policy_names: dict[int, str] | None = None) -> RunSummary:
    """Shape a run for a tool result; `policy_names` caches names across runs of one page."""
    names = policy_names if policy_names is not None else {}
    if run.policy_id not in names:
        names[run.policy_id] = store.get_policy(run.policy_id).name
    return RunSummary(
        run_id=run.run_id, policy=names[run.policy_id], policy_id=run.policy_id, env_id=run.env_id,
        status=run.status, seed=run.seed, n_steps=run.n_steps, n_episodes=run.n_episodes,
        layers=run.layers, tags=run.tags, started_at=run.started_at, duration_s=run.duration_s,
        error=run.error,
    )


@tools.tool(title="List policies")
def list_policies(context: ServerContext, offset: Offset = 0, limit: Limit = 20) -> PolicyList:
    """List the policies you can study: the built-in demo policies, and those already in the store.

    Use this first to pick a policy for record_rollout or describe_policy. Cheap (no model is
    loaded). Stored policies are paged by offset/limit.
    """
    from interlatent_mcp.capture.builtin import BUILTIN_POLICIES

    store = context.store
    builtin = [BuiltinPolicy(name=s.name, env_id=s.env_id, description=s.description,
                             default_layers=list(s.default_layers)) for s in BUILTIN_POLICIES.values()]
    policies = store.list_policies()
    page = [
        StoredPolicy(policy_id=p.policy_id, name=p.name, kind=p.kind, source=p.source,
                     observation_space=p.observation_space, action_space=p.action_space,
                     layers=[layer.name for layer in store.list_layers(p.policy_id)])
        for p in policies[offset:offset + limit]
    ]
    return PolicyList(builtin=builtin, stored=page, offset=offset, total=len(policies),
                      next_offset=next_offset(offset, len(page), limit, len(policies)))


@tools.tool(title="Describe a policy")
def describe_policy(
    context: ServerContext,
    policy: Annotated[str, Field(min_length=1, max_length=500, description="A built-in policy name (see list_policies), a policy id or name in the store, or the path of a Stable-Baselines3 .zip file.")],
) -> PolicyDescription:
    """Describe a policy: its layers (hook points) with their widths, spaces and default environment.

    Use it to choose layers for record_rollout and to learn the layer names the analysis tools
    take. A policy not yet in the store is loaded once to probe its layers (about a second).
    """
    from interlatent_mcp.capture.builtin import BUILTIN_POLICIES

    spec = BUILTIN_POLICIES.get(policy.removeprefix("builtin:"))
    try:
        stored = resolve_policy(context.store, policy)
    except UnknownPolicyError:
        if spec is None and not policy.endswith(".zip"):
            raise
        stored = None
    if stored is not None:
        layers = [LayerInfo(name=x.name, width=x.width, kind=x.kind)
                  for x in context.store.list_layers(stored.policy_id)]
        return PolicyDescription(
            name=stored.name, policy_id=stored.policy_id, source=stored.source,
            env_id=spec.env_id if spec else None, description=spec.description if spec else None,
            observation_space=stored.observation_space, action_space=stored.action_space,
            default_layers=list(spec.default_layers) if spec else [], layers=layers,
        )
    return _describe_unstored(policy, spec)


def _describe_unstored(policy: str, spec: object | None) -> PolicyDescription:
    from interlatent_mcp.capture import describe_layers, load_policy
    from interlatent_mcp.capture.policies import describe_space

    loaded = load_policy(policy)
    widths = describe_layers(loaded)
    return PolicyDescription(
        name=loaded.name, policy_id=None, source=loaded.source, env_id=loaded.env_id,
        description=getattr(spec, "description", None),
        observation_space=describe_space(loaded.observation_space),
        action_space=describe_space(loaded.action_space),
        default_layers=list(loaded.default_layers),
        layers=[LayerInfo(name=name, width=width, kind="module") for name, width in widths.items()],
    )


@tools.tool(title="List environments")
def list_envs(
    context: ServerContext,
    prefix: Annotated[str | None, Field(max_length=200, description="Only ids starting with this, e.g. 'CartPole' or 'ALE/'.")] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> EnvList:
    """List Gymnasium environment ids that record_rollout can run, optionally by prefix.

    The built-in cartpole-ppo policy runs in CartPole-v1; other policies need an environment
    whose observation and action spaces match theirs. Cheap; paged.
    """
    from interlatent_mcp.capture.envs import list_envs as registered

    ids = registered(prefix)
    page = ids[offset:offset + limit]
    return EnvList(env_ids=page, offset=offset, total=len(ids),
                   next_offset=next_offset(offset, len(page), limit, len(ids)))


@tools.tool(title="List runs")
def list_runs(
    context: ServerContext,
    offset: Offset = 0,
    limit: Limit = 20,
    policy: Annotated[int | str | None, Field(description="Only runs of this policy (id or name).")] = None,
    env_id: Annotated[str | None, Field(max_length=200, description="Only runs in this environment id.")] = None,
    status: Annotated[RunStatus | None, Field(description="Only runs with this status.")] = None,
) -> RunPage:
    """List recorded runs (rollouts), newest first, with their policy, environment, size and layers.

    Use it to find run ids for compute_stats, get_run and channel_timeline. Cheap; paged.
    """
    store = context.store
    policy_id = None if policy is None else resolve_policy(store, policy).policy_id
    runs = store.list_runs(offset=offset, limit=limit, policy_id=policy_id, env_id=env_id,
                           status=status)
    filtered = policy is not None or env_id is not None or status is not None
    total = None if filtered else store.count_runs()
    names: dict[int, str] = {}
    return RunPage(runs=[summarize_run(store, run, names) for run in runs], offset=offset,
                   total=total, next_offset=next_offset(offset, len(runs), limit, total))


@tools.tool(title="Get a run")
def get_run(context: ServerContext, run_id: RunId, episodes_limit: ShortLimit = 10) -> RunDetail:
    """Describe one run: status, per-step variables, its first episodes with returns, and the
    analyses that include it. Use the variable names with find_channels and channel_timeline.
    Cheap."""
    store = context.store
    run = store.get_run(run_id)
    episodes = store.list_episodes(run_id)
    returns = [e.return_ for e in episodes]
    analyses = [a.analysis_id for a in store.list_analyses(run.policy_id) if run_id in a.run_ids]
    summary = summarize_run(store, run)
    return RunDetail(
        **summary.model_dump(), variables=run.variables, env_kwargs=run.env_kwargs,
        requested_episodes=run.requested_episodes, requested_steps=run.requested_steps,
        mean_return=sum(returns) / len(returns) if returns else None,
        episodes=[EpisodeInfo(episode=e.episode, first_step=e.first_step, length=e.length,
                              episode_return=e.return_, terminated=e.terminated,
                              truncated=e.truncated) for e in episodes[:episodes_limit]],
        episodes_total=len(episodes), analysis_ids=analyses,
    )
