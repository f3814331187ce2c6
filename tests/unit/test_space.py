"""The sweep's search space, trial sizing and CLI refusals: no Ray cluster is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlp.config import Config, ConfigError
from tune.space import apply_params, grid_size, parse_dim, parse_space
from tune.trial import DRIVER_CPU, plan_trials


def test_default_space_is_hidden_size_by_log_lr() -> None:
    dims = {d.key: d for d in parse_space(Config().tune.space)}
    assert dims["model.hidden_sizes"].values == (32, 64, 128, 256, 512)
    assert dims["optim.lr"].kind == "loguniform" and (dims["optim.lr"].low, dims["optim.lr"].high) == (1e-3, 0.5)


@pytest.mark.parametrize("key, spec, values", [
    ("optim.lr", "loguniform:1e-3:0.1:3", [0.001, 0.01, 0.1]),
    ("optim.momentum", "uniform:0:0.9:4", [0.0, 0.3, 0.6, 0.9]),
    ("model.hidden_sizes", "lograndint:32:512:5", [32, 64, 128, 256, 512]),
    ("train.batch_size", "randint:32:64:3", [32, 48, 64]),
    ("model.hidden_sizes", "choice:64,256/128", [64, "256/128"]),
    ("model.activation", "choice:relu,tanh", ["relu", "tanh"]),
])
def test_grid_values(key: str, spec: str, values: list) -> None:
    got = parse_dim(key, spec).grid_values()
    assert got == (pytest.approx(values) if isinstance(values[0], float) else values)


def test_sampled_values_become_typed_config() -> None:
    cfg = apply_params(Config().to_dict(), {"model.hidden_sizes": "256/128", "optim.lr": 0.2, "train.batch_size": 32})
    assert cfg.model.hidden_sizes == [256, 128] and cfg.optim.lr == 0.2 and cfg.train.batch_size == 32
    assert apply_params(Config().to_dict(), {"model.hidden_sizes": 64}).model.hidden_sizes == [64]


@pytest.mark.parametrize("key, spec, message", [
    ("optim.lrr", "loguniform:1e-3:0.5", "unknown key"),
    ("optim.lr", "loguniform:0.5:1e-3", "must be below high"),
    ("optim.lr", "uniform:0.1:0.1", "must be below high"),
    ("model.hidden_sizes", "choice:", "at least one value"),
    ("model.hidden_sizes", "choice:,", "at least one value"),
    ("model.hidden_sizes", "choice:0,32", "every width must be >= 1"),
    ("model.hidden_sizes", "choice:32,32", "twice"),
    ("optim.lr", "logunif:1e-3:0.5", "must start with one of"),
    ("optim.lr", "0.1", "must start with one of"),
    ("optim.lr", "loguniform:0:0.5", "low > 0"),
    ("optim.lr", "loguniform:1e-3", "LOW:HIGH"),
    ("optim.lr", "uniform:a:1", "not a number"),
    ("optim.momentum", "uniform:0:1", "must be in [0, 1)"),
    ("model.activation", "uniform:0:1", "numeric key"),
    ("model.activation", "choice:relu,swish", "must be one of"),
    ("optim.lr", "randint:1:3", "whole-number key"),
    ("train.epochs", "choice:1,2", "cannot be searched"),
])
def test_bad_spec_names_the_key(key: str, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_dim(key, spec)
    assert err.value.key == f"tune.space.{key}"
    assert message in err.value.message


def test_grid_needs_point_counts_and_multiplies() -> None:
    with pytest.raises(ConfigError, match="point count"):
        parse_space({"optim.lr": "loguniform:1e-3:0.5"}, search="grid")
    dims = parse_space({"optim.lr": "loguniform:1e-3:0.5:3", "model.hidden_sizes": "choice:32,64"}, search="grid")
    assert grid_size(dims) == 6
    with pytest.raises(ConfigError, match="empty"):
        parse_space({}, search="random")


@pytest.mark.parametrize("argv, key", [
    (["--tune.space.optim.lrr", "loguniform:1e-3:0.5"], "tune.space.optim.lrr"),
    (["--tune.space.optim.lr", "loguniform:0.5:0.001"], "tune.space.optim.lr"),
    (["--tune.space.model.hidden_sizes", "choice:"], "tune.space.model.hidden_sizes"),
    (["--tune.search", "bayes"], "tune.search"),
    (["--tune.runner", "process", "--tune.workers_per_trial", "2"], "tune.runner"),
])
def test_cli_refuses_bad_space_with_exit_2_before_ray(argv: list[str], key: str, tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation happens before Ray starts or anything is written."""
    import tune.sweep
    import tune.tuner

    def no_ray() -> None:  # a shared test cluster may already run, so trap the call itself
        raise AssertionError("the sweep reached init_ray before refusing its config")

    monkeypatch.setattr(tune.tuner, "init_ray", no_ray)
    storage = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(tune.sweep.main([*argv, "--data.dataset", "synthetic", "--run.storage_path", str(storage)]))
    assert exit_info.value.code == 2
    assert key in capsys.readouterr().err
    assert not storage.exists()


