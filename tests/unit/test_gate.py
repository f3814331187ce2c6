"""The rollout gate without Serve: the rule, the registry's rollout file and decision log, feedback parsing,
and the ledger deciding on a real registry on disk."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlp.config import Config
from mlp.registry import COMPLETE_MARKER, RegistryError, read_latest
from mlp.registry.rollouts import Rollout, end_rollout, read_decisions, read_rollout, start_rollout
from serve.gate import VersionFigures, judge
from serve.inputs import InputError, feedback_labels, new_request_id
from serve.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]


def figures(labelled: int, correct: int, requests: int = 0, errors: int = 0) -> VersionFigures:
    return VersionFigures(requests=requests or labelled, errors=errors, labelled=labelled, correct=correct)


def test_the_gate_waits_for_enough_labels_then_promotes_a_candidate_no_worse_within_the_tolerance() -> None:
    rollout = Rollout(candidate="v2", min_labelled=100, tolerance=0.02)
    assert judge(rollout, figures(100, 80), figures(99, 99)) is None  # the candidate has 99 < 100
    assert judge(rollout, figures(99, 80), figures(100, 99)) is None
    verdict = judge(rollout, figures(100, 80), figures(100, 79))  # 0.79 vs 0.80: within 0.02
    assert verdict is not None and verdict.action == "promote" and "0.7900 vs 0.8000" in verdict.reason


def test_the_gate_rolls_back_a_less_accurate_or_more_failing_candidate() -> None:
    rollout = Rollout(candidate="v2", min_labelled=100, tolerance=0.02)
    worse = judge(rollout, figures(100, 80), figures(100, 77))
    assert worse is not None and worse.action == "rollback" and "less accurate" in worse.reason
    failing = judge(rollout, figures(100, 80, requests=100), figures(100, 90, requests=100, errors=5))
    assert failing is not None and failing.action == "rollback" and "fails more often" in failing.reason


def test_latency_quantiles_and_figures() -> None:
    f = VersionFigures()
    for ms in range(1, 101):
        f.answered(error=ms == 100, latency_ms=float(ms))
    f.label(3, 4)
    shown = f.to_dict()
    assert shown["requests"] == 100 and shown["errors"] == 1 and shown["accuracy"] == 0.75
    assert shown["latency_p50_ms"] == 51.0 and shown["latency_p95_ms"] == 96.0


@pytest.mark.parametrize("kwargs, key", [({"mode": "blue"}, "mode"), ({"percent": 101}, "--percent"),
                                         ({"min_labelled": 0}, "--min-labelled"), ({"tolerance": 1.5}, "--tolerance")])
def test_a_bad_rollout_is_refused_naming_the_setting(kwargs, key) -> None:
    with pytest.raises(RegistryError, match=key):
        Rollout(candidate="v2", **kwargs)


def version_folders(tmp_path: Path, versions: int) -> Path:
    """A registry with ``versions`` complete (empty) versions and latest at v1: rollouts only read pointers."""
    root = tmp_path / "registry"
    for n in range(1, versions + 1):
        (root / "mlp" / f"v{n}").mkdir(parents=True)
        (root / "mlp" / f"v{n}" / COMPLETE_MARKER).write_text("")
    (root / "mlp" / "latest").write_text("v1\n")
    return root


def test_rollout_file_keeps_its_id_while_the_candidate_stays(tmp_path: Path) -> None:
    root = version_folders(tmp_path, 3)
    first = start_rollout(str(root), "mlp", "v2", "canary", 10)
    ramped = start_rollout(str(root), "mlp", "v2", "canary", 50)
    assert ramped.id == first.id and ramped.percent == 50 and read_rollout(str(root), "mlp") == ramped
    other = start_rollout(str(root), "mlp", "v3", "shadow", 0)
    assert other.id != first.id
    assert end_rollout(str(root), "mlp", expected_id=first.id) is None  # an old rollout's gate ends nothing
    assert end_rollout(str(root), "mlp") == other and read_rollout(str(root), "mlp") is None
    with pytest.raises(FileNotFoundError):
        start_rollout(str(root), "mlp", "v9", "canary", 10)


def test_a_damaged_rollout_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "rollout.json").write_text("{not json")
    with pytest.raises(RegistryError, match="rollout.json is not valid JSON"):
        read_rollout(str(tmp_path), "mlp")


def test_feedback_bodies() -> None:
    rid = new_request_id()
    names = ["cat", "dog", "bird"]
    assert feedback_labels(json.dumps({"request_id": rid, "label": 2}).encode(), names, 10) == (rid, [2])
    assert feedback_labels(json.dumps({"request_id": rid, "labels": ["dog", 0]}).encode(), names, 10) == (rid, [1, 0])
    assert feedback_labels(json.dumps({"request_id": rid, "labels": [2.0]}).encode(), names, 10) == (rid, [2])
    bad = [({"request_id": rid}, "exactly one of 'label' and 'labels'"),
           ({"request_id": "x", "label": 1}, "request_id must be"),
           ({"request_id": rid, "label": 3}, "class index 0 to 2"),
           ({"request_id": rid, "label": True}, "class index 0 to 2"),
           ({"request_id": rid, "label": "fish"}, "unknown class 'fish'"),
           ({"request_id": rid, "labels": []}, "list of 1 to 10"),
           ({"request_id": rid, "label": 1, "extra": 1}, "unknown key"),
           ([1, 2], "must be a JSON object")]
    for body, message in bad:
        with pytest.raises(InputError, match=message) as err:
            feedback_labels(json.dumps(body).encode(), names, 10)
        assert err.value.status == 422
    with pytest.raises(InputError) as err:
        feedback_labels(b"{", names, 10)
    assert err.value.status == 400


def test_the_ledger_scores_feedback_and_the_gate_promotes_on_the_registry(tmp_path: Path) -> None:
    root = version_folders(tmp_path, 2)
    rollout = start_rollout(str(root), "mlp", "v2", "shadow", 0, min_labelled=4, tolerance=0.0)
    ledger = Ledger(Config.from_dict({"registry": {"path": str(root)}}))

    async def scenario() -> list[dict]:
        results = []
        for k in range(2):
            rid = new_request_id()
            ledger.record([{"request_id": rid, "rollout": rollout.id, "version": "v1", "predicted": [0, 1],
                            "error": False, "latency_ms": 1.0,
                            "shadow": {"version": "v2", "predicted": [0, 0], "error": False, "latency_ms": 2.0}}])
            results.append(await ledger.feedback(rid, [0, 0]))
        results.append(await ledger.feedback(rid, [0, 0]))  # the same request again
        results.append(await ledger.feedback("1-000000000000", [1]))  # issued in 1970: answered by no one
        return results

    first, second, again, unknown = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert first == {"request_id": first["request_id"], "version": "v1", "labelled": 2, "correct": 1,
                     "shadow": {"version": "v2", "correct": 2}}
    decision = second["decision"]
    assert decision["action"] == "promote" and decision["moved"] == "latest -> v2"
    assert decision["figures"]["candidate"]["accuracy"] == 1.0 and decision["figures"]["current"]["accuracy"] == 0.5
    assert decision["figures"]["agreement"] == {"compared": 4, "agreed": 2, "rate": 0.5}
    assert again["status"] == 409 and unknown["status"] == 404
    assert read_latest(str(root), "mlp") == "v2" and read_rollout(str(root), "mlp") is None
    assert read_decisions(str(root), "mlp")[-1]["figures"] == decision["figures"]
    history = (root / "mlp" / "latest.history").read_text()
    assert '"by": "gate"' in history


def test_registry_cli_refuses_a_bad_percentage_with_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlp.registry", "canary", "latest", "--percent", "120",
                           "--registry.path", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "error" in done.stderr
    assert not (tmp_path / "mlp" / "rollout.json").exists()


def test_a_serve_config_rollout_is_applied_once_per_spec_and_ended_when_removed(tmp_path: Path) -> None:
    from mlp.registry.rollouts import record_decision, sync_configured_rollout

    reg = str(version_folders(tmp_path, 3))
    spec = {"candidate": "v2", "mode": "canary", "percent": 10}
    assert "from the Serve config" in sync_configured_rollout(reg, "mlp", spec)
    started = read_rollout(reg, "mlp")
    assert started.candidate == "v2" and started.percent == 10 and started.origin.startswith("serve-config:")
    assert sync_configured_rollout(reg, "mlp", dict(spec)) is None  # another replica, or a restart: no change
    sync_configured_rollout(reg, "mlp", {**spec, "percent": 50})  # a changed share keeps the gate's evidence
    ramped = read_rollout(reg, "mlp")
    assert ramped.percent == 50 and ramped.id == started.id
    end_rollout(reg, "mlp")  # the gate decided
    record_decision(reg, "mlp", {"action": "rollback", "origin": ramped.origin})
    assert sync_configured_rollout(reg, "mlp", {**spec, "percent": 50}) is None  # a decided spec never restarts
    assert read_rollout(reg, "mlp") is None
    sync_configured_rollout(reg, "mlp", {"candidate": "v3", "mode": "shadow"})
    assert sync_configured_rollout(reg, "mlp", None).startswith("ended rollout")  # removed from the YAML
    assert read_rollout(reg, "mlp") is None and read_decisions(reg, "mlp")[-1]["action"] == "ended"
    start_rollout(reg, "mlp", "v2", "canary", 5)  # started with mlp-registry: the YAML does not end it
    assert sync_configured_rollout(reg, "mlp", None) is None and read_rollout(reg, "mlp") is not None
    for bad, key in (({"candidate": "v2", "share": 5}, "share"), ({"mode": "canary"}, "candidate"),
                     ({"candidate": "v2", "percent": 500}, "--percent"), ({"candidate": "v9"}, "v9")):
        with pytest.raises(RegistryError, match=key):
            sync_configured_rollout(reg, "mlp", bad)
