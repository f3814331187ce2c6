"""Config: defaults reproduce the reference script; YAML and CLI layer on top; bad values exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlp.options import make_parser, parse_config
from mlp.config import Config, ConfigError


def parse(argv: list[str]) -> Config:
    return parse_config(make_parser("test", "test"), argv)[0]


def test_defaults_match_reference_script() -> None:
    cfg = Config()
    assert cfg.model.hidden_sizes == [100] and cfg.model.activation == "relu"
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.0
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 10


def test_yaml_then_cli_precedence(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("optim: {lr: 0.2, momentum: 0.5}\nmodel: {hidden_sizes: [64, 32]}\n")
    cfg = parse(["--config", str(preset), "--optim.lr", "0.1", "--scaling.num_workers", "2"])
    assert cfg.optim.lr == 0.1  # CLI beats YAML
    assert cfg.optim.momentum == 0.5  # YAML beats defaults
    assert cfg.model.hidden_sizes == [64, 32]
    assert cfg.scaling.num_workers == 2


def test_list_and_optional_and_map_overrides() -> None:
    cfg = parse(["--model.hidden_sizes", "256,128", "--train.target_accuracy", "0.9",
                 "--tune.space.optim.momentum", "uniform:0:0.9"])
    assert cfg.model.hidden_sizes == [256, 128]
    assert cfg.train.target_accuracy == 0.9
    assert cfg.tune.space["optim.momentum"] == "uniform:0:0.9"


def test_round_trip_through_plain_dict() -> None:
    cfg = parse(["--optim.lr", "0.3", "--data.dataset", "synthetic"])
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("argv, key", [
    (["--optim.lr", "0"], "optim.lr"),
    (["--optim.lr", "-1"], "optim.lr"),
    (["--optim.lr", "abc"], "optim.lr"),
    (["--optim.lr", "true"], "optim.lr"),
    (["--scaling.num_workers", "0"], "scaling.num_workers"),
    (["--scaling.num_workers", "1.5"], "scaling.num_workers"),
    (["--data.dataset", "cifar"], "data.dataset"),
    (["--model.hidden_sizes", "0"], "model.hidden_sizes"),
    (["--train.epochs", "x"], "train.epochs"),
    (["--data.val_fraction", "1.5"], "data.val_fraction"),
    (["--scaling.use_gpu", "maybe"], "scaling.use_gpu"),
    (["--optim.nesterov", "1"], "optim.nesterov"),
])
def test_bad_values_exit_2_naming_the_key(argv: list[str], key: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert key in capsys.readouterr().err


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"optim": {"learning_rate": 0.1}})
    assert err.value.key == "optim.learning_rate"
    with pytest.raises(SystemExit):
        parse(["--config", str(preset)])


def test_missing_preset_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--config", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2 and "nope.yaml" in capsys.readouterr().err


def test_cli_bad_option_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "mlp.train", "--optim.lr", "-0.5", "--run.storage_path", str(storage)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "optim.lr" in proc.stderr and "must be > 0" in proc.stderr
    assert not storage.exists()


def test_help_explains_every_training_option() -> None:
    text = make_parser("mlp-train", "x", sections=("optim", "scaling")).format_help()
    assert "--optim.lr" in text and "learning rate (the first epoch's" in text and "(default: 0.01)" in text
    assert "--optim.name" in text and "sgd | adam | adamw" in text and "(default: sgd)" in text
    assert "--scaling.num_workers" in text


def test_exit_now_keeps_what_a_normal_exit_does(tmp_path: Path) -> None:
    """The console scripts' prompt exit still joins threads, runs atexit handlers and flushes output."""
    script = f"""
import atexit, sys, threading, time
from pathlib import Path
from mlp.console import exit_now
atexit.register(lambda: Path({str(tmp_path / 'atexit')!r}).write_text('ran'))
worker = threading.Thread(target=lambda: (time.sleep(0.3), Path({str(tmp_path / 'thread')!r}).write_text('done')))
worker.start()
sys.stdout.write('buffered, no newline')
sys.stderr.write('to stderr')
exit_now(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout == "buffered, no newline"
    assert proc.stderr == "to stderr"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
