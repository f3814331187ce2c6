"""mlp.preflight.capacity and mlp.preflight.checks without Ray: bundle packing, the messages, autoscaling verdicts, the node probe, the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlp.preflight import capacity as fit
from mlp.preflight.capacity import (
    Autoscaling,
    NodeInfo,
    PreflightError,
    Request,
    assess,
    autoscaler_v1_reason,
    capacity,
    detect_autoscaling,
    fit_problem,
    fits,
    node_groups,
    requests_for,
    sweep_request,
)
from mlp.console import run_command
from mlp.preflight.checks import Probe, probe_node
from mlp.registry.storage import Location


def cpus(*amounts: float) -> list[dict[str, float]]:
    return [{"CPU": a} for a in amounts]


def nodes(*shapes: dict[str, float]) -> list[NodeInfo]:
    return [NodeInfo(f"id{i}", f"10.0.0.{i}", dict(s)) for i, s in enumerate(shapes, 1)]


def workers(count: int, cpu: float = 1.0, gpu: float = 0.0, strategy: str = "PACK") -> Request:
    bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    return Request("worker", count, bundle, "scaling.num_workers",
                   {"CPU": "scaling.cpus_per_worker", "GPU": "scaling.use_gpu"}, strategy)


# ---------------------------------------------------------------- packing

def test_each_bundle_must_sit_whole_on_one_node():
    two_small = cpus(2, 2)
    assert fits(cpus(1.5, 1.5), two_small)
    assert not fits(cpus(1.5, 1.5, 1.5), two_small)  # 4.5 > 4 in total
    assert not fits(cpus(1.5, 1.5), cpus(2))  # 3 CPU on a 2-CPU node
    assert not fits(cpus(3), two_small)  # 4 CPU in total, but 2 on each node
    assert fits(cpus(3), cpus(2, 4))


def test_gpus_are_counted_per_node():
    gpu_node, cpu_node = {"CPU": 8, "GPU": 1}, {"CPU": 8}
    one_gpu_worker = [{"CPU": 1, "GPU": 1}]
    assert not fits(one_gpu_worker, [cpu_node, cpu_node])
    assert fits(one_gpu_worker, [cpu_node, gpu_node])
    assert not fits(one_gpu_worker * 2, [cpu_node, gpu_node])


def test_fractions_are_counted_in_ray_units_not_floats():
    assert 0.1 * 3 > 0.3  # the float trap the integer units avoid
    assert fits(cpus(0.1, 0.1, 0.1), cpus(0.3))
    assert not fits(cpus(0.1, 0.1, 0.1, 0.1), cpus(0.3))


def test_strict_strategies():
    assert not fits(cpus(1.5, 1.5), cpus(2, 2), "STRICT_PACK")
    assert fits(cpus(1.5, 1.5), cpus(2, 4), "STRICT_PACK")
    assert not fits(cpus(1, 1), cpus(2), "STRICT_SPREAD")
    assert fits(cpus(1, 1), cpus(1, 1), "STRICT_SPREAD")
    assert not fits([{"CPU": 2}, {"CPU": 0.5}], cpus(2, 0.4), "STRICT_SPREAD")
    assert fits([{"CPU": 2}, {"CPU": 0.5}], cpus(2, 0.5), "STRICT_SPREAD")


def test_mixed_bundles_are_searched_exactly():
    # First-fit-decreasing puts 4+3 on one node and strands a 2; the exact search finds 4+2+2 / 3+3+2.
    assert fits(cpus(4, 3, 3, 2, 2, 2), cpus(8, 8))
    assert not fits(cpus(4, 3, 3, 2, 2, 2, 1), cpus(8, 8))
    # A TorchTrainer trial: its actor's 0.01 CPU beside 2 x 0.995 CPU workers. The totals fit two
    # 1-CPU nodes (2.0 of 2.0), the bundles do not; one node with room for the actor is enough.
    trial = cpus(0.01, 0.995, 0.995)
    assert not fits(trial, cpus(1, 1))
    assert fits(trial, cpus(1, 1.01))


def test_capacity_and_trivial_cases():
    assert capacity({"CPU": 1.5}, cpus(2, 2, 3)) == 4
    assert capacity({"CPU": 1.5}, cpus(2, 2, 3), "STRICT_PACK") == 2
    assert capacity({"CPU": 1.5}, cpus(2, 2, 1), "STRICT_SPREAD") == 2
    assert fits([], [])
    assert not fits(cpus(1), [])


# ---------------------------------------------------------------- messages and verdicts

def test_no_gpu_names_the_key_the_nodes_and_the_fix():
    misfit = fit_problem(workers(2, gpu=1), nodes({"CPU": 4}, {"CPU": 2}))
    assert misfit is not None and misfit.key == "scaling.use_gpu"
    message = misfit.message()
    assert message.startswith("scaling.use_gpu: the request needs 2 workers x 1 GPU, but no node of this cluster "
                              "has a GPU (nodes: 10.0.0.1: 4 CPU; 10.0.0.2: 2 CPU)")
    assert message.endswith("Run without --scaling.use_gpu, or add GPU nodes.")


def test_too_many_workers_says_how_many_fit():
    message = fit_problem(workers(3, cpu=1.5), nodes({"CPU": 2}, {"CPU": 2})).message()
    assert message.startswith("scaling.num_workers: the request needs 3 workers x 1.5 CPU (each whole on one node), "
                              "but the nodes hold at most 2")
    assert "Lower --scaling.num_workers to 2 or --scaling.cpus_per_worker, or add nodes." in message
    assert fit_problem(workers(2, cpu=1.5), nodes({"CPU": 2}, {"CPU": 2})) is None


def test_a_worker_larger_than_any_node_names_the_per_worker_key():
    message = fit_problem(workers(1, cpu=4), nodes({"CPU": 2}, {"CPU": 3})).message()
    assert message.startswith("scaling.cpus_per_worker: one worker needs 4 CPU, but the largest node has 3")
    assert "Lower --scaling.cpus_per_worker to at most 3" in message


def test_a_trainer_trial_counts_its_own_actor(config_factory):
    cfg = config_factory(tune={"workers_per_trial": 2})
    message = fit_problem(sweep_request(cfg, {"CPU": 0.01}, 0.995), nodes({"CPU": 1}, {"CPU": 1})).message()
    assert message.startswith("tune.workers_per_trial: the request needs 2 trial workers x 0.995 CPU plus 0.01 CPU")
    assert "the nodes hold at most 1 " in message


def test_strict_pack_suggests_the_soft_strategy():
    message = fit_problem(workers(2, cpu=1.5, strategy="STRICT_PACK"), nodes({"CPU": 2}, {"CPU": 2})).message()
    assert "(all on one node)" in message and "--scaling.placement_strategy PACK" in message


def test_fixed_cluster_fails_autoscaling_cluster_waits():
    req, small = workers(4), nodes({"CPU": 2})
    problem, note = assess(req, small, Autoscaling(False, "none"))
    assert problem and "at most 2" in problem and note is None
    problem, note = assess(req, small, Autoscaling(True, "autoscaler v2 is enabled in GCS"))
    assert problem is None and note and "waits until the autoscaler adds nodes" in note
    assert assess(workers(2), small, Autoscaling(False, "none")) == (None, None)


def test_known_node_groups_refuse_what_even_the_maximum_cannot_hold():
    groups = Autoscaling(True, "node groups in the cluster config in GCS",
                         (NodeInfo("node group cpu", "", {"CPU": 4}),), (3,))
    problem, note = assess(workers(8, cpu=1.5), nodes({"CPU": 2}), groups)  # 1 + 3 x 2 = 7 < 8
    assert note is None and problem and "even at the autoscaler's maximum" in problem
    problem, note = assess(workers(6, cpu=1.5), nodes({"CPU": 2}), groups)
    assert problem is None and note
    problem, _ = assess(workers(1, gpu=1), nodes({"CPU": 2}), groups)
    assert problem and "no node of this cluster has a GPU" in problem


def test_autoscaling_override_needs_no_cluster():
    assert detect_autoscaling({fit.AUTOSCALING_ENV: "0"}).autoscales is False
    with pytest.raises(PreflightError, match=fit.AUTOSCALING_ENV):
        detect_autoscaling({fit.AUTOSCALING_ENV: "maybe"})


def test_v1_status_counts_as_autoscaling_only_with_named_node_types():
    manual = {"autoscaler_report": {"node_type_mapping": {"abc": "node_abc"}, "pending_launches": {}}}
    launcher = {"autoscaler_report": {"node_type_mapping": {"10.0.0.1": "ray.head.default"},
                                      "pending_launches": {"gpu_workers": 2}}}
    assert autoscaler_v1_reason(json.dumps(manual).encode()) is None
    assert autoscaler_v1_reason(None) is None
    assert autoscaler_v1_reason(json.dumps(launcher).encode()) == (
        "the autoscaler manages node types gpu_workers, ray.head.default")


def test_node_groups_from_the_gcs_cluster_config():
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 4}, max_count=10),
        autoscaler_pb2.NodeGroupConfig(name="off", resources={"CPU": 64}, max_count=0),
        autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=-1)])
    groups, counts = node_groups(config)
    assert [(g.node_id, g.resources) for g in groups] == [("node group cpu", {"CPU": 4.0}),
                                                          ("node group gpu", {"CPU": 8.0, "GPU": 1.0})]
    assert counts == (10, -1)
    assert node_groups(None) == ((), ())


def test_requests_follow_the_config(config_factory):
    cfg = config_factory(scaling={"num_workers": 3, "use_gpu": True, "cpus_per_worker": 2},
                         serve={"min_replicas": 2, "max_replicas": 4, "replica_cpus": 0.25},
                         tune={"workers_per_trial": 2})
    (train,) = requests_for(cfg, "train")
    assert (train.count, train.bundle, train.count_key) == (3, {"CPU": 2, "GPU": 1.0}, "scaling.num_workers")
    (serve,) = requests_for(cfg, "serve")
    assert (serve.count, serve.bundle, serve.resource_keys["CPU"]) == (2, {"CPU": 0.25}, "serve.replica_cpus")
    (sweep,) = requests_for(cfg, "sweep")
    assert (sweep.count, sweep.extra) == (2, ())
    trainer_trial = sweep_request(cfg, {"CPU": 0.01}, 1.995)
    assert trainer_trial.bundles() == [{"CPU": 0.01}, {"CPU": 1.995, "GPU": 1.0}, {"CPU": 1.995, "GPU": 1.0}]


# ---------------------------------------------------------------- the node probe, run here as a plain function

def test_probe_passes_on_shared_storage(tmp_path: Path):
    root = Location.of(tmp_path / "runs" / ".preflight" / "tok")
    (root / "driver").write_text("tok")
    assert probe_node(Probe("tok", root.uri, True, None), "n1") == {"write": "", "shared": ""}
    assert (root / "n1").read_text() == "tok"


def test_probe_on_a_machine_that_does_not_share_the_path_fails_and_cleans_up(tmp_path: Path):
    # The driver's probe is missing here, as on a node whose path is its own local disk.
    root = Location.of(tmp_path / "runs" / ".preflight" / "tok")
    result = probe_node(Probe("tok", root.uri, True, None), "n1")
    assert result["write"] == "" and "does not exist" in result["shared"]
    # Its probe and every folder it created are gone, the storage path itself included: nothing written.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # A storage path that was there before stays, empty as it was.
    (tmp_path / "runs").mkdir()
    assert "does not exist" in probe_node(Probe("tok", root.uri, True, None), "n1")["shared"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == []


def test_probe_reports_an_unwritable_path_and_an_unreadable_model(tmp_path: Path):
    (tmp_path / "file").write_text("not a folder")
    model = tmp_path / "model.pt"
    result = probe_node(Probe("tok", str(tmp_path / "file" / "runs"), False, str(model)), "n1")
    assert "Not a directory" in result["write"] and "model.pt" in result["model"]
    model.write_bytes(b"weights")
    assert probe_node(Probe("tok", None, False, str(model)), "n1") == {"model": ""}


def test_run_command_exits_2_with_one_line_per_problem(capsys):
    def action() -> None:
        raise PreflightError(["scaling.use_gpu: no GPU. Fix it.", "run.storage_path: not shared. Fix it."])

    assert run_command("mlp-train", action) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["mlp-train: error: preflight: scaling.use_gpu: no GPU. Fix it.",
                     "mlp-train: error: preflight: run.storage_path: not shared. Fix it."]
