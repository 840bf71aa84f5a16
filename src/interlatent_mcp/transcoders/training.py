"""The training loop of a sparse coder on in-memory (normalised) activations.

Each optimizer step: forward, reconstruction loss plus the architecture's sparsity penalty plus
the AuxK loss on dead latents, backward, removal of the decoder gradient along each decoder row,
Adam with linear learning-rate warm-up, and renormalisation of the decoder rows. After every
epoch the loss on the validation episodes decides early stopping, and the best epoch's weights
are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from interlatent_mcp.transcoders.config import TranscoderConfig
from interlatent_mcp.transcoders.model import SparseCoder, topk_latents

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float, str], None]
"""Called as progress(done, total, message) with done and total in epochs."""

# Models with fewer weights than this train on one thread: for them the cost of dispatching
# work to several threads exceeds the work itself.
SINGLE_THREAD_MAX_WEIGHTS = 1_000_000
# Weight of the newest batch in BatchTopK's running threshold estimate.
THRESHOLD_MOMENTUM = 0.01
VALIDATION_BATCH = 4096
# Rows of each batch that the AuxK loss is computed on.
AUX_ROWS = 32
# Optimizer steps between two checks of a stop request within an epoch.
STOP_CHECK_STEPS = 50


@dataclass(frozen=True)
class TrainingHistory:
    """The course of one training: epochs, speed, stopping reason and validation losses."""

    epochs: int
    best_epoch: int
    optimizer_steps: int
    train_seconds: float
    activations_per_second: float
    """Training steps (activation vectors) processed per second; the time includes the
    validation after each epoch."""
    stopped: Literal["converged", "max_epochs", "requested"]
    validation_losses: list[float] = field(default_factory=list)
    dead_at_end: int = 0
    """Latents flagged dead (no firing for `dead_after` steps) when training ended."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def single_thread_if_small(model: SparseCoder) -> Iterator[None]:
    """Run the block with one torch thread when the model is small, then restore the setting.

    NOTE: the thread count is process-wide, so other torch work running at the same time (a
    second job in the server) runs on one thread too until the block ends.
    """
    n_weights = sum(p.numel() for p in model.parameters())
    previous = torch.get_num_threads()
    if n_weights <= SINGLE_THREAD_MAX_WEIGHTS and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class Trainer:
    """One optimizer step at a time, with dead-latent tracking for the AuxK loss."""

    def __init__(self, model: SparseCoder, config: TranscoderConfig, n_train: int) -> None:
        self.model = model
        self.config = config
        self.optimizer = _adam(model, config.learning_rate)
        self.steps_done = 0
        self.examples_seen = 0
        # Training steps (activation vectors) since each latent last fired.
        self.since_fired = torch.zeros(model.n_latents)
        self.dead_after = config.dead_after if config.dead_after is not None else n_train
        self.aux_k = config.aux_k if config.aux_k is not None else max(1, model.d_out // 2)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model = self.model
        self._warm_up()
        pre = model.pre_activations(x)  # (B, n_latents)
        latents = model.activate(pre)
        y_hat = model.decode(latents, x)  # (B, d_out)
        loss = F.mse_loss(y_hat, y, reduction="sum") / len(x)
        if model.architecture in ("relu", "jumprelu"):
            loss = loss + self.sparsity_penalty(pre, latents)
        aux = self._aux_loss(pre, y - y_hat)
        if aux is not None:
            loss = loss + self.config.aux_coefficient * aux

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_parallel_decoder_grad_()
        self.optimizer.step()
        model.normalize_decoder_()
        self._track_firing(latents.detach())
        self.steps_done += 1
        self.examples_seen += len(x)

    def sparsity_penalty(self, pre: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | float:
        if self.model.architecture == "relu":
            # Decoder rows have unit norm, so the L1 norm of the latents is the usual
            # decoder-norm-weighted penalty.
            return self.config.l1_coefficient * latents.sum(-1).mean()
        if self.model.architecture == "jumprelu":
            return self.config.l0_coefficient * self.model.l0_surrogate(pre)
        return 0.0

    def _warm_up(self) -> None:
        warmup = self.config.warmup_steps
        if self.steps_done <= warmup:
            scale = min(1.0, (self.steps_done + 1) / (warmup + 1))
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate * scale

    def _aux_loss(self, pre: torch.Tensor, error: torch.Tensor) -> torch.Tensor | None:
        """AuxK (Gao et al. 2024): reconstruct the residual error from the top-k_aux dead
        latents, so that dead latents get a gradient. Divided by the error's variance so that
        the coefficient does not depend on how good the main reconstruction already is."""
        if self.config.aux_coefficient == 0:
            return None
        alive = self.since_fired < self.dead_after
        n_dead = self.model.n_latents - int(alive.sum())
        if n_dead == 0:
            return None
        # NOTE: only the first AUX_ROWS rows of the batch enter the auxiliary loss. Batches are
        # shuffled, so these rows are a random sample, and the extra top-k stays cheap.
        dead_pre = pre[:AUX_ROWS].masked_fill(alive, float("-inf"))  # (AUX_ROWS, n_latents)
        # Decoded without biases: the dead latents model the residual error.
        aux_reconstruction = topk_latents(dead_pre, min(self.aux_k, n_dead)) @ self.model.W_dec
        target = error[:AUX_ROWS].detach()
        variance = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
        return F.mse_loss(aux_reconstruction, target, reduction="sum") / variance

    @torch.no_grad()
    def _track_firing(self, latents: torch.Tensor) -> None:
        fired = latents.amax(dim=0) > 0  # much cheaper than (latents > 0).any(dim=0)
        self.since_fired += latents.shape[0]
        self.since_fired.masked_fill_(fired, 0)
        if self.model.architecture == "batchtopk":
            # BatchTopK's inference threshold: the smallest latent kept in each batch, averaged
            # over batches (Bussmann et al. 2024), here as an exponential moving average.
            positive = latents[latents > 0]
            if positive.numel():
                smallest = positive.min()
                threshold = self.model.threshold
                if threshold < 0:
                    threshold.copy_(smallest)
                else:
                    threshold.lerp_(smallest, THRESHOLD_MOMENTUM)

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Return the training objective without the auxiliary loss, in eval mode."""
        model = self.model
        model.eval()
        total = 0.0
        for start in range(0, len(x), VALIDATION_BATCH):
            xb, yb = x[start:start + VALIDATION_BATCH], y[start:start + VALIDATION_BATCH]
            pre = model.pre_activations(xb)
            latents = model.activate(pre)
            error = yb - model.decode(latents, xb)
            penalty = self.sparsity_penalty(pre, latents)
            total += float((error.pow(2).sum(-1).mean() + penalty) * len(xb))
        model.train()
        return total / max(len(x), 1)


def fit(model: SparseCoder, x_train: torch.Tensor, y_train: torch.Tensor,
        x_validation: torch.Tensor, y_validation: torch.Tensor, config: TranscoderConfig, *,
        generator: torch.Generator, progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None) -> TrainingHistory:
    """Train `model` in place and leave it in eval mode with its best validation weights."""
    with single_thread_if_small(model):
        return _fit(model, x_train, y_train, x_validation, y_validation, config,
                    generator, progress, should_stop)


def _fit(model: SparseCoder, x_train: torch.Tensor, y_train: torch.Tensor,
         x_validation: torch.Tensor, y_validation: torch.Tensor, config: TranscoderConfig,
         generator: torch.Generator, progress: ProgressCallback | None,
         should_stop: Callable[[], bool] | None) -> TrainingHistory:
    trainer = Trainer(model, config, len(x_train))
    model.train()
    started = time.perf_counter()
    best_loss, best_epoch, best_state = float("inf"), 0, _copy_state(model)
    losses: list[float] = []
    stopped: Literal["converged", "max_epochs", "requested"] = "max_epochs"
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        order = torch.randperm(len(x_train), generator=generator)
        completed = _run_epoch(trainer, x_train, y_train, order, should_stop)

        loss = trainer.validation_loss(x_validation, y_validation)
        losses.append(loss)
        if loss < best_loss * (1 - config.min_improvement):
            best_loss, best_epoch, best_state = loss, epoch, _copy_state(model)
        if progress is not None:
            progress(epoch, config.max_epochs, f"epoch {epoch}: validation loss {loss:.4g}")
        if not completed or (should_stop is not None and should_stop()):
            stopped = "requested"
            break
        if epoch - best_epoch >= config.patience:
            stopped = "converged"
            break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    model.eval()
    dead_at_end = int((trainer.since_fired >= trainer.dead_after).sum())
    logger.info("trained %s coder for %d epochs (best %d) in %.1f s, stopped: %s",
                model.architecture, epoch, best_epoch, seconds, stopped)
    return TrainingHistory(
        epochs=epoch, best_epoch=best_epoch, optimizer_steps=trainer.steps_done,
        train_seconds=seconds, activations_per_second=trainer.examples_seen / max(seconds, 1e-9),
        stopped=stopped, validation_losses=losses, dead_at_end=dead_at_end,
    )


def _run_epoch(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
               should_stop: Callable[[], bool] | None) -> bool:
    """Train on the batches of one epoch; return False when a stop request cut it short."""
    batch_size = trainer.config.batch_size
    for index, start in enumerate(range(0, len(order), batch_size)):
        if should_stop is not None and index % STOP_CHECK_STEPS == 0 and index and should_stop():
            return False
        batch = order[start:start + batch_size]
        trainer.step(x[batch], y[batch])
    return True


def _adam(model: SparseCoder, learning_rate: float) -> torch.optim.Optimizer:
    """Return Adam, fused into one kernel where torch supports that on the parameters' device.

    For small models most of an optimizer step is per-tensor dispatch, which the fused kernel
    does once.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=learning_rate)


def _copy_state(model: SparseCoder) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}
