"""Benchmark sparse-coder training on recorded CartPole activations.

Records --episodes episodes of the built-in CartPole policy (layers act2:pre and act2:post),
splits them by episode as `train_transcoder` does, and prints from one run:

1. Throughput of a TopK transcoder act2:pre -> act2:post, in activations per second:
     ours  interlatent's training loop (`fit`: warm-up, AuxK, decoder-gradient projection and
           renormalisation, dead-latent tracking, validation loss after every epoch);
     bare  a bare PyTorch TopK loop (encode, top-k, decode, squared error, Adam, decoder
           renormalisation);
   on the same normalised data, initial weights, batch order and hyperparameters, with the
   ratio ours/bare (target: at least 0.8). The rates are medians of --repeats alternating runs,
   the ratio the median of the per-repeat ratios; the median held-out FVU of each is printed too.
2. When sae-lens is installed (an optional, bench-only dependency): FVU and mean L0 on the
   held-out episodes of a BatchTopK autoencoder of act2:post trained by interlatent and by
   SAELens's SAETrainer, with the same width, k, batch size, learning rate, warm-up and number
   of training samples (target: ours equal or better at equal L0). Otherwise it prints that
   this part was skipped.

Usage: python bench/transcoder.py [--episodes 40] [--epochs 20] [--repeats 5] [--ks 4 8 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from interlatent_mcp.capture import record_rollout
from interlatent_mcp.store import Store
from interlatent_mcp.transcoders import (
    PairedActivations,
    SparseCoder,
    TranscoderConfig,
    compute_reconstruction_metrics,
    fit,
    train_coder,
)
from interlatent_mcp.transcoders.data import load_paired_activations, split_episodes
from interlatent_mcp.transcoders.evaluation import MetricsAccumulator

N_LATENTS, K, BATCH, LEARNING_RATE, WARMUP = 256, 8, 256, 2e-3, 100


def record(directory: Path, episodes: int) -> tuple[PairedActivations, PairedActivations]:
    """Return (act2:pre -> act2:post, act2:post -> act2:post) activations of one rollout."""
    with Store(directory / "bench.sqlite") as store:
        run = record_rollout(store, "cartpole-ppo", episodes=episodes,
                             layers=["act2:pre", "act2:post"], seed=0)
        runs = [store.get_run(run.run_id)]
        transcoder = load_paired_activations(store, runs, "act2:pre", "act2:post")
        autoencoder = load_paired_activations(store, runs, "act2:post", "act2:post")
    return transcoder, autoencoder


def normalised(data: PairedActivations, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
    mask = data.mask(keys)
    x, y = torch.from_numpy(data.x[mask]), torch.from_numpy(data.y[mask])
    return x / x.std(), y / y.std()


def bare_topk(coder: SparseCoder, x: torch.Tensor, y: torch.Tensor, epochs: int,
              seed: int) -> float:
    """Train with the plainest TopK loop; return activations per second."""
    W_enc, b_enc = coder.W_enc, coder.b_enc
    W_dec, b_dec, b_pre = coder.W_dec, coder.b_dec, coder.b_pre
    optimizer = torch.optim.Adam(coder.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            pre = (x[batch] - b_pre) @ W_enc + b_enc
            values, indices = pre.topk(K, dim=-1)
            latents = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
            loss = (latents @ W_dec + b_dec - y[batch]).pow(2).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
    coder.eval()
    return epochs * len(x) / (time.perf_counter() - started)


def compare_throughput(data: PairedActivations, epochs: int, repeats: int) -> None:
    split = split_episodes(data.episode_keys(), 0.2, 0.1, seed=0)
    x_train, y_train = normalised(data, split.train)
    x_validation, y_validation = normalised(data, split.validation)
    x_test, y_test = normalised(data, split.held_out)
    config = TranscoderConfig(n_latents=N_LATENTS, k=K, batch_size=BATCH,
                              learning_rate=LEARNING_RATE, warmup_steps=WARMUP,
                              max_epochs=epochs, patience=epochs)
    ours: list[float] = []
    bare: list[float] = []
    fvu: dict[str, list[float]] = {"ours": [], "bare": []}
    # One untimed epoch of each loop first, so that one-off setup costs count in neither.
    warm = SparseCoder(64, 64, N_LATENTS, k=K)
    fit(warm, x_train, y_train, x_validation, y_validation, replace(config, max_epochs=1),
        generator=torch.Generator().manual_seed(0))
    bare_topk(SparseCoder(64, 64, N_LATENTS, k=K), x_train, y_train, 1, seed=0)
    for repeat in range(repeats):
        initial = SparseCoder(64, 64, N_LATENTS, k=K,
                              generator=torch.Generator().manual_seed(repeat))
        coder = SparseCoder.from_bytes(initial.to_bytes()).train()
        history = fit(coder, x_train, y_train, x_validation, y_validation, config,
                      generator=torch.Generator().manual_seed(repeat))
        ours.append(epochs * len(x_train) / history.train_seconds)
        fvu["ours"].append(
            compute_reconstruction_metrics(coder, x_test.numpy(), y_test.numpy()).fvu)

        coder = SparseCoder.from_bytes(initial.to_bytes()).train()
        bare.append(bare_topk(coder, x_train, y_train, epochs, seed=repeat))
        fvu["bare"].append(
            compute_reconstruction_metrics(coder, x_test.numpy(), y_test.numpy()).fvu)
    # Each repeat runs both loops back to back, so the ratio within a repeat is the least
    # affected by other load on the machine.
    ratio = statistics.median(o / b for o, b in zip(ours, bare))
    print(f"TopK transcoder act2:pre -> act2:post, {len(x_train)} training steps x {epochs} "
          f"epochs, {N_LATENTS} latents, k={K}, batch {BATCH}")
    for name, rates in (("ours", ours), ("bare", bare)):
        print(f"  {name}  {statistics.median(rates):9.0f} activations/s   held-out FVU "
              f"{statistics.median(fvu[name]):.4f}")
    print(f"  ratio ours/bare {ratio:.2f} (target >= 0.8)")


def saelens_batchtopk(x_train: torch.Tensor, x_test: np.ndarray, k: int, epochs: int,
                      seed: int) -> tuple[float, float]:
    """Train SAELens's BatchTopK SAE; return (mean L0, held-out FVU) of its inference model."""
    from sae_lens import SAE, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    torch.manual_seed(seed)
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(
        d_in=x_train.shape[1], d_sae=N_LATENTS, k=k,
        normalize_activations="expected_average_only_in"))
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(len(x_train), generator=generator)
            for start in range(0, len(order) - BATCH + 1, BATCH):
                yield x_train[order[start:start + BATCH]]

    trainer_config = SAETrainerConfig(
        total_training_samples=epochs * len(x_train), train_batch_size_samples=BATCH,
        lr=LEARNING_RATE, lr_end=LEARNING_RATE, lr_warm_up_steps=WARMUP,
        n_batches_for_norm_estimate=20)
    # The trainer draws tqdm progress bars on stderr, which would bury the results.
    with contextlib.redirect_stderr(io.StringIO()):
        trained = SAETrainer(trainer_config, sae, batches()).fit()
    # Evaluate what SAELens saves for inference: a JumpReLU SAE with the learned threshold.
    with tempfile.TemporaryDirectory() as directory:
        trained.save_inference_model(directory)
        inference = SAE.load_from_disk(directory)
    inference.eval()
    accumulator = MetricsAccumulator(x_test.shape[1], N_LATENTS)
    with torch.no_grad():
        latents = inference.encode(torch.from_numpy(x_test))
        reconstruction = inference.decode(latents)
    accumulator.update(x_test, reconstruction.numpy(), latents.numpy())
    metrics = accumulator.result()
    return metrics.mean_l0, metrics.fvu


