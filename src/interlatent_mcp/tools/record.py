"""The record_rollout tool: run a policy in an environment and record its layers, as a job."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from interlatent_mcp.jobs import JobControl
from interlatent_mcp.tools.base import ServerContext, ToolSet
from interlatent_mcp.tools.discover import RunSummary, summarize_run
from interlatent_mcp.tools.jobs import (
    DEFAULT_WAIT_S,
    JobInfo,
    WaitSeconds,
    follow_up,
    job_info,
    start_and_wait,
)

tools = ToolSet()
register = tools.register

MAX_EPISODES = 10_000
MAX_STEPS = 5_000_000


class RolloutResult(BaseModel):
    job: JobInfo
    run: RunSummary | None = Field(description="The recorded run, once the job is complete.")
    next_step: str = Field(description="What to call next.")


@tools.job("record_rollout")
def record_rollout_job(control: JobControl, params: dict[str, Any]) -> dict[str, Any]:
    from interlatent_mcp.capture import record_rollout

    steps, episodes = params["steps"], params["episodes"]

    def progress(done_steps: int, done_episodes: int) -> None:
        message = f"{done_steps} steps, {done_episodes} episodes"
        if steps is not None:
            control.report(done_steps, steps, message)
        else:
            control.report(done_episodes, episodes, message)

    run = record_rollout(
        control.store, params["policy"], params["env_id"], episodes=episodes, steps=steps,
        layers=params["layers"], seed=params["seed"], tags=params["tags"], progress=progress,
        should_stop=control.should_stop,
    )
    return summarize_run(control.store, run).model_dump()


@tools.tool(title="Record a rollout", read_only=False, idempotent=False)
async def record_rollout(
    context: ServerContext,
    ctx: Context,
    policy: Annotated[str, Field(min_length=1, max_length=500, description="Built-in policy name (list_policies), policy name in the store, or path of a Stable-Baselines3 .zip.")] = "cartpole-ppo",
    env_id: Annotated[str | None, Field(max_length=200, description="Gymnasium environment id; omitted means the policy's own environment (CartPole-v1 for cartpole-ppo).")] = None,
    episodes: Annotated[int | None, Field(ge=1, le=MAX_EPISODES, description="Stop after this many episodes.")] = None,
    steps: Annotated[int | None, Field(ge=1, le=MAX_STEPS, description="Stop after this many steps (whichever of episodes and steps comes first).")] = None,
    layers: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None, Field(max_length=64, description="Layers to record; omitted means the policy's default layers (describe_policy lists them).")] = None,
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="Episode e is reset with seed + e, so runs with the same seed are comparable.")] = 0,
    tags: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=20, description="Free-form labels stored with the run.")] = [],  # noqa: B006 - pydantic copies defaults
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> RolloutResult:
    """Record a rollout: run a policy greedily in a Gymnasium environment and store the
    activations of the chosen layers at every step, with the step's observation, action and
    reward.

    Give episodes or steps (or both). This is the first step of any investigation: statistics,
    channel cards and timelines all read recorded runs. Cost: the built-in CartPole policy
    records roughly 15,000 steps per second on one CPU core, so 20 episodes of 500 steps take
    about a second (larger policies and environments are slower). The call
    waits up to wait_seconds; a longer rollout continues as a job whose id is returned (follow
    it with get_job). Progress notifications are sent to clients that ask for them.
    """
    params = {"policy": policy, "env_id": env_id, "episodes": episodes, "steps": steps,
              "layers": layers, "seed": seed, "tags": list(tags)}
    record = await start_and_wait(context, ctx, "record_rollout", params, wait_seconds)
    run = RunSummary.model_validate(record.result) if record.result else None
    advice = "call compute_stats to analyse the run"
    if run is not None:
        advice = f"call compute_stats with run_ids=[{run.run_id}] to analyse the run"
    return RolloutResult(job=job_info(context, record, with_result=False), run=run, next_step=follow_up(record, advice))
