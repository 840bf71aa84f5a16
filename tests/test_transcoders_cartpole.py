"""Transcoders on the shipped CartPole policy: quality targets, latents as a layer, splicing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from interlatent_mcp.analysis import compute_stats
from interlatent_mcp.capture import Policy, record_rollout
from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError
from interlatent_mcp.store import RunRecord, Store
from interlatent_mcp.transcoders import (
    TrainedTranscoder,
    TranscoderConfig,
    compute_splice_fidelity,
    load_transcoder,
    record_latents,
    splice,
    train_transcoder,
)

LAYERS = ["act2:pre", "act2:post", "fc2:pre", "fc2:post"]


@dataclass(frozen=True)
class TrainedOnCartPole:
    store: Store
    run: RunRecord
    trained: TrainedTranscoder


@pytest.fixture(scope="module")
def cartpole_transcoder(tmp_path_factory: pytest.TempPathFactory,
                        cartpole_policy: Policy) -> Iterator[TrainedOnCartPole]:
    """A TopK transcoder of act2 (pre -> post) with the default settings, on 24 episodes."""
    store = Store(tmp_path_factory.mktemp("transcoders") / "cartpole.sqlite")
    run = record_rollout(store, cartpole_policy, episodes=24, layers=LAYERS, seed=0,
                         chunk_steps=1000)
    trained = train_transcoder(store, [run.run_id], "act2:pre", "act2:post", name="act2-topk")
    yield TrainedOnCartPole(store, store.get_run(run.run_id), trained)
    store.close()


def test_cartpole_transcoder_meets_targets(cartpole_transcoder: TrainedOnCartPole) -> None:
    trained = cartpole_transcoder.trained
    assert trained.held_out.fvu <= 0.05
    assert trained.held_out.mean_l0 <= 8
    assert trained.held_out.n_steps == 5 * 500


def test_cartpole_splice_keeps_returns(cartpole_transcoder: TrainedOnCartPole) -> None:
    store = cartpole_transcoder.store
    fidelity = compute_splice_fidelity(store, "act2-topk", episodes=10, seed=100)
    assert fidelity.original_mean_return > 0
    assert fidelity.return_ratio is not None
    assert fidelity.return_ratio >= 0.95
    assert fidelity.action_agreement >= 0.9
    assert fidelity.n_steps == sum(fidelity.spliced_returns)
    stored = store.get_transcoder("act2-topk").metrics["splice"]
    assert stored["return_ratio"] == fidelity.return_ratio
    assert stored["episodes"] == 10


def test_latent_layer_equals_encoder(cartpole_transcoder: TrainedOnCartPole) -> None:
    store, run = cartpole_transcoder.store, cartpole_transcoder.run
    trained = cartpole_transcoder.trained
    layer = trained.latent_layer
    assert layer is not None
    assert layer.name == "transcoder/act2-topk"
    assert layer.kind == "transcoder"
    assert layer.width == trained.coder.n_latents
    assert trained.record.latent_layer_id == layer.layer_id
    assert layer.name in run.layers

    layer_ids = store.run_layer_ids(run.run_id)
    recorded_input = store.read_activations(run.run_id, layer_ids["act2:pre"])
    latents = store.read_activations(run.run_id, layer.layer_id)
    with torch.no_grad():
        expected = trained.coder.encode(torch.from_numpy(recorded_input.copy())).numpy()
    assert latents.shape == (run.n_steps, trained.coder.n_latents)
    np.testing.assert_array_equal(latents, expected)


def test_statistics_work_on_latents(cartpole_transcoder: TrainedOnCartPole) -> None:
    store, run = cartpole_transcoder.store, cartpole_transcoder.run
    layer = cartpole_transcoder.trained.latent_layer
    analysis = compute_stats(store, [run.run_id], [layer.name])
    stats = store.get_channel_stats(analysis.analysis_id, layer.layer_id)
    latents = store.read_activations(run.run_id, layer.layer_id)
    assert len(stats) == layer.width
    for channel in (0, layer.width // 2, layer.width - 1):
        assert stats[channel].count == run.n_steps
        assert stats[channel].mean == pytest.approx(float(latents[:, channel].mean()), abs=1e-5)


def test_latents_for_new_run(cartpole_transcoder: TrainedOnCartPole,
                             cartpole_policy: Policy) -> None:
    store = cartpole_transcoder.store
    coder = cartpole_transcoder.trained.coder
    new_run = record_rollout(store, cartpole_policy, steps=300, layers=["act2:pre"], seed=50,
                             chunk_steps=128)
    layer = record_latents(store, "act2-topk", [new_run.run_id])
    record_latents(store, "act2-topk", [new_run.run_id])

    assert layer.name in store.get_run(new_run.run_id).layers
    latents = store.read_activations(new_run.run_id, layer.layer_id)
    recorded_input = store.read_activations(new_run.run_id,
                                            store.run_layer_ids(new_run.run_id)["act2:pre"])
    with torch.no_grad():
        expected = coder.encode(torch.from_numpy(recorded_input.copy())).numpy()
    assert latents.shape == (300, coder.n_latents)
    np.testing.assert_array_equal(latents, expected)


def test_latents_need_input_layer(cartpole_transcoder: TrainedOnCartPole,
                                  cartpole_policy: Policy) -> None:
    store = cartpole_transcoder.store
    other = record_rollout(store, cartpole_policy, steps=50, layers=["act1:post"], seed=60)
    with pytest.raises(UnknownLayerError, match="act1:post"):
        record_latents(store, "act2-topk", [other.run_id])


def test_splice_replaces_output_and_restores(cartpole_transcoder: TrainedOnCartPole,
                                             cartpole_policy: Policy) -> None:
    coder = cartpole_transcoder.trained.coder
    module = cartpole_policy.module
    observations = torch.tensor([[0.01, 0.2, -0.03, 0.1], [0.1, -0.5, 0.05, 0.4]])
    with torch.no_grad():
        original_logits = module(observations)
        act2_input = module.fc2(module.act1(module.fc1(observations)))
        expected_logits = module.logits(coder(act2_input)[0])
        with splice(module, coder, "act2:pre", "act2:post") as handle:
            spliced_logits = module(observations)
            with handle.bypassed():
                bypassed_logits = module(observations)
        restored_logits = module(observations)
    torch.testing.assert_close(spliced_logits, expected_logits)
    assert not torch.equal(spliced_logits, original_logits)
    assert handle.replacements == 1
    assert torch.equal(bypassed_logits, original_logits)
    assert torch.equal(restored_logits, original_logits)


def test_splice_removes_hooks_on_error(cartpole_transcoder: TrainedOnCartPole,
                                       cartpole_policy: Policy) -> None:
    module = cartpole_policy.module
    before = {name: len(sub._forward_hooks) + len(sub._forward_pre_hooks)
              for name, sub in module.named_modules()}
    with pytest.raises(RuntimeError, match="inside the block"):
        with splice(module, cartpole_transcoder.trained.coder, "act2:pre", "act2:post"):
            raise RuntimeError("inside the block")
    after = {name: len(sub._forward_hooks) + len(sub._forward_pre_hooks)
             for name, sub in module.named_modules()}
    assert after == before


def test_autoencoder_splices_input_and_output(cartpole_transcoder: TrainedOnCartPole,
                                              cartpole_policy: Policy) -> None:
    store, run = cartpole_transcoder.store, cartpole_transcoder.run
    config = TranscoderConfig(n_latents=128, max_epochs=15)
    post = train_transcoder(store, [run.run_id], "fc2:post", config=config,
                            latents_as_layer=False)
    pre = train_transcoder(store, [run.run_id], "fc2:pre", config=config, latents_as_layer=False)
    module = cartpole_policy.module
    observations = torch.tensor([[0.01, 0.2, -0.03, 0.1]])
    with torch.no_grad():
        hidden = module.act1(module.fc1(observations))
        with splice(module, post.coder, "fc2:post", "fc2:post"):
            logits_post = module(observations)
        with splice(module, pre.coder, "fc2:pre", "fc2:pre"):
            logits_pre = module(observations)
        expected_post = module.logits(module.act2(post.coder(module.fc2(hidden))[0]))
        expected_pre = module.logits(module.act2(module.fc2(pre.coder(hidden)[0])))
    torch.testing.assert_close(logits_post, expected_post)
    torch.testing.assert_close(logits_pre, expected_pre)


def test_transcoder_across_modules(cartpole_transcoder: TrainedOnCartPole,
                                   cartpole_policy: Policy) -> None:
    store, run = cartpole_transcoder.store, cartpole_transcoder.run
    trained = train_transcoder(store, [run.run_id], "fc2:pre", "act2:post",
                               config=TranscoderConfig(max_epochs=5), latents_as_layer=False)
    module = cartpole_policy.module
    observations = torch.tensor([[0.01, 0.2, -0.03, 0.1]])
    with torch.no_grad():
        hidden = module.act1(module.fc1(observations))
        with splice(module, trained.coder, "fc2:pre", "act2:post"):
            logits = module(observations)
        expected = module.logits(trained.coder(hidden)[0])
    torch.testing.assert_close(logits, expected)


def test_splice_rejects_transcoder_into_input(cartpole_transcoder: TrainedOnCartPole,
                                              cartpole_policy: Policy) -> None:
    with pytest.raises(InvalidArgumentError, match="':post'"):
        with splice(cartpole_policy.module, cartpole_transcoder.trained.coder, "act2:pre",
                    "logits:pre"):
            pass
    with pytest.raises(UnknownLayerError, match="known modules"):
        with splice(cartpole_policy.module, cartpole_transcoder.trained.coder, "act9:pre",
                    "act2:post"):
            pass


def test_missing_layer_names_recorded_layers(tmp_path: Path, cartpole_policy: Policy) -> None:
    store = Store(tmp_path / "store.sqlite")
    run = record_rollout(store, cartpole_policy, episodes=3, layers=["act1:post"], seed=0)
    with pytest.raises(UnknownLayerError, match="it recorded act1:post"):
        train_transcoder(store, [run.run_id], "act2:pre", "act2:post")
    store.close()


def test_loaded_transcoder_matches_trained(cartpole_transcoder: TrainedOnCartPole) -> None:
    loaded = load_transcoder(cartpole_transcoder.store, "act2-topk")
    trained = cartpole_transcoder.trained
    assert loaded.record.metrics["held_out"]["fvu"] == pytest.approx(trained.held_out.fvu)
    x = torch.randn(20, 64)
    with torch.no_grad():
        assert torch.equal(loaded.coder(x)[0], trained.coder(x)[0])
