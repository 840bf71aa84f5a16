"""Hooked rollouts: run a policy in an environment and record its activations into the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interlatent_mcp.capture.envs import action_names, make_env, observation_names
from interlatent_mcp.capture.hooks import capture, list_hook_points, resolve_layers
from interlatent_mcp.capture.metrics import EpisodeAccumulator, StepMetric, validate_metric_names
from interlatent_mcp.capture.policies import Policy, describe_space, load_policy
from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.store import EpisodeRecord, RunRecord, StepChunk, Store

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_STEPS = 1024
MAX_CHUNK_STEPS = 65536
# How often (in steps) a rollout asks `should_stop` whether to end early.
STOP_CHECK_INTERVAL = 256

ProgressCallback = Callable[[int, int], None]


def describe_layers(policy: Policy) -> dict[str, int]:
    """Return every hook point of the policy with its width, probing once and caching the result."""
    cached = getattr(policy, "_layer_widths", None)
    if cached is None:
        sample = policy.obs_to_tensor(policy.sample_observation())
        forward = getattr(policy, "probe_forward", None)
        cached = list_hook_points(policy.module, sample, forward)
        policy._layer_widths = cached  # type: ignore[attr-defined]
    return cached


def register_policy(store: Store, policy: Policy) -> tuple[int, dict[str, int]]:
    """Add the policy and all its layers to the store; return its id and {layer name: layer id}."""
    widths = describe_layers(policy)
    record = store.add_policy(
        name=policy.name, kind=policy.kind, source=policy.source, fingerprint=policy.fingerprint(),
        observation_space=describe_space(policy.observation_space),
        action_space=describe_space(policy.action_space), layers=widths,
    )
    return record.policy_id, {layer.name: layer.layer_id for layer in store.list_layers(record.policy_id)}


@dataclass
class _ChunkBuffers:
    """Preallocated per-step context of one chunk."""

    chunk_steps: int
    n_variables: int
    variables: np.ndarray = field(init=False)
    episode: np.ndarray = field(init=False)
    t: np.ndarray = field(init=False)
    terminated: np.ndarray = field(init=False)
    truncated: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.variables = np.zeros((self.chunk_steps, self.n_variables), dtype=np.float64)
        self.episode = np.zeros(self.chunk_steps, dtype=np.int32)
        self.t = np.zeros(self.chunk_steps, dtype=np.int32)
        self.terminated = np.zeros(self.chunk_steps, dtype=bool)
        self.truncated = np.zeros(self.chunk_steps, dtype=bool)

    def to_step_chunk(self, step_start: int, n: int) -> StepChunk:
        return StepChunk(step_start, self.episode[:n], self.t[:n], self.terminated[:n],
                         self.truncated[:n], self.variables[:n])


class _Recording:
    """The mutable state of one rollout: position, episode bookkeeping and chunk flushing."""

    def __init__(self, store: Store, run: RunRecord, layer_ids: dict[str, int], recorder: Any,
                 buffers: _ChunkBuffers, seed: int | None,
                 accumulators: Sequence[EpisodeAccumulator]) -> None:
        self.store, self.run, self.layer_ids = store, run, layer_ids
        self.recorder, self.buffers, self.seed = recorder, buffers, seed
        self.accumulators = accumulators
        self.position = 0  # steps in the current chunk
        self.step = 0  # steps written or buffered in this run
        self.chunk = 0
        self.episode = 0
        self.episode_first_step = 0
        self.episode_return = 0.0
        self.accumulated = [acc.initial for acc in accumulators]
        self.finished: list[EpisodeRecord] = []

    def episode_seed(self) -> int | None:
        # Episode e is reset with seed + e, so episodes can be paired across runs and policies.
        return None if self.seed is None else self.seed + self.episode

    def end_episode(self, terminated: bool, truncated: bool) -> None:
        names = [acc.name for acc in self.accumulators]
        self.finished.append(EpisodeRecord(
            run_id=self.run.run_id, episode=self.episode, seed=self.episode_seed(),
            first_step=self.episode_first_step, length=self.step - self.episode_first_step,
            return_=self.episode_return, terminated=terminated, truncated=truncated,
            metrics=dict(zip(names, map(float, self.accumulated))),
        ))
        self.episode += 1
        self.episode_first_step = self.step
        self.episode_return = 0.0
        self.accumulated = [acc.initial for acc in self.accumulators]

    def flush(self) -> None:
        n = self.position
        if n == 0 and not self.finished:
            return
        blocks = self.recorder.take(n)
        activations = {self.layer_ids[name]: block for name, block in blocks.items()}
        steps = self.buffers.to_step_chunk(self.step - n, n)
        if n:
            self.store.write_chunk(self.run.run_id, self.chunk, steps, activations, self.finished)
            self.chunk += 1
        else:
            self.store.add_episodes(self.finished)
        self.finished = []
        self.position = 0


def _check_budget(episodes: int | None, steps: int | None, chunk_steps: int) -> None:
    if episodes is None and steps is None:
        raise InvalidArgumentError("give the number of episodes or of steps to record")
    if episodes is not None and episodes < 1:
        raise InvalidArgumentError(f"episodes must be at least 1, got {episodes}")
    if steps is not None and steps < 1:
        raise InvalidArgumentError(f"steps must be at least 1, got {steps}")
    if not 1 <= chunk_steps <= MAX_CHUNK_STEPS:
        raise InvalidArgumentError(
            f"chunk_steps must be between 1 and {MAX_CHUNK_STEPS}, got {chunk_steps}"
        )


def record_rollout(
    store: Store,
    policy: Policy | str,
    env_id: str | None = None,
    *,
    episodes: int | None = None,
    steps: int | None = None,
    layers: Sequence[str] | None = None,
    seed: int | None = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    metrics: Sequence[StepMetric | EpisodeAccumulator] = (),
    chunk_steps: int = DEFAULT_CHUNK_STEPS,
    tags: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunRecord:
    """Run `policy` greedily in `env_id` and record the given layers at every step.

    Stops after `episodes` episodes or `steps` steps, whichever comes first. Episode e is reset
    with `seed + e`. Activations and per-step context are written in chunks of `chunk_steps`
    steps, one transaction each. If the rollout raises (Ctrl-C included) or `should_stop()`
    returns True, the steps recorded so far are written and the run is marked 'interrupted';
    the exception is re-raised. Returns the finished run.
    """
    _check_budget(episodes, steps, chunk_steps)
    policy = load_policy(policy)
    env_id = env_id or policy.env_id
    if env_id is None:
        raise InvalidArgumentError(f"policy {policy.name!r} has no default environment; give env_id")
    env_kwargs = dict(env_kwargs or {})
    env = make_env(env_id, **env_kwargs)
    try:
        policy.check_spaces(env)
        policy_id, layer_ids = register_policy(store, policy)
        known = describe_layers(policy)
        names = resolve_layers(list(layers or policy.default_layers or _post_points(known)), known)
        obs_names = observation_names(env_id, env.observation_space) or []
        variables = [*obs_names, *action_names(env.action_space), "reward", "t"]
        step_metrics = [m for m in metrics if isinstance(m, StepMetric)]
        accumulators = [m for m in metrics if isinstance(m, EpisodeAccumulator)]
        variables += validate_metric_names([*step_metrics, *accumulators], variables)
        run = store.create_run(
            policy_id=policy_id, env_id=env_id, env_kwargs=env_kwargs, seed=seed,
            layer_ids=[layer_ids[name] for name in names], variables=variables,
            chunk_steps=chunk_steps, requested_episodes=episodes, requested_steps=steps, tags=tags,
        )
        logger.info("recording run %d: %s in %s, layers %s", run.run_id, policy.name, env_id, names)
        with capture(policy.module, names, known, chunk_steps) as recorder:
            state = _Recording(store, run, {n: layer_ids[n] for n in names}, recorder,
                               _ChunkBuffers(chunk_steps, len(variables)), seed, accumulators)
            return _run_loop(env, policy, state, len(obs_names), step_metrics, episodes, steps,
                             progress, should_stop)
    finally:
        env.close()


def _post_points(known: dict[str, int]) -> list[str]:
    return [name for name in known if name.endswith(":post")]


def _run_loop(env: Any, policy: Policy, state: _Recording, n_obs: int,
              step_metrics: Sequence[StepMetric], episodes: int | None, steps: int | None,
              progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> RunRecord:
    started = time.perf_counter()
    buffers = state.buffers
    n_actions = buffers.n_variables - n_obs - 2 - len(step_metrics) - len(state.accumulators)
    reward_col = n_obs + n_actions
    first_metric_col = reward_col + 2
    status, error = "complete", None
    try:
        obs, _info = env.reset(seed=state.episode_seed())
        with torch.inference_mode():
            while steps is None or state.step < steps:
                i = state.position
                action = policy.act(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                if state.step == 0:
                    _check_hooks_fired_once(state.recorder)

                row = buffers.variables[i]
                if n_obs:
                    row[:n_obs] = obs
                row[n_obs:reward_col] = action
                row[reward_col] = reward
                row[reward_col + 1] = state.step - state.episode_first_step
                col = first_metric_col
                for metric in step_metrics:
                    row[col] = metric.fn(obs, reward, info)
                    col += 1
                for a, acc in enumerate(state.accumulators):
                    state.accumulated[a] = acc.update(state.accumulated[a], obs, reward, info)
                    row[col] = state.accumulated[a]
                    col += 1
                buffers.episode[i] = state.episode
                buffers.t[i] = state.step - state.episode_first_step
                buffers.terminated[i] = terminated
                buffers.truncated[i] = truncated
                state.episode_return += float(reward)
                state.position += 1
                state.step += 1

                if terminated or truncated:
                    state.end_episode(bool(terminated), bool(truncated))
                    if episodes is not None and state.episode >= episodes:
                        break
                    obs, _info = env.reset(seed=state.episode_seed())
                else:
                    obs = next_obs
                if state.position == buffers.chunk_steps:
                    state.flush()
                    if progress is not None:
                        progress(state.step, state.episode)
                if should_stop is not None and state.step % STOP_CHECK_INTERVAL == 0 and should_stop():
                    status, error = "interrupted", "stopped on request before the budget was reached"
                    break
        if state.step > state.episode_first_step:
            # The recording stopped mid-episode: keep the partial episode, neither
            # terminated nor truncated by the environment.
            state.end_episode(False, False)
        state.flush()
    except BaseException as e:
        _save_partial(state, e, time.perf_counter() - started)
        raise
    if progress is not None:
        progress(state.step, state.episode)
    return state.store.finish_run(state.run.run_id, status=status,
                                  duration_s=time.perf_counter() - started, error=error)


def _check_hooks_fired_once(recorder: Any) -> None:
    counts = {name: len(pending) for name, pending in recorder.pending.items()}
    wrong = {name: count for name, count in counts.items() if count != 1}
    if wrong:
        raise InvalidArgumentError(
            f"hook points fired a number of times other than once in one step: {wrong}; record "
            f"layers that the policy's forward pass runs exactly once per step"
        )


def _save_partial(state: _Recording, error: BaseException, duration_s: float) -> None:
    """Write the complete steps that are still buffered and mark the run interrupted."""
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    try:
        state.flush()
    except Exception:  # noqa: BLE001 - the original error matters more; this one is logged
        logger.exception("could not write the last %d buffered steps of run %d",
                         state.position, state.run.run_id)
    try:
        state.store.finish_run(state.run.run_id, status="interrupted", duration_s=duration_s,
                               error=message)
    except Exception:  # noqa: BLE001
        logger.exception("could not mark run %d interrupted", state.run.run_id)
    logger.warning("run %d interrupted after %d steps: %s", state.run.run_id, state.step, message)
