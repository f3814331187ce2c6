"""Your own table on two nodes with separate disks: train on s3:// Parquet, promote, score s3:// Parquet.

The data is scikit-learn's ``load_digits`` (1,797 8x8 images as 64 numeric columns and a
``target`` column), written by this module with pyarrow into the moto S3 bucket as
several Parquet files: nothing on either node's disk, and no file the project wrote.

* ``mlp train --data.source s3://.../train/ --data.label target`` with two workers, one per
  node (STRICT_SPREAD): each worker reads the table from S3 itself; the run's ``ranks.json``
  names both nodes, and the test accuracy passes a bar.
* The run is promoted (``--promote``) into an S3 registry and named by an alias; ``mlp predict``
  scores new rows (the digits without their label, shuffled, with an ``id`` column) spread
  over several Parquet files, and writes Parquet back to S3. Every input row comes back once,
  with the prediction and probabilities of the same version loaded offline through
  ``mlp.checkpoint.load_model`` (not through ``serve``), and a class name of the model.
* Both nodes scored rows: Ray's State API names the node of every scoring actor and of every
  finished call to it, read from the cluster itself rather than from anything ``mlp predict`` prints.

Each node has 2 CPUs (logical; the machine may have fewer cores): ``mlp predict`` keeps one CPU
of each node for Ray Data's read and write tasks and puts a scoring actor on every node with a
CPU to spare (``serve.batch.actor_pool``), so 1-CPU nodes would score on one node only.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.datasets import load_digits

from mlp import registry
from mlp.checkpoint import load_model
from mlp.tables import standardised

from .cluster import TwoNodeCluster
from .test_two_nodes import S3_BUCKET, failed, read_json, two_nodes_env  # noqa: F401 - a fixture, used by name

two_nodes_options = {"head_cpus": 2, "worker_cpus": 2}
MODEL = "digits"
ALIAS = "champion"
TRAIN_FILES = 3
SCORE_FILES = 6
ACCURACY_BAR = 0.9  # measured 0.97-0.98 with these settings (plain loop and two nodes alike)
TRAIN_ARGS = ("--data.label", "target", "--model.hidden_sizes", "64", "--optim.name", "adam",
              "--optim.lr", "0.003", "--train.epochs", "10", "--train.batch_size", "32")
PREDICT_BATCH = 64  # rows per model call: Ray Data blocks of 4 batches make 8 blocks of the 1,797 rows
SCORING_CLASS = "ScoreBatch"  # serve.batch's actor class: Ray Data names its actors and their calls after it


def write_parts(table: pa.Table, uri: str, parts: int) -> None:
    """``table`` as ``parts`` Parquet files of about equal size under the folder ``uri`` (pyarrow's own S3 client,
    not the project's storage layer, as a user's data would be written)."""
    fs, folder = pafs.FileSystem.from_uri(uri)
    step = -(-table.num_rows // parts)
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), f"{folder}/part-{i:02d}.parquet", filesystem=fs)


@pytest.fixture(scope="module")
def bucket(s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The digits in S3: ``train/`` (features and ``target``) and ``score/`` (features and ``id``, no label,
    shuffled); the pytest process reads the bucket with the server's credentials. ``found`` carries the
    promoted version from the training test to the scoring test."""
    tag = uuid.uuid4().hex[:8]
    root = f"s3://{S3_BUCKET}/own-data-{tag}"
    digits = load_digits(as_frame=True)
    frame = digits.frame
    order = np.random.default_rng(0).permutation(len(frame))
    score = frame.drop(columns=["target"]).iloc[order].assign(id=np.arange(len(frame)))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env.items():
            patch.setenv(key, value)
        # A remote version is downloaded into this process's cache: a folder of the test's own, not ~/.cache.
        patch.setenv("MLP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        write_parts(pa.Table.from_pandas(frame, preserve_index=False), f"{root}/train", TRAIN_FILES)
        write_parts(pa.Table.from_pandas(score, preserve_index=False), f"{root}/score", SCORE_FILES)
        yield {"root": root, "runs": f"{root}/runs", "registry": f"{root}/registry", "score": score,
               "truth": frame["target"].to_numpy()[order], "features": list(digits.feature_names), "found": {}}


def test_train_on_s3_parquet_one_rank_on_each_node(two_nodes: TwoNodeCluster, bucket: dict[str, Any]) -> None:
    name = "digits-spread"
    proc = two_nodes.run_cli("mlp.train", "--data.source", f"{bucket['root']}/train/", *TRAIN_ARGS,
                             "--scaling.num_workers", "2", "--scaling.placement_strategy", "STRICT_SPREAD",
                             "--run.name", name, "--run.storage_path", bucket["runs"], "--promote",
                             "--registry.path", bucket["registry"], "--registry.model_name", MODEL)
    assert proc.returncode == 0, failed(proc)
    run = f"{bucket['runs']}/{name}"
    summary, ranks = read_json(f"{run}/summary.json"), read_json(f"{run}/ranks.json")
    print(f"\ndigits from s3 on two nodes: test accuracy {summary['test_accuracy']:.4f}, "
          f"wall {summary['wall_seconds']:.1f} s")
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["node_id"] for r in ranks} == {two_nodes.head.node_id, two_nodes.worker.node_id}
    assert summary["test_accuracy"] >= ACCURACY_BAR
    assert summary["promoted"] == f"{bucket['registry']}/{MODEL}/v1"
    registry.set_alias(bucket["registry"], MODEL, ALIAS, "v1")
    bucket["found"]["version"] = "v1"


