"""A table larger than the memory budget streams through Ray Data and trains to the end.

The synthetic Parquet table is 3.1x the budget set here (``data.memory_budget_mb``), so
``data.ingest auto`` must choose the Ray Data path and say why; each worker's own memory
(``RssAnon``, sampled per chunk, from its first row on) must grow by less than the budget,
although the in-memory path would hold the whole table (390 MB) in each worker. The
growth is the loop's working set (model, optimizer, Ray Data's iterator, chunks in flight):
about 45 MB here, reached in the first epoch and flat over later ones. Both paths cut the
same validation rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlp.data import resolve_data
from mlp.distributed.run import run_training
from mlp.tables import VAL, rows_of

BUDGET_MB = 128
FEATURES = 256
ROWS = 400_000  # 400,000 x 256 float32 = 390 MB, 3.1x the budget
FILES = 40


def write_table(folder: Path, rows: int = ROWS, files: int = FILES) -> Path:
    """A learnable 10-class table (a fixed pattern per class plus noise), written a file at a time."""
    folder.mkdir(parents=True)
    gen = np.random.default_rng(7)
    patterns = gen.normal(size=(10, FEATURES)).astype(np.float32)
    names = [f"f{i}" for i in range(FEATURES)]
    for n in range(files):
        label = gen.integers(0, 10, rows // files)
        x = patterns[label] * 0.6 + gen.normal(size=(len(label), FEATURES)).astype(np.float32)
        columns = {name: x[:, i] for i, name in enumerate(names)}
        pq.write_table(pa.table({**columns, "label": label}), folder / f"part-{n:03d}.parquet")
    return folder


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_table(tmp_path_factory.mktemp("stream") / "table")


def test_a_table_three_times_the_budget_streams_and_trains(big_table: Path, config_factory, capsys) -> None:
    cfg = config_factory(data={"source": str(big_table), "memory_budget_mb": BUDGET_MB},
                         scaling={"num_workers": 2, "cpus_per_worker": 0.5},  # a CPU stays free for Ray Data
                         optim={"name": "adam", "lr": 0.001}, train={"epochs": 1, "batch_size": 512},
                         run={"name": "streamed"})
    summary = run_training(cfg)
    out = capsys.readouterr().out
    assert "streamed to the workers through Ray Data" in out and f"over the {BUDGET_MB} MB budget" in out, out
    assert summary["test_accuracy"] > 0.9, summary  # chance is 0.1
    assert len(summary["ranks"]) == 2
    for rank in summary["ranks"]:
        grew = rank["peak_private_mb"] - rank["start_private_mb"]
        print(f"rank {rank['rank']}: own memory {rank['start_private_mb']:.0f} -> {rank['peak_private_mb']:.0f} MB "
              f"(+{grew:.0f}); peak RSS with mapped object store pages {rank['peak_rss_mb']:.0f} MB")
        assert grew < BUDGET_MB, rank


def test_both_paths_cut_the_same_validation_rows(tmp_path: Path, config_factory) -> None:
    """The split is a function of each row, so reading it whole or in Ray Data blocks gives the same rows."""
    source = write_table(tmp_path / "small", rows=4_000, files=4)
    cfg = resolve_data(config_factory(data={"source": str(source), "ingest": "memory"}))
    from mlp.tables import load_rows

    x_memory, _ = load_rows(cfg.data, cfg.schema, "val")
    streamed = np.concatenate([x for x, _ in rows_of(cfg.data, VAL)])
    assert len(x_memory) == len(streamed) > 0
    standardised = (streamed - np.array(cfg.schema.mean)) / np.array(cfg.schema.std)
    assert np.allclose(np.sort(x_memory.numpy(), axis=0), np.sort(standardised, axis=0), atol=1e-4)
