"""Reports and the pipeline's verification verdict, without Ray: real files, real plots, real numbers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cluster.pipeline_report import StageLog, plot_latency, write_pipeline_report
from cluster.verify import TIE_TOLERANCE, Progress, compare
from mlp.config import Config
from mlp.reports.markdown import CURVES_PNG
from mlp.reports.run_report import exchange_advice, run_report, throughput, write_run_report
from mlp.registry.storage import Location
from tune.sweep_report import write_sweep_report
from tune.space import parse_space

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history(epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e, "val_loss": 1.1 / e,
             "val_accuracy": 0.45 + 0.1 * e, "lr": 0.1, "epoch_s": 2.0, "samples_per_s": 1000.0 * e,
             "timestamp": 1_700_000_000 + e} for e in range(1, epochs + 1)]


def summary(**extra) -> dict:
    return {"run_name": "r1", "dataset": "synthetic", "epochs": 3, "num_workers": 2, "test_accuracy": 0.7312,
            "test_loss": 0.61, "best_val_accuracy": 0.75, "train_seconds": 6.0, "wall_seconds": 20.5,
            "target_accuracy": 0.7, "time_to_target_s": 6.0, "checkpoint": "/runs/r1/checkpoint_2", **extra}


def test_run_report_has_every_section_and_a_real_plot(tmp_path: Path) -> None:
    folder = Location.of(str(tmp_path))
    ranks = [{"rank": 0, "node_ip": "10.0.0.1", "node_id": "aaa"}, {"rank": 1, "node_ip": "10.0.0.2", "node_id": "bbb"}]
    report = write_run_report(folder, Config().to_dict(), summary(promoted="/reg/mlp/v4"), history(), ranks)
    text = Path(str(report)).read_text()
    png = (tmp_path / CURVES_PNG).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert f"![loss and accuracy per epoch]({CURVES_PNG})" in text
    assert "| 0.7312 |" in text  # test accuracy
    assert "reached after **6.0 s** of training (epoch 3)" in text  # val acc 0.75 >= 0.7 first at epoch 3
    assert "10.0.0.1" in text and "10.0.0.2" in text
    assert "2000 samples/s over the run (epochs from 1000 to 3000)" in text
    assert "/reg/mlp/v4" in text
    config_block = re.search(r"```json\n(.*?)\n```", text, re.S).group(1)
    assert json.loads(config_block) == Config().to_dict()


def test_run_report_says_when_the_target_was_missed(tmp_path: Path) -> None:
    report = write_run_report(Location.of(str(tmp_path)), Config().to_dict(),
                              summary(target_accuracy=0.99, time_to_target_s=None), history(), [])
    assert "validation accuracy 0.99 **not reached** in 3 epochs" in Path(str(report)).read_text()


def test_throughput_weights_epochs_by_their_time() -> None:
    rows = [{"samples_per_s": 100.0, "epoch_s": 1.0}, {"samples_per_s": 300.0, "epoch_s": 3.0}]
    assert throughput(rows) == {"mean": 250.0, "min": 100.0, "max": 300.0}


def test_sweep_report_links_its_plots_and_ranks_trials(tmp_path: Path) -> None:
    cfg = Config().to_dict()
    dims = parse_space(cfg["tune"]["space"])
    rows = [{"rank": i + 1, "trial_id": f"t{i}", "model.hidden_sizes": w, "optim.lr": lr, "best_val_accuracy": acc,
             "epochs": 3, "stopped_early": i > 0, "status": "finished" if i == 0 else "stopped", "seconds": 4.0,
             "node_id": "node123456789"} for i, (w, lr, acc) in enumerate([(128, 0.1, 0.9), (32, 0.001, 0.5)])]
    result = {"sweep": "s1", "trials": 2, "stopped_early": 1, "errors": 0, "wall_seconds": 12.0,
              "promoted": {"trial_id": "t0", "best_val_accuracy": 0.9, "test_accuracy": 0.88, "registry_dir": "/r/v1"}}
    folder = Location.of(str(tmp_path))
    text = Path(str(write_sweep_report(folder, cfg, rows, dims, result, [folder / "a.png", folder / "b.png"]))).read_text()
    assert text.index("| 1 | t0 | 128 | 0.1 | 0.9 |") < text.index("| 2 | t1 | 32 | 0.001 | 0.5 |")
    assert "![a](a.png)" in text and "![b](b.png)" in text
    assert "promoted to `/r/v1`" in text and "1 stopped early" in text


def probabilities(labels: list[int], margin: float = 0.5) -> np.ndarray:
    out = np.full((len(labels), 10), (1 - margin) / 10, dtype=np.float32)
    out[np.arange(len(labels)), labels] += margin
    return out


def test_identical_predictions_pass() -> None:
    p = probabilities([1, 2, 3])
    result = compare("v2", p, p.copy(), ["v2"] * 3, np.array([1, 2, 0]), [5.0, 6.0], 0.1)
    assert result.ok and result.problem() == ""
    assert result.served_accuracy == result.offline_accuracy == pytest.approx(2 / 3)


def test_a_different_label_fails_naming_the_image_unless_it_is_a_tie() -> None:
    offline = probabilities([1, 2, 3, 4])
    served = offline.copy()
    served[2] = probabilities([7])[0]  # a real disagreement at image 2
    offline[3, 5] = offline[3, 4] - TIE_TOLERANCE / 2  # image 3: labels 4 and 5 tie offline
    served[3] = offline[3]
    served[3, 5] += TIE_TOLERANCE  # ... and the endpoint breaks the tie the other way
    result = compare("v2", offline, served, ["v2"] * 4, np.array([1, 2, 3, 4]), [1.0], 0.1)
    assert not result.ok and result.mismatches == [2]
    assert "1 of 4 served predictions differ from v2's offline predictions (first: test image 2, " \
           "served label 7, offline 3" in result.problem()


def test_answers_from_another_version_fail() -> None:
    p = probabilities([1, 2])
    result = compare("v2", p, p, ["v2", "v1"], np.array([1, 2]), [1.0], 0.1)
    assert not result.ok and "{'v1': 1}" in result.problem()


def test_progress_on_a_log_prints_about_ten_lines() -> None:
    stream = io.StringIO()
    progress = Progress(1000, "verify", stream=stream)
    for _ in range(100):
        progress.advance(10)
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("verify [") and "1000/1000 (100%" in lines[-1]


def test_pipeline_report_has_stages_verdict_and_plots(tmp_path: Path, capsys) -> None:
    folder = Location.of(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history()))
    stages = StageLog(["train", "deploy", "verify", "report"])
    for name in ("train", "deploy"):
        with stages.run(name):
            pass
    assert "[pipeline 2/4] deploy ok in" in capsys.readouterr().out
    p = probabilities([1, 2])
    verdict = compare("v1", p, p, ["v1", "v1"], np.array([1, 2]), [3.0, 4.0, 50.0], 0.1).to_dict()
    cfg = Config().to_dict()
    cfg["run"]["name"] = "pipe"
    report = write_pipeline_report(folder, cfg, stages, {"promoted": "/reg/mlp/v1"}, False, verdict,
                                   [3.0, 4.0, 50.0], 64, "http://127.0.0.1:8000", None)
    text = Path(str(report)).read_text()
    assert "| train |" in text and "| deploy |" in text and "| verify | 0 | not run |" in text
    assert "| v1 | 2 | 1 | 1 | 0 |" in text and "pass |" in text
    for png in ("verify_latency.png", "winner_learning_curves.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC) and f"]({png})" in text


def test_latency_plot_marks_p50_and_p99(tmp_path: Path) -> None:
    path = plot_latency(list(np.linspace(1, 100, 200)), Location.of(str(tmp_path / "lat.png")), 64)
    assert Path(str(path)).stat().st_size > 5_000


def _epochs(exchange_s: list[float], epoch_s: float = 2.0) -> list[dict]:
    return [{"epoch": i + 1, "epoch_s": epoch_s, "exchange_s": x} for i, x in enumerate(exchange_s)]


def test_advice_when_the_gradient_exchange_dominates() -> None:
    # The first epoch (warm-up) is left out: 1.2 s of 2 s in the later ones is 60%.
    advice = exchange_advice(_epochs([0.1, 1.2, 1.2]), workers=2, batch_size=64, lr=0.1)
    assert advice is not None
    assert "60% of each epoch" in advice and "1.20 s of 2.00 s" in advice
    assert "--scaling.num_workers 1" in advice
    assert "--train.batch_size 512 --optim.lr 0.8" in advice


def test_no_advice_when_compute_dominates_or_nothing_is_exchanged() -> None:
    assert exchange_advice(_epochs([1.9, 0.4, 0.4]), workers=2, batch_size=64, lr=0.1) is None  # 20%
    assert exchange_advice(_epochs([1.5, 1.5]), workers=1, batch_size=64, lr=0.1) is None  # one worker
    assert exchange_advice([{"epoch": 1, "epoch_s": 2.0}], workers=2, batch_size=64, lr=0.1) is None  # not timed


def test_run_report_shows_the_advice_and_the_exchange_seconds() -> None:
    history = [{**h, "train_loss": 1.0, "val_accuracy": 0.5} for h in _epochs([1.5, 1.5])]
    text = run_report({}, {"run_name": "r", "advice": "use one worker"}, history, [])
    assert "**Advice:** use one worker" in text
    assert "exchange s" in text and "| 1.5 |" in text
