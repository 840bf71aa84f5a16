"""The sparse coder module: activations, gradients, constraints, folding and serialisation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from interlatent_mcp.errors import InvalidArgumentError
from interlatent_mcp.transcoders import SparseCoder, TranscoderConfig
from interlatent_mcp.transcoders.model import batch_topk_latents, topk_latents


def test_topk_keeps_k_largest_per_row() -> None:
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5, 1.0], [-2.0, -1.0, 0.2, -3.0, -0.5]])
    latents = topk_latents(pre, 2)
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.2, 0.0, 0.0]])
    assert torch.equal(latents, expected)


def test_batch_topk_keeps_k_per_row_on_average() -> None:
    generator = torch.Generator().manual_seed(0)
    pre = torch.randn(32, 40, generator=generator)
    latents = batch_topk_latents(pre, 3)
    kept = latents[latents != 0]
    assert int((latents != 0).sum()) == 3 * 32
    assert float(kept.min()) >= float(pre.flatten().topk(96).values.min())
    assert torch.equal(latents[latents != 0], pre[latents != 0])


def test_batch_topk_uses_threshold_in_eval() -> None:
    coder = SparseCoder(4, 4, 8, architecture="batchtopk", k=2)
    x = torch.randn(16, 4)
    coder.train()
    assert int((coder.encode(x) != 0).sum()) <= 2 * 16
    coder.threshold.fill_(0.3)
    coder.eval()
    pre = coder.pre_activations(x)
    latents = coder.encode(x)
    assert torch.equal(latents, pre * (pre > 0.3))


def test_jumprelu_threshold_gradient() -> None:
    coder = SparseCoder(3, 3, 4, architecture="jumprelu", jumprelu_bandwidth=0.5,
                        jumprelu_initial_threshold=0.4)
    pre = torch.tensor([[0.3, 0.5, 1.0, -0.2], [0.45, 0.1, 0.6, 0.9]], requires_grad=True)
    latents = coder.activate(pre)
    latents.sum().backward()

    threshold, bandwidth = 0.4, 0.5
    inside = ((pre.detach() - threshold).abs() < bandwidth / 2).float()
    expected_threshold_grad = (-(threshold / bandwidth) * inside).sum(0)
    # d/d log_threshold = threshold * d/d threshold
    torch.testing.assert_close(coder.log_threshold.grad, threshold * expected_threshold_grad)
    torch.testing.assert_close(pre.grad, (pre.detach() > threshold).float())
    assert torch.equal(latents.detach(), pre.detach() * (pre.detach() > threshold))


def test_l0_surrogate_counts_active_latents() -> None:
    coder = SparseCoder(3, 3, 4, architecture="jumprelu", jumprelu_bandwidth=0.5,
                        jumprelu_initial_threshold=0.4)
    pre = torch.tensor([[0.3, 0.5, 1.0, -0.2], [0.45, 0.1, 0.6, 0.9]])
    l0 = coder.l0_surrogate(pre)
    l0.backward()
    inside = ((pre - 0.4).abs() < 0.25).float()
    assert float(l0.detach()) == pytest.approx(2.5)
    torch.testing.assert_close(coder.log_threshold.grad, 0.4 * (-(1 / 0.5) * inside).sum(0) / 2)


def test_decoder_gradient_projection_is_orthogonal() -> None:
    coder = SparseCoder(5, 6, 10)
    coder.W_dec.grad = torch.randn(10, 6)
    coder.remove_parallel_decoder_grad_()
    along_rows = (coder.W_dec.grad * coder.W_dec).sum(dim=1)
    torch.testing.assert_close(along_rows, torch.zeros(10), atol=1e-6, rtol=0)


def test_initial_decoder_has_unit_rows() -> None:
    for d_in in (5, 6):
        coder = SparseCoder(d_in, 6, 10, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(coder.W_dec.norm(dim=1), torch.ones(10))
    square = SparseCoder(6, 6, 10)
    assert torch.equal(square.W_enc, square.W_dec.t())


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu", "jumprelu"])
def test_fold_normalization_preserves_function(architecture: str) -> None:
    generator = torch.Generator().manual_seed(0)
    coder = SparseCoder(6, 5, 16, architecture=architecture, k=3, skip_connection=True,
                        generator=generator)
    with torch.no_grad():
        for parameter in coder.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    coder.normalize_decoder_()
    coder.threshold.fill_(0.05)
    coder.eval()
    x = torch.randn(50, 6, generator=generator) * 7.0
    with torch.no_grad():
        y_normalised, latents_normalised = coder(x / 7.0)
        coder.fold_normalization_(7.0, 3.0)
        y, latents = coder(x)
    torch.testing.assert_close(y, 3.0 * y_normalised, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latents, 3.0 * latents_normalised, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder.W_dec.norm(dim=1), torch.ones(16))


def test_weights_round_trip_and_format_check() -> None:
    coder = SparseCoder(4, 3, 8, architecture="jumprelu", k=2)
    restored = SparseCoder.from_bytes(coder.to_bytes())
    assert restored.hyperparameters() == coder.hyperparameters()
    for name, value in coder.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)
    assert not restored.training

    meta = json.dumps({**coder.hyperparameters(), "format": 9}).encode()
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match="format 9"):
        SparseCoder.from_bytes(buffer.getvalue())


def test_skip_connection_needs_input() -> None:
    coder = SparseCoder(4, 3, 8, skip_connection=True)
    with pytest.raises(InvalidArgumentError, match="skip connection"):
        coder.decode(torch.zeros(2, 8))


@pytest.mark.parametrize("settings,field", [
    (dict(architecture="gated"), "architecture"),
    (dict(k=0), "k"),
    (dict(n_latents=4, k=8), "k=8"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(held_out_fraction=0.6, validation_fraction=0.5), "held_out_fraction"),
    (dict(bias_init="median"), "bias_init"),
    (dict(batch_size=True), "batch_size"),
])
def test_config_rejects_invalid_settings(settings: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        TranscoderConfig(**settings)


def test_config_round_trips_through_dict() -> None:
    config = TranscoderConfig(architecture="relu", n_latents=32, seed=4)
    assert TranscoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InvalidArgumentError, match="unknown transcoder settings"):
        TranscoderConfig.from_dict({"latent_count": 3})
    assert TranscoderConfig().latents_for(16) == 64
    assert np.isclose(TranscoderConfig().aux_coefficient, 1 / 32)