def compare_with_saelens(data: PairedActivations, epochs: int, ks: list[int]) -> None:
    try:
        import sae_lens
    except ImportError:
        print("SAELens comparison skipped: sae-lens is not installed (pip install sae-lens)")
        return
    print(f"BatchTopK autoencoder of act2:post, {epochs} epochs, {N_LATENTS} latents, batch "
          f"{BATCH} (sae-lens {sae_lens.__version__}); held-out mean L0 and FVU per k:")
    ours, theirs = [], []
    for k in ks:
        config = TranscoderConfig(architecture="batchtopk", n_latents=N_LATENTS, k=k,
                                  batch_size=BATCH, learning_rate=LEARNING_RATE,
                                  warmup_steps=WARMUP, max_epochs=epochs, patience=epochs)
        result = train_coder(data, config)
        ours.append((result.held_out.mean_l0, result.held_out.fvu))
        train, test = data.mask(result.split.train), data.mask(result.split.held_out)
        theirs.append(saelens_batchtopk(torch.from_numpy(data.x[train]), data.x[test], k,
                                        epochs, seed=0))
        print(f"  k={k:<3} ours     L0 {ours[-1][0]:6.2f}  FVU {ours[-1][1]:.4f}")
        print(f"        SAELens  L0 {theirs[-1][0]:6.2f}  FVU {theirs[-1][1]:.4f}")
    # Our FVU at SAELens's L0, interpolated linearly in log L0 between our runs.
    ours.sort()
    log_l0 = np.log([l0 for l0, _ in ours])
    print("  at equal L0 (ours interpolated in log L0; outside our range: the nearest run):")
    for l0, fvu in theirs:
        interpolated = float(np.interp(np.log(l0), log_l0, [f for _, f in ours]))
        print(f"    L0 {l0:6.2f}: ours FVU {interpolated:.4f}   SAELens FVU {fvu:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40,
                        help="CartPole episodes to record (500 steps each for this policy)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of every model")
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternating runs of each loop; the median is reported")
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16],
                        help="values of k for the BatchTopK comparison with SAELens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        transcoder, autoencoder = record(Path(directory), args.episodes)
    compare_throughput(transcoder, args.epochs, args.repeats)
    compare_with_saelens(autoencoder, args.epochs, args.ks)


if __name__ == "__main__":
    main()
