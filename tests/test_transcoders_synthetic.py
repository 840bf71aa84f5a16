"""Transcoders and autoencoders trained through the store on synthetic sparse data.

The data is built from known directions: each step activates a few of them with positive
magnitudes, so a good sparse coder's decoder rows should line up with those directions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlatent_mcp.errors import InvalidArgumentError, UnknownLayerError
from interlatent_mcp.store import StepChunk, Store
from interlatent_mcp.transcoders import (
    TranscoderConfig,
    compute_reconstruction_metrics,
    evaluate_transcoder,
    load_transcoder,
    train_transcoder,
)

D_IN, D_OUT, N_DIRECTIONS, ACTIVE = 24, 20, 32, 3
STEPS_PER_EPISODE, EPISODES, CHUNK = 200, 30, 512


def make_sparse_data(seed: int) -> dict[str, np.ndarray]:
    """Return inputs and outputs built from the same sparse codes over different directions."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(N_DIRECTIONS, D_IN))
    inputs /= np.linalg.norm(inputs, axis=1, keepdims=True)
    outputs = rng.normal(size=(N_DIRECTIONS, D_OUT))
    outputs /= np.linalg.norm(outputs, axis=1, keepdims=True)
    n = STEPS_PER_EPISODE * EPISODES
    codes = np.zeros((n, N_DIRECTIONS))
    for row in range(n):
        chosen = rng.choice(N_DIRECTIONS, ACTIVE, replace=False)
        codes[row, chosen] = rng.uniform(0.5, 2.0, ACTIVE)
    return {
        "x": (codes @ inputs + 0.3).astype(np.float32),
        "y": (codes @ outputs - 0.2).astype(np.float32),
        "input_directions": inputs,
        "output_directions": outputs,
    }


def write_synthetic_run(store: Store, x: np.ndarray, y: np.ndarray) -> int:
    """Store (x, y) as layers block:pre and block:post of a run with EPISODES episodes."""
    policy = store.add_policy(
        name="synthetic", kind="test", source="test:synthetic", fingerprint="0",
        observation_space="none", action_space="none",
        layers={"block:pre": x.shape[1], "block:post": y.shape[1]},
    )
    layer_ids = {layer.name: layer.layer_id for layer in store.list_layers(policy.policy_id)}
    run = store.create_run(
        policy_id=policy.policy_id, env_id="none", env_kwargs={}, seed=0,
        layer_ids=list(layer_ids.values()), variables=["t"], chunk_steps=CHUNK,
    )
    episode = np.repeat(np.arange(EPISODES, dtype=np.int32), STEPS_PER_EPISODE)
    t = np.tile(np.arange(STEPS_PER_EPISODE, dtype=np.int32), EPISODES)
    for chunk, start in enumerate(range(0, len(x), CHUNK)):
        stop = min(start + CHUNK, len(x))
        steps = StepChunk(start, episode[start:stop], t[start:stop],
                          np.zeros(stop - start, bool), np.zeros(stop - start, bool),
                          t[start:stop, None].astype(np.float64))
        store.write_chunk(run.run_id, chunk, steps, {
            layer_ids["block:pre"]: x[start:stop], layer_ids["block:post"]: y[start:stop]})
    store.finish_run(run.run_id, status="complete", duration_s=0.0)
    return run.run_id


@pytest.fixture
def synthetic(store: Store) -> tuple[Store, int, dict[str, np.ndarray]]:
    data = make_sparse_data(seed=1)
    return store, write_synthetic_run(store, data["x"], data["y"]), data


def recovered_fraction(learned: np.ndarray, true: np.ndarray, threshold: float) -> float:
    """Fraction of true directions whose best-matching learned row has cosine >= threshold."""
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    cosine = true @ learned.T
    return float((cosine.max(axis=1) >= threshold).mean())


FAST = dict(n_latents=64, max_epochs=60, patience=10, learning_rate=3e-3)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_transcoder_recovers_output_directions(synthetic, architecture: str) -> None:
    store, run_id, data = synthetic
    config = TranscoderConfig(architecture=architecture, k=ACTIVE, **FAST)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    decoder = trained.coder.W_dec.detach().numpy()
    assert recovered_fraction(decoder, data["output_directions"], 0.95) >= 0.9
    assert trained.held_out.fvu < 0.1


def test_autoencoder_recovers_directions(store: Store) -> None:
    data = make_sparse_data(seed=2)
    run_id = write_synthetic_run(store, data["x"], data["y"])
    config = TranscoderConfig(k=ACTIVE, **FAST)
    trained = train_transcoder(store, [run_id], "block:pre", config=config, latents_as_layer=False)
    decoder = trained.coder.W_dec.detach().numpy()
    assert trained.record.input_layer == trained.record.output_layer == "block:pre"
    assert recovered_fraction(decoder, data["input_directions"], 0.95) >= 0.9


