"""The sparse coder: one module for transcoders and autoencoders of every architecture.

    pre     = (x - b_pre) @ W_enc + b_enc              # (B, n_latents)
    latents = activation(pre)                          # sparse, non-negative
    y_hat   = latents @ W_dec + b_dec [+ x @ W_skip]   # (B, d_out)

A transcoder maps a layer's input x to its output y; an autoencoder has y = x. The rows of
W_dec (one direction per latent) are kept at unit norm, so a latent's value is the length of its
contribution to the output.

Activations and their sources:
- TopK keeps the k largest pre-activations of each step (Gao et al. 2024, "Scaling and
  evaluating sparse autoencoders"), which also introduced the AuxK loss and the encoder
  initialised as the decoder's transpose used here.
- BatchTopK keeps the k * B largest over a batch of B steps during training and, at inference,
  every pre-activation above one global threshold estimated during training (Bussmann, Leask and
  Nanda 2024, "BatchTopK Sparse Autoencoders").
- JumpReLU zeroes pre-activations below a learned per-latent threshold and trains the thresholds
  with straight-through estimators of the step function's derivative under a rectangle kernel
  (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
  Sparse Autoencoders").
- ReLU is the plain sparse autoencoder activation, trained with an L1 penalty.
Mapping a layer's input to its output through a sparse bottleneck is the transcoder of Dunefsky
et al. 2024, "Transcoders Find Interpretable LLM Feature Circuits".
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.transcoders.config import ARCHITECTURES

WEIGHTS_FORMAT = 1


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z * H(z - threshold); the threshold's gradient is the straight-through estimate
    -(threshold / bandwidth) * K((z - threshold) / bandwidth) with K the rectangle kernel."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor,
                bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_pre = (pre > threshold).to(pre.dtype) * grad_output
        kernel = _rectangle((pre - threshold) / bandwidth)
        grad_threshold = (-(threshold / bandwidth) * kernel * grad_output).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(z - threshold), counted by the L0 penalty; only the threshold gets a gradient,
    -(1 / bandwidth) * K((z - threshold) / bandwidth)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor,
                bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        kernel = _rectangle((pre - threshold) / bandwidth)
        grad_threshold = (-(1.0 / bandwidth) * kernel * grad_output).sum(dim=0)
        return None, grad_threshold, None


def topk_latents(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of each row (ReLU applied), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def batch_topk_latents(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * B largest positive pre-activations of a (B, n) batch, zero the rest."""
    flat = pre.relu().flatten()
    values, indices = flat.topk(min(k * pre.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)


class SparseCoder(nn.Module):
    """A sparse transcoder (d_in may differ from d_out) or autoencoder, in one module."""

    def __init__(self, d_in: int, d_out: int, n_latents: int, *, architecture: str = "topk",
                 k: int = 8, skip_connection: bool = False, jumprelu_bandwidth: float = 0.05,
                 jumprelu_initial_threshold: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise InvalidArgumentError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}"
            )
        if architecture in ("topk", "batchtopk") and not 1 <= k <= n_latents:
            raise InvalidArgumentError(f"k must be between 1 and n_latents={n_latents}; got {k}")
        self.d_in, self.d_out, self.n_latents = d_in, d_out, n_latents
        self.architecture, self.k = architecture, k
        self.skip_connection = skip_connection
        self.jumprelu_bandwidth = jumprelu_bandwidth

        # Unit-norm decoder rows; the encoder starts as the decoder's transpose when the
        # shapes allow it (Gao et al. 2024), which leaves fewer latents dead early on.
        decoder = torch.randn(n_latents, d_out, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        if d_in == d_out:
            encoder = decoder.t().clone()
        else:
            encoder = torch.randn(d_in, n_latents, generator=generator)
            encoder /= encoder.norm(dim=0, keepdim=True)
        self.W_enc = nn.Parameter(encoder)  # (d_in, n_latents)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(decoder)  # (n_latents, d_out)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        if skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out))
        if architecture == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((n_latents,), float(np.log(jumprelu_initial_threshold))))
        # BatchTopK's inference threshold; negative until training has estimated it.
        self.register_buffer("threshold", torch.tensor(-1.0))

    # Forward pass

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x - self.b_pre, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Turn pre-activations into latents; BatchTopK uses the batch rule only in training."""
        if self.architecture == "topk":
            return topk_latents(pre, self.k)
        if self.architecture == "relu":
            return pre.relu()
        if self.architecture == "jumprelu":
            return _JumpReLU.apply(pre, self.log_threshold.exp(), self.jumprelu_bandwidth)
        if self.training or self.threshold.item() < 0:
            return batch_topk_latents(pre, self.k)
        return pre * (pre > self.threshold).to(pre.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the latents of a (B, d_in) batch as a (B, n_latents) tensor."""
        return self.activate(self.pre_activations(x))

    def decode(self, latents: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Return the (B, d_out) reconstruction; `x` is needed when there is a skip connection."""
        y_hat = torch.addmm(self.b_dec, latents, self.W_dec)
        if self.skip_connection:
            if x is None:
                raise InvalidArgumentError("a transcoder with a skip connection decodes from x too")
            y_hat = y_hat + x @ self.W_skip
        return y_hat

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents, x), latents

    def l0_surrogate(self, pre: torch.Tensor) -> torch.Tensor:
        """Return the mean number of active latents per row, with JumpReLU's threshold gradient."""
        return _Step.apply(pre, self.log_threshold.exp(), self.jumprelu_bandwidth).sum(-1).mean()

    # Constraints applied by the trainer

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Project out the gradient component along each decoder row, which renormalising
        would undo anyway."""
        grad = self.W_dec.grad
        if grad is not None:
            parallel = (grad * self.W_dec).sum(dim=1, keepdim=True)
            grad -= parallel * self.W_dec

    @torch.no_grad()
    def fold_normalization_(self, input_scale: float, output_scale: float) -> None:
        """Make a coder trained on x / input_scale -> y / output_scale act on raw x and y.

        Latents are multiplied by output_scale, so decoder rows keep unit norm and latents come
        out in the output layer's units; TopK, ReLU and the thresholds commute with that
        positive scaling.
        """
        ratio = output_scale / input_scale
        self.b_pre *= input_scale
        self.W_enc *= ratio
        self.b_enc *= output_scale
        self.b_dec *= output_scale
        if self.skip_connection:
            self.W_skip *= ratio
        if self.architecture == "jumprelu":
            self.log_threshold += float(np.log(output_scale))
        if self.threshold.item() >= 0:
            self.threshold *= output_scale

    # Serialisation

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "format": WEIGHTS_FORMAT, "d_in": self.d_in, "d_out": self.d_out,
            "n_latents": self.n_latents, "architecture": self.architecture, "k": self.k,
            "skip_connection": self.skip_connection, "jumprelu_bandwidth": self.jumprelu_bandwidth,
        }

    def to_bytes(self) -> bytes:
        """Serialise hyperparameters and weights as an .npz archive (no pickled objects)."""
        arrays = {name: value.detach().cpu().numpy() for name, value in self.state_dict().items()}
        meta = np.frombuffer(json.dumps(self.hyperparameters()).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, __meta__=meta, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SparseCoder:
        """Rebuild a coder saved by `to_bytes`, in eval mode."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode())
            state = {name: torch.from_numpy(archive[name].copy())
                     for name in archive.files if name != "__meta__"}
        if meta.get("format") != WEIGHTS_FORMAT:
            raise InvalidArgumentError(
                f"transcoder weights have format {meta.get('format')!r}; this interlatent reads "
                f"format {WEIGHTS_FORMAT}; upgrade interlatent"
            )
        model = cls(meta["d_in"], meta["d_out"], meta["n_latents"],
                    architecture=meta["architecture"], k=meta["k"],
                    skip_connection=meta["skip_connection"],
                    jumprelu_bandwidth=meta["jumprelu_bandwidth"])
        model.load_state_dict(state)
        return model.eval()
