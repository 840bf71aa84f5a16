"""Training, storing, loading and evaluating transcoders against the store."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interlatent_mcp.capture.policies import Policy, load_policy
from interlatent_mcp.errors import InvalidArgumentError, NotFoundError, UnknownPolicyError
from interlatent_mcp.store import LayerRecord, Store
from interlatent_mcp.store.transcoders import TranscoderRecord
from interlatent_mcp.transcoders.config import TranscoderConfig
from interlatent_mcp.transcoders.data import (
    EpisodeSplit,
    PairedActivations,
    check_runs,
    episode_mask,
    geometric_median,
    iter_run_blocks,
    load_paired_activations,
    normalize_layer_names,
    split_episodes,
)
from interlatent_mcp.transcoders.evaluation import (
    ReconstructionMetrics,
    accumulate_blocks,
    compute_reconstruction_metrics,
)
from interlatent_mcp.transcoders.latents import load_coder, record_latents
from interlatent_mcp.transcoders.model import SparseCoder
from interlatent_mcp.transcoders.splice import SpliceFidelity, measure_splice_fidelity
from interlatent_mcp.transcoders.training import ProgressCallback, TrainingHistory, fit

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainedTranscoder:
    """The outcome of `train_transcoder`."""

    record: TranscoderRecord
    coder: SparseCoder
    history: TrainingHistory
    held_out: ReconstructionMetrics
    latent_layer: LayerRecord | None


def train_transcoder(
    store: Store,
    run_ids: Sequence[int],
    input_layer: str,
    output_layer: str | None = None,
    *,
    config: TranscoderConfig | None = None,
    name: str | None = None,
    latents_as_layer: bool = True,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainedTranscoder:
    """Train a transcoder (input_layer -> output_layer) or an autoencoder (no output_layer).

    Reads both layers of the runs from the store and splits their episodes into training,
    validation (early stopping) and held-out sets. Trains, evaluates on the held-out episodes
    and stores the coder under `name` (generated when None). Unless `latents_as_layer` is
    False, it also records the coder's latents for the runs as the layer `transcoder/<name>`. When
    `should_stop()` returns True training ends after the current epoch and the best weights so
    far are stored, with `metrics["training"]["stopped"] == "requested"`.
    """
    config = config or TranscoderConfig()
    source, target = normalize_layer_names(input_layer, output_layer)
    if config.skip_connection and source == target:
        raise InvalidArgumentError(
            "skip_connection applies to transcoders only; give an output layer different from "
            f"the input layer {source!r}, or set skip_connection=False"
        )
    runs = check_runs(store, run_ids, [source, target])
    name = _choose_name(store, name, source, target, config)
    data = load_paired_activations(store, runs, source, target)
    result = train_coder(data, config, progress=progress, should_stop=should_stop)
    logger.info("transcoder %s: held-out FVU %.4f, mean L0 %.2f, dead fraction %.3f", name,
                result.held_out.fvu, result.held_out.mean_l0, result.held_out.dead_fraction)
    record = store.add_transcoder(
        name=name, policy_id=runs[0].policy_id, input_layer=source, output_layer=target,
        architecture=config.architecture,
        config=_describe_config(config, result, [run.run_id for run in runs]),
        metrics={"held_out": result.held_out.to_dict(), "training": result.history.to_dict()},
        weights=result.coder.to_bytes(),
    )
    layer = None
    if latents_as_layer:
        if progress is not None:
            done = result.history.epochs
            progress(done, done, "recording the latents as a layer")
        layer = record_latents(store, record, [run.run_id for run in runs], coder=result.coder)
        record = store.get_transcoder(record.transcoder_id)
    return TrainedTranscoder(record, result.coder, result.history, result.held_out, layer)


@dataclass(frozen=True)
class CoderFit:
    """A coder trained on in-memory activations, with its split and held-out metrics."""

    coder: SparseCoder
    history: TrainingHistory
    split: EpisodeSplit
    held_out: ReconstructionMetrics
    input_scale: float
    output_scale: float


def train_coder(data: PairedActivations, config: TranscoderConfig, *,
                progress: ProgressCallback | None = None,
                should_stop: Callable[[], bool] | None = None) -> CoderFit:
    """Split `data` by episode, train a coder on it and evaluate it on the held-out episodes.

    This is `train_transcoder` without the store: the coder is returned, not saved.
    """
    split = split_episodes(data.episode_keys(), config.held_out_fraction,
                           config.validation_fraction, config.seed)
    coder, history, (input_scale, output_scale) = _train_on_split(
        data, split, config, progress, should_stop)
    held_out_mask = data.mask(split.held_out)
    held_out = compute_reconstruction_metrics(coder, data.x[held_out_mask], data.y[held_out_mask])
    return CoderFit(coder, history, split, held_out, input_scale, output_scale)


def _train_on_split(data: PairedActivations, split: EpisodeSplit, config: TranscoderConfig,
                    progress: ProgressCallback | None, should_stop: Callable[[], bool] | None,
                    ) -> tuple[SparseCoder, TrainingHistory, tuple[float, float]]:
    autoencoder = data.x is data.y
    train, validation = data.mask(split.train), data.mask(split.validation)
    x_train = torch.from_numpy(data.x[train])
    y_train = x_train if autoencoder else torch.from_numpy(data.y[train])
    input_scale = _scale(x_train) if config.normalize else 1.0
    output_scale = input_scale if autoencoder or not config.normalize else _scale(y_train)

    x_train = x_train / input_scale
    y_train = x_train if autoencoder else y_train / output_scale
    x_validation = torch.from_numpy(data.x[validation]) / input_scale
    y_validation = torch.from_numpy(data.y[validation]) / output_scale

    generator = torch.Generator().manual_seed(config.seed)
    d_in, d_out = data.x.shape[1], data.y.shape[1]
    coder = SparseCoder(d_in, d_out, config.latents_for(d_out), architecture=config.architecture,
                        k=config.k, skip_connection=config.skip_connection,
                        jumprelu_bandwidth=config.jumprelu_bandwidth,
                        jumprelu_initial_threshold=config.jumprelu_initial_threshold,
                        generator=generator)
    _initialise_biases(coder, x_train, y_train, config)
    history = fit(coder, x_train, y_train, x_validation, y_validation, config,
                  generator=generator, progress=progress, should_stop=should_stop)
    coder.fold_normalization_(input_scale, output_scale)
    return coder, history, (input_scale, output_scale)


def _scale(values: torch.Tensor) -> float:
    """Return the root mean squared deviation per dimension, or 1 for a constant layer."""
    centred = values.double() - values.double().mean(0)
    scale = float(centred.pow(2).mean().sqrt())
    return scale if scale > 0 else 1.0


@torch.no_grad()
def _initialise_biases(coder: SparseCoder, x: torch.Tensor, y: torch.Tensor,
                       config: TranscoderConfig) -> None:
    """Start the pre-encoder bias at the centre of the inputs and the decoder bias at the
    centre of the outputs, so latents start by encoding deviations from a typical step."""
    if config.bias_init == "zeros":
        return
    for bias, values in ((coder.b_pre, x), (coder.b_dec, y)):
        if config.bias_init == "mean":
            centre = values.double().mean(0).numpy()
        else:
            centre = geometric_median(values.numpy(), seed=config.seed)
        bias.copy_(torch.from_numpy(np.asarray(centre, dtype=np.float32)))


def _describe_config(config: TranscoderConfig, result: CoderFit,
                     run_ids: list[int]) -> dict[str, Any]:
    coder, split = result.coder, result.split
    return {
        "hyperparameters": config.to_dict(),
        "n_latents": coder.n_latents,
        "data": {
            "run_ids": run_ids,
            "d_in": coder.d_in,
            "d_out": coder.d_out,
            "train_episodes": [list(key) for key in split.train],
            "validation_episodes": [list(key) for key in split.validation],
            "held_out_episodes": [list(key) for key in split.held_out],
        },
        "normalization": {"input_scale": result.input_scale, "output_scale": result.output_scale},
    }


def _choose_name(store: Store, name: str | None, source: str, target: str,
                 config: TranscoderConfig) -> str:
    """Validate a requested name, or generate a free one like 'act2-transcoder-topk'."""
    if name is not None:
        store.check_transcoder_name(name)
        return name
    kind = "sae" if source == target else "transcoder"
    module = target.replace(":", "-") if source == target else target.split(":")[0]
    base = f"{module}-{kind}-{config.architecture}"
    candidate, number = base, 1
    while _name_taken(store, candidate):
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def _name_taken(store: Store, name: str) -> bool:
    try:
        store.get_transcoder(name)
    except NotFoundError:
        return False
    return True


@dataclass(frozen=True)
class LoadedTranscoder:
    """A stored transcoder's record and its module, ready to encode or splice."""

    record: TranscoderRecord
    coder: SparseCoder


