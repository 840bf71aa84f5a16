"""Hyperparameters of a sparse transcoder or autoencoder and of its training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from interlatent_mcp.errors import InvalidArgumentError

Architecture = Literal["topk", "batchtopk", "relu", "jumprelu"]
ARCHITECTURES: tuple[str, ...] = ("topk", "batchtopk", "relu", "jumprelu")
BiasInit = Literal["geometric_median", "mean", "zeros"]
BIAS_INITS: tuple[str, ...] = ("geometric_median", "mean", "zeros")


@dataclass(frozen=True)
class TranscoderConfig:
    """The architecture, size and training settings of a coder, validated at construction."""

    architecture: Architecture = "topk"
    """Sparsity mechanism: 'topk' (k largest latents per step), 'batchtopk' (k per step on
    average over a batch, a learned threshold at inference), 'relu' (ReLU with an L1 penalty)
    or 'jumprelu' (per-latent learned thresholds with an L0 penalty)."""

    n_latents: int | None = None
    """Number of latents; None means 4 times the output layer's width."""

    k: int = 8
    """Active latents per step for 'topk' and (on average) for 'batchtopk'."""

    skip_connection: bool = False
    """Add a linear map from input to output next to the sparse path (transcoders only)."""

    l1_coefficient: float = 0.3
    """Weight of the L1 penalty on the latents ('relu'). The reconstruction loss it is added to
    is the squared error summed over output channels, in normalised units."""

    l0_coefficient: float = 0.1
    """Weight of the L0 penalty, the number of active latents per step ('jumprelu')."""

    jumprelu_initial_threshold: float = 0.05
    """Initial threshold of every 'jumprelu' latent, in normalised units."""

    jumprelu_bandwidth: float = 0.05
    """Width of the rectangle kernel in the straight-through threshold gradient ('jumprelu')."""

    learning_rate: float = 2e-3
    """Adam learning rate after warm-up."""

    warmup_steps: int = 100
    """Optimizer steps over which the learning rate rises linearly from 0."""

    batch_size: int = 256
    """Steps (activation vectors) per optimizer step."""

    max_epochs: int = 100
    """Upper bound on passes over the training episodes."""

    patience: int = 8
    """Stop after this many epochs without a validation loss improvement of `min_improvement`."""

    min_improvement: float = 1e-3
    """Relative decrease of the validation loss that counts as an improvement."""

    aux_k: int | None = None
    """Dead latents used by the auxiliary loss; None means half the output width, at least 1."""

    aux_coefficient: float = 1 / 32
    """Weight of the auxiliary (AuxK) loss; 0 turns it off."""

    dead_after: int | None = None
    """A latent that has not fired on this many consecutive training steps counts as dead for
    the auxiliary loss; None means one epoch of training data."""

    bias_init: BiasInit = "geometric_median"
    """Initial pre-encoder and decoder biases: the geometric median or the mean of the data."""

    normalize: bool = True
    """Scale input and output to unit mean variance per dimension during training; the scales
    are folded into the saved weights."""

    held_out_fraction: float = 0.2
    """Fraction of episodes kept out of training for the final evaluation."""

    validation_fraction: float = 0.1
    """Fraction of episodes used for early stopping (disjoint from the held-out ones)."""

    seed: int = 0
    """Seed of the episode split, the initialisation and the batch order."""

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("bias_init", self.bias_init, BIAS_INITS)
        if self.n_latents is not None:
            _check_int("n_latents", self.n_latents, 1)
        _check_int("k", self.k, 1)
        if self.uses_k and self.n_latents is not None and self.k > self.n_latents:
            raise InvalidArgumentError(
                f"k={self.k} is larger than n_latents={self.n_latents}; use k <= n_latents"
            )
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient", "min_improvement"):
            _check_float(name, getattr(self, name), 0.0, None)
        for name in ("jumprelu_initial_threshold", "jumprelu_bandwidth", "learning_rate"):
            _check_float(name, getattr(self, name), 0.0, None, strict=True)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_epochs", self.max_epochs, 1)
        _check_int("patience", self.patience, 1)
        if self.aux_k is not None:
            _check_int("aux_k", self.aux_k, 1)
        if self.dead_after is not None:
            _check_int("dead_after", self.dead_after, 1)
        _check_float("held_out_fraction", self.held_out_fraction, 0.0, 0.9, strict=True)
        _check_float("validation_fraction", self.validation_fraction, 0.0, 0.9, strict=True)
        if self.held_out_fraction + self.validation_fraction >= 1.0:
            raise InvalidArgumentError(
                f"held_out_fraction ({self.held_out_fraction}) + validation_fraction "
                f"({self.validation_fraction}) must be below 1 so that episodes remain to train on"
            )
        _check_int("seed", self.seed, 0)

    @property
    def uses_k(self) -> bool:
        return self.architecture in ("topk", "batchtopk")

    def latents_for(self, output_width: int) -> int:
        """Return the number of latents for an output layer of `output_width` channels."""
        n_latents = self.n_latents if self.n_latents is not None else 4 * output_width
        if self.uses_k and self.k > n_latents:
            raise InvalidArgumentError(
                f"k={self.k} is larger than the {n_latents} latents; lower k or raise n_latents"
            )
        return n_latents

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TranscoderConfig:
        """Build a config from a dict; unknown keys are rejected with the list of valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown transcoder settings {unknown}; valid settings: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float | None,
                 *, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise InvalidArgumentError(f"{name} must be a number {bound}; got {value!r}")
