"""A trained coder's latents recorded as a layer of the policy, for every analysis tool to use."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.store import LayerRecord, Store
from interlatent_mcp.store.transcoders import TranscoderRecord
from interlatent_mcp.transcoders.data import check_runs, iter_run_blocks
from interlatent_mcp.transcoders.model import SparseCoder

logger = logging.getLogger(__name__)

LATENT_LAYER_KIND = "transcoder"


def latent_layer_name(transcoder_name: str) -> str:
    """Return the layer name under which a transcoder's latents are recorded."""
    return f"transcoder/{transcoder_name}"


def load_coder(store: Store, record: TranscoderRecord) -> SparseCoder:
    """Rebuild a stored transcoder's module from its weights."""
    return SparseCoder.from_bytes(store.get_transcoder_weights(record.transcoder_id))


def record_latents(store: Store, transcoder: int | str | TranscoderRecord,
                   run_ids: Sequence[int] | None = None, *,
                   coder: SparseCoder | None = None) -> LayerRecord:
    """Write a transcoder's latents for every step of the runs as the layer `transcoder/<name>`.

    The runs (by default those it was trained on) must have recorded the transcoder's input
    layer. Runs that already have the latent layer are left as they are. Chunks line up with
    the runs' step chunks, so statistics, correlations and top activations work on latents as
    on channels.
    """
    record = transcoder if isinstance(transcoder, TranscoderRecord) else store.get_transcoder(transcoder)
    coder = coder if coder is not None else load_coder(store, record)
    name = latent_layer_name(record.name)
    layer = store.add_layer(record.policy_id, name, coder.n_latents, kind=LATENT_LAYER_KIND)
    if layer.width != coder.n_latents or layer.kind != LATENT_LAYER_KIND:
        raise InvalidArgumentError(
            f"policy {record.policy_id} already has a layer {name!r} of kind {layer.kind!r} and "
            f"width {layer.width}, which does not fit transcoder {record.name!r} with "
            f"{coder.n_latents} latents"
        )
    if record.latent_layer_id != layer.layer_id:
        store.set_transcoder_latent_layer(record.transcoder_id, layer.layer_id)

    selected = list(run_ids) if run_ids is not None else list(record.config["data"]["run_ids"])
    runs = check_runs(store, selected, [record.input_layer])
    for run in runs:
        if run.policy_id != record.policy_id:
            raise InvalidArgumentError(
                f"run {run.run_id} is of policy {run.policy_id}, but transcoder {record.name!r} "
                f"was trained on policy {record.policy_id}"
            )
        if name in run.layers:
            logger.debug("run %d already has layer %s", run.run_id, name)
            continue
        _write_run_latents(store, run.run_id, record.input_layer, layer.layer_id, coder)
    return layer


@torch.no_grad()
def _write_run_latents(store: Store, run_id: int, input_layer: str, layer_id: int,
                       coder: SparseCoder) -> None:
    # Chunks of an earlier, interrupted write would collide with the new ones.
    store.delete_activation_chunks(run_id, layer_id)
    coder.eval()
    for index, steps, x, _ in iter_run_blocks(store, run_id, input_layer, input_layer):
        latents = coder.encode(torch.from_numpy(x.copy())).numpy()
        store.write_activation_chunk(run_id, layer_id, index, steps.step_start, latents)
    store.add_run_layer(run_id, layer_id)
    logger.info("recorded the latents of layer %d for run %d", layer_id, run_id)