def load_transcoder(store: Store, transcoder: int | str) -> LoadedTranscoder:
    """Return a stored transcoder by id or name, with its module rebuilt in eval mode."""
    record = store.get_transcoder(transcoder)
    return LoadedTranscoder(record, load_coder(store, record))


def evaluate_transcoder(store: Store, transcoder: int | str,
                        run_ids: Sequence[int] | None = None) -> ReconstructionMetrics:
    """Measure FVU, L0 and dead latents on the held-out episodes, or on every step of `run_ids`.

    Reads the store chunk by chunk, so the runs may be larger than memory.
    """
    loaded = load_transcoder(store, transcoder)
    record = loaded.record
    data = record.config["data"]
    held_out = None if run_ids is not None else [tuple(key) for key in data["held_out_episodes"]]
    runs = check_runs(store, run_ids if run_ids is not None else data["run_ids"],
                      [record.input_layer, record.output_layer])
    for run in runs:
        if run.policy_id != record.policy_id:
            raise InvalidArgumentError(
                f"run {run.run_id} is of policy {run.policy_id}, but transcoder {record.name!r} "
                f"was trained on policy {record.policy_id}")
    return accumulate_blocks(loaded.coder, _evaluation_blocks(store, record, runs, held_out))


def _evaluation_blocks(store: Store, record: TranscoderRecord, runs: Sequence[Any],
                       episodes: list[tuple[int, int]] | None,
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for run in runs:
        for _index, steps, x, y in iter_run_blocks(store, run.run_id, record.input_layer,
                                                   record.output_layer):
            if episodes is None:
                yield x, y
                continue
            run_ids = np.full(steps.n_steps, run.run_id, dtype=np.int64)
            mask = episode_mask(run_ids, steps.episode, episodes)
            yield x[mask], y[mask]


def compute_splice_fidelity(store: Store, transcoder: int | str, *, episodes: int = 10,
                            seed: int = 0, policy: Policy | str | None = None,
                            env_id: str | None = None, save: bool = True) -> SpliceFidelity:
    """Run the policy with the transcoder spliced in, against the original, on paired seeds.

    The policy defaults to the one the transcoder was trained on, reloaded from its source (a
    built-in name or an SB3 file). A policy defined in Python code must be passed in. The
    environment defaults to that of the first training run. With `save`, the result is stored
    in the transcoder's metrics under "splice".
    """
    loaded = load_transcoder(store, transcoder)
    record = loaded.record
    policy_record = store.get_policy(record.policy_id)
    resolved = _resolve_policy(policy if policy is not None else policy_record.source,
                               policy_record.fingerprint)
    first_run = store.get_run(record.config["data"]["run_ids"][0])
    env_kwargs = first_run.env_kwargs if env_id is None else {}
    result = measure_splice_fidelity(
        resolved, loaded.coder, record.input_layer, record.output_layer,
        env_id=env_id or first_run.env_id, env_kwargs=env_kwargs, episodes=episodes, seed=seed)
    if save:
        store.update_transcoder_metrics(record.transcoder_id, {"splice": result.to_dict()})
    return result


def _resolve_policy(policy: Policy | str, fingerprint: str) -> Policy:
    if isinstance(policy, str) and policy.startswith("python:"):
        raise UnknownPolicyError(
            f"the transcoder's policy was defined in Python code ({policy}); pass the Policy "
            f"object as `policy`"
        )
    resolved = load_policy(policy)
    if resolved.fingerprint() != fingerprint:
        raise InvalidArgumentError(
            f"policy {resolved.name!r} has other weights than the policy the transcoder was "
            f"trained on; pass that policy"
        )
    return resolved
