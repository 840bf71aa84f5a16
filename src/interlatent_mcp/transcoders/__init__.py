"""Sparse transcoders and autoencoders trained on recorded activations.

`train_transcoder` reads a layer's input and output (or one layer, for an autoencoder) from
the store and trains a TopK, BatchTopK, ReLU or JumpReLU coder, stopping early on validation
episodes. It stores the coder and records its latents as the layer `transcoder/<name>`.
`evaluate_transcoder` measures FVU, L0 and dead latents; `compute_splice_fidelity` runs the
policy with the coder spliced in.
"""

from interlatent_mcp.store.transcoders import TranscoderRecord
from interlatent_mcp.transcoders.config import ARCHITECTURES, TranscoderConfig
from interlatent_mcp.transcoders.data import PairedActivations
from interlatent_mcp.transcoders.evaluation import (
    ReconstructionMetrics,
    compute_reconstruction_metrics,
)
from interlatent_mcp.transcoders.latents import latent_layer_name, record_latents
from interlatent_mcp.transcoders.model import SparseCoder
from interlatent_mcp.transcoders.splice import SpliceFidelity, measure_splice_fidelity, splice
from interlatent_mcp.transcoders.training import TrainingHistory, fit
from interlatent_mcp.transcoders.workflow import (
    CoderFit,
    LoadedTranscoder,
    TrainedTranscoder,
    compute_splice_fidelity,
    evaluate_transcoder,
    load_transcoder,
    train_coder,
    train_transcoder,
)

__all__ = [
    "ARCHITECTURES",
    "CoderFit",
    "LoadedTranscoder",
    "PairedActivations",
    "ReconstructionMetrics",
    "SparseCoder",
    "SpliceFidelity",
    "TrainedTranscoder",
    "TranscoderConfig",
    "TranscoderRecord",
    "TrainingHistory",
    "compute_reconstruction_metrics",
    "compute_splice_fidelity",
    "evaluate_transcoder",
    "fit",
    "latent_layer_name",
    "load_transcoder",
    "measure_splice_fidelity",
    "record_latents",
    "splice",
    "train_coder",
    "train_transcoder",
]