@pytest.mark.parametrize("architecture,settings", [
    ("relu", dict(l1_coefficient=0.5)),
    ("jumprelu", dict(l0_coefficient=0.3)),
])
def test_penalised_architectures_recover_directions(synthetic, architecture: str,
                                                    settings: dict) -> None:
    store, run_id, data = synthetic
    config = TranscoderConfig(architecture=architecture, **{**FAST, "max_epochs": 150},
                              **settings)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    decoder = trained.coder.W_dec.detach().numpy()
    assert trained.held_out.fvu < 0.1
    assert trained.held_out.mean_l0 < 3 * ACTIVE
    assert recovered_fraction(decoder, data["output_directions"], 0.95) >= 0.9


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu", "jumprelu"])
def test_decoder_rows_keep_unit_norm(synthetic, architecture: str) -> None:
    store, run_id, _ = synthetic
    config = TranscoderConfig(architecture=architecture, n_latents=48, max_epochs=3)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    norms = trained.coder.W_dec.detach().norm(dim=1).numpy()
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert trained.history.optimizer_steps > 0


@pytest.mark.parametrize("architecture,skip", [
    ("topk", False), ("batchtopk", False), ("relu", False), ("jumprelu", False), ("topk", True),
])
def test_saved_coder_reproduces_outputs(synthetic, architecture: str, skip: bool) -> None:
    store, run_id, data = synthetic
    config = TranscoderConfig(architecture=architecture, n_latents=48, max_epochs=3,
                              skip_connection=skip)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    loaded = load_transcoder(store, trained.record.name).coder
    x = torch.from_numpy(data["x"][:500])
    with torch.no_grad():
        expected_y, expected_latents = trained.coder(x)
        y, latents = loaded(x)
    assert torch.equal(y, expected_y)
    assert torch.equal(latents, expected_latents)
    assert loaded.skip_connection is skip


def test_metrics_match_numpy(synthetic) -> None:
    store, run_id, data = synthetic
    config = TranscoderConfig(n_latents=48, k=4, max_epochs=5)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    x, y = data["x"][:3000], data["y"][:3000]
    with torch.no_grad():
        y_hat, latents = trained.coder(torch.from_numpy(x))
    y_hat, latents = y_hat.numpy().astype(np.float64), latents.numpy()
    expected_fvu = ((y_hat - y) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    expected_l0 = (latents != 0).sum(axis=1).mean()
    expected_dead = (~(latents != 0).any(axis=0)).mean()

    metrics = compute_reconstruction_metrics(trained.coder, x, y)
    assert metrics.n_steps == 3000
    assert metrics.fvu == pytest.approx(expected_fvu, rel=1e-5)
    assert metrics.explained_variance == pytest.approx(1 - expected_fvu, rel=1e-5)
    assert metrics.mean_l0 == pytest.approx(expected_l0)
    assert metrics.dead_fraction == pytest.approx(expected_dead)
    assert sum(metrics.density_counts) + metrics.n_dead == trained.coder.n_latents


def test_store_evaluation_matches_memory(synthetic) -> None:
    store, run_id, data = synthetic
    config = TranscoderConfig(n_latents=48, max_epochs=5)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    held_out = {episode for _, episode in trained.record.config["data"]["held_out_episodes"]}
    episode = np.repeat(np.arange(EPISODES), STEPS_PER_EPISODE)
    mask = np.isin(episode, list(held_out))

    streamed = evaluate_transcoder(store, trained.record.name)
    in_memory = compute_reconstruction_metrics(trained.coder, data["x"][mask], data["y"][mask])
    assert streamed.n_steps == mask.sum() == trained.held_out.n_steps
    assert streamed.fvu == pytest.approx(in_memory.fvu, rel=1e-6)
    assert streamed.mean_l0 == pytest.approx(in_memory.mean_l0)
    assert trained.record.metrics["held_out"]["fvu"] == pytest.approx(in_memory.fvu, rel=1e-6)

    everything = evaluate_transcoder(store, trained.record.name, run_ids=[run_id])
    assert everything.n_steps == len(data["x"])


def test_split_keeps_episodes_whole(synthetic) -> None:
    store, run_id, _ = synthetic
    config = TranscoderConfig(n_latents=48, max_epochs=2)
    trained = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                               latents_as_layer=False)
    split = trained.record.config["data"]
    train = {tuple(key) for key in split["train_episodes"]}
    validation = {tuple(key) for key in split["validation_episodes"]}
    held_out = {tuple(key) for key in split["held_out_episodes"]}
    assert not train & validation
    assert not train & held_out
    assert not validation & held_out
    assert len(train | validation | held_out) == EPISODES
    assert len(held_out) == round(EPISODES * config.held_out_fraction)
    assert trained.held_out.n_steps == len(held_out) * STEPS_PER_EPISODE