def test_resume_without_a_sweep_exits_2(tmp_path: Path, capsys) -> None:
    from tune.sweep import main

    code = main(["--resume", "--data.dataset", "synthetic", "--run.name", "nothing-here",
                 "--run.storage_path", str(tmp_path / "runs")])
    assert code == 2 and "no interrupted sweep" in capsys.readouterr().err
    assert main(["--resume", "--data.dataset", "synthetic", "--run.storage_path", str(tmp_path / "runs")]) == 2
    assert "--run.name" in capsys.readouterr().err


def _cfg(**tune: object) -> Config:
    return Config.from_dict({"tune": tune})


def test_in_process_trials_take_a_core_each() -> None:
    plan = plan_trials(_cfg(), {"CPU": 2.0})
    assert plan.runner == "process" and plan.trial_resources == {"CPU": 1.0} and plan.concurrency == 2


def test_trainer_trials_fit_the_cluster_with_a_nonzero_driver() -> None:
    """Ray refuses a trial that reserves nothing, so the driver takes 0.01 and its workers the rest."""
    for workers, cpus in ((1, 2.0), (2, 2.0), (3, 7.0), (2, 16.0)):
        plan = plan_trials(_cfg(runner="trainer", workers_per_trial=workers), {"CPU": cpus})
        assert plan.trial_resources["CPU"] == DRIVER_CPU > 0
        per_trial = plan.trial_resources["CPU"] + workers * plan.worker_cpus
        assert per_trial <= workers * 1.0 + 1e-9
        assert plan.concurrency == int(cpus // workers)
        assert plan.concurrency * per_trial <= cpus + 1e-9
        assert plan.threads == 1  # each worker still uses one whole core
    assert plan_trials(_cfg(workers_per_trial=2), {"CPU": 2.0}).runner == "trainer"


def test_empty_trial_request_is_what_ray_refuses() -> None:
    """The trap behind DRIVER_CPU: a trial bundle of {'CPU': 0} is rejected by Ray itself."""
    from ray.tune import PlacementGroupFactory

    with pytest.raises(ValueError, match="empty head and zero worker bundles"):
        PlacementGroupFactory([{"CPU": 0}])
    PlacementGroupFactory([{"CPU": DRIVER_CPU}])


def test_gpu_and_user_limits_cap_concurrency() -> None:
    gpu = Config.from_dict({"scaling": {"use_gpu": True}})
    assert plan_trials(gpu, {"CPU": 16.0, "GPU": 2.0}).concurrency == 2
    assert plan_trials(gpu, {"CPU": 16.0, "GPU": 2.0}).trial_resources == {"CPU": 1.0, "GPU": 1.0}
    assert plan_trials(_cfg(max_concurrent=1), {"CPU": 8.0}).concurrency == 1
    with pytest.raises(ConfigError, match="one trial needs 4 CPU"):
        plan_trials(_cfg(workers_per_trial=4), {"CPU": 2.0})


@pytest.mark.parametrize("preset", sorted(Path(__file__).parents[2].glob("cluster/presets/sweep-*.yaml")))
def test_sweep_presets_load_with_a_valid_space(preset: Path) -> None:
    from mlp.options import load_yaml

    cfg = Config.from_dict(load_yaml(str(preset)))
    assert parse_space(cfg.tune.space, cfg.tune.search)
