"""Reconstruction metrics of a sparse coder, with the public definitions.

- FVU (fraction of variance unexplained) = sum of squared errors / sum of squared deviations of
  the target from its mean, the mean taken per dimension over the evaluated steps.
- Explained variance = 1 - FVU.
- Mean L0 = mean number of nonzero latents per step.
- Dead fraction = fraction of latents that are zero on every evaluated step.
- Latent density = fraction of steps on which a latent is nonzero; its histogram is over
  log10(density) for the latents that fire at least once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from interlatent_mcp.transcoders.model import SparseCoder

# log10(density) bin edges of the latent density histogram: half-decade bins from 1e-6 to 1.
DENSITY_EDGES: tuple[float, ...] = tuple(np.round(np.arange(-6.0, 0.01, 0.5), 2).tolist())
EVALUATION_BATCH = 4096


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Reconstruction quality and sparsity of a coder on a set of steps."""

    n_steps: int
    fvu: float
    explained_variance: float
    mse: float
    """Mean squared error per output element, in the output layer's units."""
    mean_l0: float
    dead_fraction: float
    n_dead: int
    density_edges: list[float]
    """Bin edges of log10(latent density); densities below 1e-6 fall in the first bin."""
    density_counts: list[int]
    """Latents per bin; dead latents are counted in `n_dead`, not here."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricsAccumulator:
    """Accumulates the sums behind `ReconstructionMetrics` batch by batch, in float64."""

    def __init__(self, d_out: int, n_latents: int) -> None:
        self.n_steps = 0
        self.squared_error = 0.0
        self.target_sum = np.zeros(d_out)
        self.target_square_sum = np.zeros(d_out)
        self.active_total = 0
        self.fire_counts = np.zeros(n_latents, dtype=np.int64)

    def update(self, y: np.ndarray, y_hat: np.ndarray, latents: np.ndarray) -> None:
        y64 = y.astype(np.float64)
        self.n_steps += len(y)
        self.squared_error += float(((y_hat.astype(np.float64) - y64) ** 2).sum())
        self.target_sum += y64.sum(axis=0)
        self.target_square_sum += (y64 ** 2).sum(axis=0)
        active = latents != 0
        self.active_total += int(active.sum())
        self.fire_counts += active.sum(axis=0)

    def result(self) -> ReconstructionMetrics:
        n = max(self.n_steps, 1)
        # Sum over dimensions of sum_i (y_i - mean)^2 = sum y^2 - (sum y)^2 / n.
        variance_total = float((self.target_square_sum - self.target_sum ** 2 / n).sum())
        fvu = self.squared_error / variance_total if variance_total > 0 else float("nan")
        density = self.fire_counts / n
        alive = density > 0
        counts, _ = np.histogram(np.clip(np.log10(density[alive]), DENSITY_EDGES[0], 0.0),
                                 bins=np.asarray(DENSITY_EDGES))
        n_dead = int((~alive).sum())
        return ReconstructionMetrics(
            n_steps=self.n_steps,
            fvu=fvu,
            explained_variance=1.0 - fvu,
            mse=self.squared_error / (n * len(self.target_sum)),
            mean_l0=self.active_total / n,
            dead_fraction=n_dead / len(self.fire_counts),
            n_dead=n_dead,
            density_edges=list(DENSITY_EDGES),
            density_counts=[int(c) for c in counts],
        )


@torch.no_grad()
def run_coder(model: SparseCoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (reconstruction, latents) of a (n, d_in) array, in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        outputs, latents = [], []
        for start in range(0, len(x), EVALUATION_BATCH):
            block = np.require(x[start:start + EVALUATION_BATCH], np.float32, ["C", "W"])
            y_hat, z = model(torch.from_numpy(block))
            outputs.append(y_hat.numpy())
            latents.append(z.numpy())
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, model.d_out), np.float32), np.zeros((0, model.n_latents), np.float32)
    return np.concatenate(outputs), np.concatenate(latents)


def compute_reconstruction_metrics(model: SparseCoder, x: np.ndarray,
                                   y: np.ndarray) -> ReconstructionMetrics:
    """Evaluate a coder on paired (n, d_in) inputs and (n, d_out) targets held in memory."""
    accumulator = MetricsAccumulator(model.d_out, model.n_latents)
    for start in range(0, len(x), EVALUATION_BATCH):
        stop = start + EVALUATION_BATCH
        y_hat, latents = run_coder(model, x[start:stop])
        accumulator.update(y[start:stop], y_hat, latents)
    return accumulator.result()


def accumulate_blocks(model: SparseCoder,
                      blocks: Iterable[tuple[np.ndarray, np.ndarray]]) -> ReconstructionMetrics:
    """Evaluate a coder over (input block, target block) pairs streamed from the store."""
    accumulator = MetricsAccumulator(model.d_out, model.n_latents)
    for x, y in blocks:
        if len(x):
            y_hat, latents = run_coder(model, x)
            accumulator.update(y, y_hat, latents)
    return accumulator.result()