def test_training_is_reproducible(synthetic) -> None:
    store, run_id, _ = synthetic
    config = TranscoderConfig(architecture="batchtopk", n_latents=48, max_epochs=4, seed=3)
    first = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                             latents_as_layer=False)
    second = train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                              latents_as_layer=False)
    other_seed = train_transcoder(store, [run_id], "block:pre", "block:post",
                                  config=TranscoderConfig(architecture="batchtopk", n_latents=48,
                                                          max_epochs=4, seed=4),
                                  latents_as_layer=False)
    for name, value in first.coder.state_dict().items():
        assert torch.equal(value, second.coder.state_dict()[name]), name
    assert not torch.equal(first.coder.W_dec, other_seed.coder.W_dec)
    assert first.record.name != second.record.name


def test_stop_request_keeps_best_weights(synthetic) -> None:
    store, run_id, _ = synthetic
    epochs_seen: list[float] = []
    trained = train_transcoder(
        store, [run_id], "block:pre", "block:post",
        config=TranscoderConfig(n_latents=48, max_epochs=50),
        progress=lambda done, total, message: epochs_seen.append(done),
        should_stop=lambda: len(epochs_seen) >= 2, latents_as_layer=False)
    assert trained.history.stopped == "requested"
    assert trained.history.epochs == 2
    assert trained.record.metrics["training"]["stopped"] == "requested"
    assert epochs_seen[:2] == [1, 2]


def test_unrecorded_layer_names_recorded_ones(synthetic) -> None:
    store, run_id, _ = synthetic
    with pytest.raises(UnknownLayerError, match="block:pre, block:post"):
        train_transcoder(store, [run_id], "block:pre", "other:post")


def test_unknown_layer_suggests_close_name(synthetic) -> None:
    store, run_id, _ = synthetic
    with pytest.raises(UnknownLayerError) as raised:
        train_transcoder(store, [run_id], "blok:pre", "block:post")
    message = str(raised.value)
    assert "layer 'blok:pre' does not exist in policy 'synthetic'" in message
    assert "(did you mean 'block:pre'?)" in message
    assert "its layers: block:pre, block:post" in message
    assert "rollout" not in message


@pytest.mark.parametrize(("layers", "advice"), [
    (["extra:post"], ("`interlatent rollout test:synthetic --layers extra:post`",
                      "record_rollout with policy='test:synthetic' and layers=['extra:post']")),
    (["block:pre", "extra:post"], ("`interlatent rollout test:synthetic --layers block:pre "
                                   "extra:post`",
                                   "layers=['block:pre', 'extra:post'] (MCP)")),
])
def test_unrecorded_layer_advises_rollout(synthetic, layers: list[str],
                                          advice: tuple[str, str]) -> None:
    store, run_id, _ = synthetic
    store.add_layer(store.get_run(run_id).policy_id, "extra:post", 4)
    with pytest.raises(UnknownLayerError) as raised:
        train_transcoder(store, [run_id], *layers)
    message = str(raised.value)
    # An autoencoder passes its layer as input and output, and the message names it once.
    assert "did not record layer 'extra:post'; it recorded block:pre, block:post." in message
    command, tool_call = advice
    assert command in message
    assert tool_call in message


def test_skip_connection_rejected_for_autoencoder(synthetic) -> None:
    store, run_id, _ = synthetic
    with pytest.raises(InvalidArgumentError, match="skip_connection"):
        train_transcoder(store, [run_id], "block:pre",
                         config=TranscoderConfig(skip_connection=True))


def test_duplicate_name_rejected(synthetic) -> None:
    store, run_id, _ = synthetic
    config = TranscoderConfig(n_latents=48, max_epochs=1)
    train_transcoder(store, [run_id], "block:pre", "block:post", config=config, name="first",
                     latents_as_layer=False)
    with pytest.raises(InvalidArgumentError, match="already exists"):
        train_transcoder(store, [run_id], "block:pre", "block:post", config=config, name="first")
    with pytest.raises(InvalidArgumentError, match="invalid"):
        train_transcoder(store, [run_id], "block:pre", "block:post", config=config,
                         name="has space")


def test_latent_layer_rejected_as_training_input() -> None:
    from interlatent_mcp.errors import InvalidArgumentError
    from interlatent_mcp.transcoders.data import normalize_layer_names

    with pytest.raises(InvalidArgumentError, match="transcoder's latents"):
        normalize_layer_names("transcoder/ae64", None)
