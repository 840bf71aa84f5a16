"""`interlatent train` as a user runs it, on a real store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from interlatent_mcp.capture import record_rollout
from interlatent_mcp.cli import EXIT_ERROR, main
from interlatent_mcp.store import Store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        record_rollout(store, "cartpole-ppo", episodes=6, layers=["act2:pre", "act2:post"], seed=0)
        record_rollout(store, "cartpole-ppo", episodes=2, layers=["act2:pre", "act2:post"], seed=9)
    return path


def test_train_prints_metrics_and_splice(store_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "1", "--input", "act2:pre", "--output", "act2:post", "--epochs", "5",
                 "--name", "cli-act2", "--splice-episodes", "2", "--store", str(store_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "transcoder 'cli-act2' (id 1): topk act2:pre -> act2:post, 256 latents, k=8" in out
    assert re.search(r"held-out \(500 steps\): FVU \d\.\d{4}, mean L0 \d\.\d\d, dead fraction", out)
    assert "latents recorded as layer transcoder/cli-act2" in out
    assert re.search(r"splice-in \(2 episodes from seed 0\): mean return [\d.]+ vs 500\.0 "
                     r"original \(ratio \d\.\d{3}\), action agreement", out)
    with Store(store_path) as store:
        record = store.get_transcoder("cli-act2")
        assert record.metrics["splice"]["episodes"] == 2
        assert "transcoder/cli-act2" in store.get_run(1).layers


def test_train_autoencoder_without_latents(store_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "1", "--input", "act2:post", "--architecture", "relu", "--latents",
                 "32", "--epochs", "2", "--splice-episodes", "0", "--no-latents",
                 "--store", str(store_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "autoencoder 'act2-post-sae-relu' (id 1): relu act2:post, 32 latents" in out
    assert "splice-in" not in out
    assert "latents recorded" not in out


def test_train_too_few_episodes_one_line_error(store_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "2", "--input", "act2:pre", "--store", str(store_path)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "error: the runs contain 2 episode(s), too few" in err
    assert "Traceback" not in err


def test_architecture_choices_match_library() -> None:
    from interlatent_mcp.cli import build_parser
    from interlatent_mcp.transcoders import ARCHITECTURES

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    (option,) = [action for action in train._actions if action.dest == "architecture"]  # noqa: SLF001
    assert tuple(option.choices) == ARCHITECTURES


def test_epochs_help_states_stopping_rule() -> None:
    from interlatent_mcp.cli import build_parser
    from interlatent_mcp.transcoders import TranscoderConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    (option,) = [action for action in train._actions if action.dest == "epochs"]  # noqa: SLF001
    config = TranscoderConfig()
    help_text = option.help % {}
    assert option.default == config.max_epochs
    assert f"(default {config.max_epochs})" in help_text
    assert f"improved by {config.min_improvement:.1%} for {config.patience} epochs" in help_text


def test_train_unknown_layer_lists_policy_layers(store_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "1", "--input", "fc3:pre", "--store", str(store_path)])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "layer 'fc3:pre' does not exist in policy 'cartpole-ppo' (did you mean" in err
    assert "its layers: fc1:pre, fc1:post, act1:pre" in err
    assert "rollout" not in err
