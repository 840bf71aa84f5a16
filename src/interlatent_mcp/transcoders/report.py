"""Plain-text summaries of transcoders, for the command line and the demo."""

from __future__ import annotations

from interlatent_mcp.store import Store
from interlatent_mcp.store.transcoders import TranscoderRecord
from interlatent_mcp.transcoders.splice import SpliceFidelity


def describe_transcoder(store: Store, record: TranscoderRecord) -> str:
    """Return a few lines on a stored transcoder: layers, size, training and held-out metrics."""
    kind = "autoencoder" if record.input_layer == record.output_layer else "transcoder"
    layers = (record.input_layer if kind == "autoencoder"
              else f"{record.input_layer} -> {record.output_layer}")
    hyperparameters = record.config.get("hyperparameters", {})
    size = f"{record.config.get('n_latents')} latents"
    if record.architecture in ("topk", "batchtopk"):
        size += f", k={hyperparameters.get('k')}"
    lines = [f"{kind} {record.name!r} (id {record.transcoder_id}): {record.architecture} {layers}, "
             f"{size}"]
    training = record.metrics.get("training")
    if training:
        lines.append(f"  trained {training['epochs']} epochs (best {training['best_epoch']}, "
                     f"stopped: {training['stopped']}) in {training['train_seconds']:.1f} s, "
                     f"{training['activations_per_second']:.0f} activations/s")
    held_out = record.metrics.get("held_out")
    if held_out:
        lines.append(f"  held-out ({held_out['n_steps']} steps): FVU {held_out['fvu']:.4f}, "
                     f"mean L0 {held_out['mean_l0']:.2f}, dead fraction "
                     f"{held_out['dead_fraction']:.3f} ({held_out['n_dead']} latents)")
    if record.latent_layer_id is not None:
        layer = store.get_layer_by_id(record.latent_layer_id)
        lines.append(f"  latents recorded as layer {layer.name}")
    return "\n".join(lines)


def describe_splice(fidelity: SpliceFidelity) -> str:
    """Return one line on a splice-in measurement."""
    ratio = "n/a" if fidelity.return_ratio is None else f"{fidelity.return_ratio:.3f}"
    return (f"  splice-in ({fidelity.episodes} episodes from seed {fidelity.seed}): mean return "
            f"{fidelity.spliced_mean_return:.1f} vs {fidelity.original_mean_return:.1f} "
            f"original (ratio {ratio}), action agreement {fidelity.action_agreement:.3f}")
