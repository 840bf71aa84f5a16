"""Hooked rollouts: run a policy in an environment and record its activations into the store."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
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
# Interval in steps at which a rollout calls `should_stop` to check whether to end early.
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


class _Recording:
    """The mutable state of one rollout: per-step rows of the current chunk, episode bookkeeping
    and chunk flushing.

    Each step appends one tuple (observation, action, reward, terminated, truncated, t, episode)
    to `rows`. Columns are built once per chunk, because that costs far less per step than
    writing into arrays item by item.
    """

    def __init__(self, store: Store, run: RunRecord, layer_ids: dict[str, int], recorder: Any,
                 seed: int | None, n_obs: int, accumulators: Sequence[EpisodeAccumulator]) -> None:
        self.store, self.run, self.layer_ids = store, run, layer_ids
        self.recorder, self.seed, self.n_obs = recorder, seed, n_obs
        self.accumulators = accumulators
        self.rows: list[tuple[Any, ...]] = []
        self.metric_rows: list[list[float]] = []
        self.step = 0  # steps recorded in this run, flushed or not
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

    def step_chunk(self) -> StepChunk:
        """Build the columnar context of the buffered rows."""
        rows, n = self.rows, len(self.rows)
        columns = []
        if self.n_obs:
            columns.append(np.asarray([row[0] for row in rows], dtype=np.float64).reshape(n, -1))
        columns.append(np.asarray([row[1] for row in rows], dtype=np.float64).reshape(n, -1))
        columns.append(np.asarray([row[2] for row in rows], dtype=np.float64).reshape(n, 1))
        t = np.asarray([row[5] for row in rows], dtype=np.int32)
        columns.append(t.astype(np.float64).reshape(n, 1))
        if self.metric_rows:
            columns.append(np.asarray(self.metric_rows, dtype=np.float64).reshape(n, -1))
        return StepChunk(
            step_start=self.step - n,
            episode=np.asarray([row[6] for row in rows], dtype=np.int32),
            t=t,
            terminated=np.asarray([row[3] for row in rows], dtype=bool),
            truncated=np.asarray([row[4] for row in rows], dtype=bool),
            variables=np.concatenate(columns, axis=1),
        )

    def flush(self, *, retry: bool = False) -> None:
        """Write the buffered steps and finished episodes as one chunk (one transaction).

        Steps leave the buffers only once their chunk is committed, so a flush interrupted by
        Ctrl-C can be repeated with `retry=True`. A retry first checks whether the interrupted
        transaction had in fact committed, and then only updates the bookkeeping.
        """
        n = len(self.rows)
        run_id = self.run.run_id
        if n == 0:
            if self.finished and not (retry and self.store.has_episode(run_id, self.finished[-1].episode)):
                self.store.add_episodes(self.finished)
            self.finished = []
            return
        if not (retry and self.store.has_step_chunk(run_id, self.chunk)):
            blocks = self.recorder.peek(n)
            activations = {self.layer_ids[name]: block for name, block in blocks.items()}
            self.store.write_chunk(run_id, self.chunk, self.step_chunk(), activations,
                                   self.finished)
        self.recorder.drop(n)
        self.chunk += 1
        self.finished = []
        self.rows.clear()
        self.metric_rows.clear()


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
            state = _Recording(store, run, {n: layer_ids[n] for n in names}, recorder, seed,
                               len(obs_names), accumulators)
            return _run_loop(env, policy, state, chunk_steps, step_metrics, episodes, steps,
                             progress, should_stop)
    finally:
        env.close()


def _post_points(known: dict[str, int]) -> list[str]:
    return [name for name in known if name.endswith(":post")]


def _run_loop(env: Any, policy: Policy, state: _Recording, chunk_steps: int,
              step_metrics: Sequence[StepMetric], episodes: int | None, steps: int | None,
              progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> RunRecord:
    started = time.perf_counter()
    act, env_step, append = policy.act, env.step, state.rows.append
    keep_obs = state.n_obs > 0
    has_metrics = bool(step_metrics or state.accumulators)
    status, error = "complete", None
    try:
        obs, _info = env.reset(seed=state.episode_seed())
        t = 0
        with torch.inference_mode():
            while steps is None or state.step < steps:
                action = act(obs)
                next_obs, reward, terminated, truncated, info = env_step(action)
                if state.step == 0:
                    _check_hooks_fired_once(state.recorder)
                if has_metrics:
                    state.metric_rows.append(_metric_values(state, step_metrics, obs, reward, info))
                # Copy the observation: some environments update one array in place.
                append((np.array(obs) if keep_obs else None, action, reward, terminated, truncated,
                        t, state.episode))
                state.episode_return += reward
                state.step += 1
                t += 1

                if terminated or truncated:
                    state.end_episode(bool(terminated), bool(truncated))
                    if episodes is not None and state.episode >= episodes:
                        break
                    obs, _info = env.reset(seed=state.episode_seed())
                    t = 0
                else:
                    obs = next_obs
                if len(state.rows) == chunk_steps:
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


def _metric_values(state: _Recording, step_metrics: Sequence[StepMetric], obs: Any,
                   reward: float, info: dict[str, Any]) -> list[float]:
    values = [float(metric.fn(obs, reward, info)) for metric in step_metrics]
    for index, accumulator in enumerate(state.accumulators):
        state.accumulated[index] = accumulator.update(state.accumulated[index], obs, reward, info)
        values.append(float(state.accumulated[index]))
    return values


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
        state.flush(retry=True)
    except Exception:  # noqa: BLE001 - the original error matters more; this one is logged
        logger.exception("could not write the last %d buffered steps of run %d",
                         len(state.rows), state.run.run_id)
    try:
        state.store.finish_run(state.run.run_id, status="interrupted", duration_s=duration_s,
                               error=message)
    except Exception:  # noqa: BLE001
        logger.exception("could not mark run %d interrupted", state.run.run_id)
    logger.warning("run %d interrupted after %d steps: %s", state.run.run_id, state.step, message)