def offline_scores(bucket: dict[str, Any], version: str) -> tuple[np.ndarray, list[str]]:
    """(probabilities in ``id`` order, class names) of the promoted version for the score rows, by the core
    alone: ``load_model`` and the standardisation training fitted (``mlp.tables.standardised``)."""
    model, cfg = load_model(registry.resolve_version(bucket["registry"], MODEL, version))
    x = torch.tensor(bucket["score"][cfg.schema.features].to_numpy(), dtype=torch.float32)
    with torch.inference_mode():
        return torch.softmax(model(standardised(x, cfg.schema)), dim=1).numpy(), cfg.schema.classes


def scoring_work_per_node(two_nodes: TwoNodeCluster) -> tuple[Counter, Counter]:
    """(scoring actors, finished scoring calls) per node, "head" or "worker", from Ray's State API."""
    names = {two_nodes.head.node_id: "head", two_nodes.worker.node_id: "worker"}
    actors = Counter(names.get(a["node_id"], a["node_id"]) for a in two_nodes.actors()
                     if SCORING_CLASS in a["class_name"])
    calls = Counter(names.get(t["node_id"], t["node_id"]) for t in two_nodes.tasks()
                    if SCORING_CLASS in t["name"] and t["name"].endswith(".submit") and t["state"] == "FINISHED")
    return actors, calls


def test_predict_scores_every_s3_row_once_on_both_nodes(two_nodes: TwoNodeCluster, bucket: dict[str, Any]) -> None:
    version = bucket["found"].get("version")
    if version is None:
        pytest.skip("the training test promoted nothing (see its failure)")
    output = f"{bucket['root']}/scored"
    proc = two_nodes.run_cli("serve.predict", "--registry.path", bucket["registry"], "--registry.model_name", MODEL,
                             "--serve.version", ALIAS, "--input", f"{bucket['root']}/score/", "--output", output,
                             "--batch-size", str(PREDICT_BATCH))
    assert proc.returncode == 0, failed(proc)
    score, features = bucket["score"], bucket["features"]
    # The summary line; Ray may echo its workers' log lines (raylet warnings) to stdout after it.
    done = next((line for line in proc.stdout.splitlines() if line.startswith("scored ")), "")
    print(f"\n{done}")
    assert done.startswith(f"scored {len(score)} rows with {version} in "), failed(proc)  # the alias, pinned
    out = pads.dataset(output, format="parquet").to_table().to_pandas().sort_values("id")
    assert out["id"].tolist() == list(range(len(score)))  # every row once: none lost, none doubled
    assert (out[features].to_numpy() == score[features].to_numpy()).all()  # each row's own columns came back
    offline, classes = offline_scores(bucket, version)
    assert out["prediction"].tolist() == offline.argmax(axis=1).tolist()
    assert np.allclose(np.stack(out["probabilities"].to_numpy()), offline, atol=1e-6)
    assert out["class_name"].tolist() == [classes[p] for p in out["prediction"]]
    assert sorted(set(classes)) == [str(digit) for digit in range(10)]
    accuracy = float((out["class_name"].to_numpy() == bucket["truth"].astype(str)).mean())
    print(f"every row equals the offline model; accuracy against the digits' own labels {accuracy:.4f}")
    assert accuracy >= ACCURACY_BAR
    actors, calls = scoring_work_per_node(two_nodes)
    print(f"scoring actors per node {dict(actors)}, finished scoring calls per node {dict(calls)}")
    assert actors == {"head": 1, "worker": 1}, (actors, calls)
    assert set(calls) == {"head", "worker"}, (actors, calls)
