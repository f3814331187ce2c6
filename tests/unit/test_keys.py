"""API keys for /predict without Ray: hashing, the keys file, rotation, the 401s, the key CLI, the schema."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from mlp.config import Config, ConfigError, ServeConfig
from serve.inputs import InputError
from serve.keys import (CHALLENGE, RECHECK_S, SETTLE_S, KeyFileError, KeyRing, hash_key, main, new_key, parse_keys,
                        presented_key)
from serve.options import config_from_app_args, open_predict_notice
from serve.web import openapi_document

ALICE, BOB, CAROL = "alice-key-0123456789abcdefghijklmnop", "bob-key-0123456789abcdefghijklmnopqr", "carol-key-xyz"
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """A hand-moved clock, so a test decides when the ring may look at its file again."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_keys(path: Path, text: str, age_s: float = 60.0) -> None:
    """Write the file and date it ``age_s`` in the past (a settled file: only a change makes a re-read)."""
    path.write_text(text)
    old = path.stat().st_mtime - age_s
    os.utime(path, (old, old))


def refused(ring: KeyRing, **headers: str | None) -> InputError:
    with pytest.raises(InputError) as info:
        ring.check(headers.get("authorization"), headers.get("api_key"))
    return info.value


def test_hash_key_is_sha256_hex():
    assert hash_key(ALICE) == hashlib.sha256(ALICE.encode()).hexdigest()
    assert len(hash_key("")) == 64 and hash_key("x") != hash_key("x ")


def test_file_lines_digests_names_comments_and_blank_lines():
    text = (f"# keys for the predict endpoint\n\n  alice : {hash_key(ALICE).upper()}  # laptop\n"
            f"{hash_key(BOB)}\nci:team:{hash_key(CAROL)}\n   \n")
    entries = parse_keys(text, "keys.txt")
    assert [e.name for e in entries] == ["alice", None, "ci:team"]
    assert [e.digest.hex() for e in entries] == [hash_key(ALICE), hash_key(BOB), hash_key(CAROL)]
    assert parse_keys("# nothing yet\n\n", "keys.txt") == ()


@pytest.mark.parametrize("line", [ALICE, f"alice:{hash_key(ALICE)[:-1]}", f"{hash_key(ALICE)}0",
                                  "z" * 64, f"alice {hash_key(ALICE)}"])
def test_a_line_that_is_not_a_digest_is_named_by_number_never_echoed(line):
    with pytest.raises(KeyFileError) as info:
        parse_keys(f"# ok\n{hash_key(BOB)}\n{line}\n", "keys.txt")
    assert info.value.key == "serve.api_keys_file" and isinstance(info.value, ConfigError)
    assert "keys.txt line 3 is not a SHA-256 hex digest" in info.value.message
    assert line not in str(info.value) and "python -m serve.keys new" in info.value.message


def test_presented_key_bearer_then_x_api_key():
    assert presented_key(f"Bearer {ALICE}", None) == ALICE
    assert presented_key(f"bearer   {ALICE} ", BOB) == ALICE  # Bearer wins when both are sent
    assert presented_key("Basic dXNlcjpwdw==", BOB) == BOB  # another scheme is not a key
    assert presented_key(None, f" {BOB} ") == BOB
    assert presented_key("Bearer", None) is None and presented_key("", "") is None and presented_key(None, None) is None
    assert presented_key(ALICE, None) is None  # no scheme


def test_check_accepts_listed_keys_and_refuses_the_rest_with_401(tmp_path):
    path = tmp_path / "keys"
    write_keys(path, f"alice:{hash_key(ALICE)}\n{hash_key(BOB)}\n")
    ring = KeyRing(path)
    assert ring.check(f"Bearer {ALICE}") == "alice"
    assert ring.check(None, ALICE) == "alice"
    assert ring.check(None, BOB) is None  # valid, unnamed
    missing = refused(ring)
    assert missing.status == 401 and missing.headers == {"WWW-Authenticate": CHALLENGE}
    assert missing.to_dict() == {"error": "API key required: send 'Authorization: Bearer <key>' or "
                                          "'X-API-Key: <key>'", "status": 401}
    for headers in ({"authorization": f"Bearer {ALICE[:-1]}"}, {"api_key": ALICE + "x"}, {"api_key": CAROL},
                    {"authorization": f"Bearer {hash_key(ALICE)}"}):  # the digest itself is not a key
        wrong = refused(ring, **headers)
        assert wrong.status == 401 and wrong.message.startswith("API key rejected")
        assert wrong.headers["WWW-Authenticate"].startswith(CHALLENGE)
        assert ALICE not in wrong.message
    assert ring.describe() == "2 keys: alice, 1 unnamed"


def test_a_bad_keys_file_at_start_up_is_a_config_error(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist: make a key and the file with python -m serve.keys new"):
        KeyRing(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(KeyFileError, match="holds no key digest"):
        KeyRing(empty)
    plain = tmp_path / "plain"
    plain.write_text(ALICE + "\n")
    with pytest.raises(KeyFileError, match="line 1 is not a SHA-256 hex digest") as info:
        KeyRing(plain)
    assert ALICE not in str(info.value)
    with pytest.raises(KeyFileError, match="cannot be read"):
        KeyRing(tmp_path)  # a folder


def test_rotation_is_picked_up_within_a_second_without_a_restart(tmp_path):
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, f"alice:{hash_key(ALICE)}\n")
    ring = KeyRing(path, clock=clock)
    assert ring.check(f"Bearer {ALICE}") == "alice"
    write_keys(path, f"bob:{hash_key(BOB)}\n", age_s=30)  # same length, other key
    assert ring.check(f"Bearer {ALICE}") == "alice"  # not looked at again within the second
    clock.now += RECHECK_S
    assert refused(ring, authorization=f"Bearer {ALICE}").status == 401
    assert ring.check(None, BOB) == "bob"
    # Replaced by a rename (how a Kubernetes secret or an atomic write changes it).
    staged = tmp_path / "keys.new"
    write_keys(staged, f"alice:{hash_key(ALICE)}\nbob:{hash_key(BOB)}\n")
    staged.replace(path)
    clock.now += RECHECK_S
    assert ring.check(None, ALICE) == "alice" and ring.check(None, BOB) == "bob"


def test_a_file_rewritten_within_one_timestamp_tick_is_still_seen(tmp_path):
    """Same size, same mtime (a coarse filesystem clock): a file younger than SETTLE_S is re-read at each check."""
    path, clock = tmp_path / "keys", Clock()
    path.write_text(f"a:{hash_key(ALICE)}\n")
    stamp = path.stat().st_mtime_ns
    ring = KeyRing(path, clock=clock)
    path.write_text(f"b:{hash_key(BOB)}\n")
    os.utime(path, ns=(stamp, stamp))
    clock.now += RECHECK_S
    assert ring.check(None, BOB) == "b"
    assert refused(ring, api_key=ALICE).status == 401


def test_a_settled_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, f"a:{hash_key(ALICE)}\n", age_s=SETTLE_S + 60)
    ring = KeyRing(path, clock=clock)
    reads: list[int] = []
    original = KeyRing._read
    monkeypatch.setattr(KeyRing, "_read", lambda self: reads.append(1) or original(self))
    for _ in range(5):
        clock.now += RECHECK_S
        assert ring.check(None, ALICE) == "a"
    assert reads == []


@contextlib.contextmanager
def serve_log_records() -> Iterator[list[logging.LogRecord]]:
    """The records the ``ray.serve`` logger emits, caught by a handler on that logger itself.

    Serve sets ``propagate=False`` on it once an app has run in this process, so pytest's
    ``caplog`` (a root handler) would see nothing when Ray tests ran earlier in the session.
    """
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ray.serve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_vanished_or_broken_file_keeps_the_last_good_keys_and_warns_once(tmp_path):
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, f"alice:{hash_key(ALICE)}\n")
    ring = KeyRing(path, clock=clock)
    path.unlink()
    with serve_log_records() as records:
        for _ in range(3):
            clock.now += RECHECK_S
            assert ring.check(None, ALICE) == "alice"
        assert sum("cannot be read" in r.getMessage() for r in records) == 1
        assert "keeps the 1 key: alice read before" in records[0].getMessage()
        write_keys(path, f"{BOB}\n")  # a plain key by mistake: refused, never logged
        clock.now += RECHECK_S
        assert ring.check(None, ALICE) == "alice"
        assert refused(ring, api_key=BOB).status == 401
        assert "line 1 is not a SHA-256 hex digest" in records[-1].getMessage()
        write_keys(path, f"bob:{hash_key(BOB)}\n")
        clock.now += RECHECK_S
        assert ring.check(None, BOB) == "bob"
    assert all(BOB not in r.getMessage() and ALICE not in r.getMessage() for r in records)
    assert any("re-read" in r.getMessage() and "bob" in r.getMessage() for r in records)


def test_emptying_the_file_revokes_every_key(tmp_path):
    path, clock = tmp_path / "keys", Clock()
    write_keys(path, f"alice:{hash_key(ALICE)}\n")
    ring = KeyRing(path, clock=clock)
    write_keys(path, "# all revoked\n", age_s=10)
    clock.now += RECHECK_S
    assert refused(ring, api_key=ALICE).status == 401


def test_new_key_appends_its_digest_to_a_0600_file(tmp_path):
    path = tmp_path / "keys"
    key, line = new_key("alice", path)
    assert line == f"alice:{hash_key(key)}" and len(key) == 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(path.read_text() + "# no newline at the end")
    second, _ = new_key(None, path)
    assert second != key
    ring = KeyRing(path)
    assert ring.check(f"Bearer {key}") == "alice" and ring.check(None, second) is None
    assert key not in path.read_text() and second not in path.read_text()


def test_new_key_refuses_to_append_to_a_broken_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("not a digest\n")
    with pytest.raises(KeyFileError):
        new_key("x", path)
    assert path.read_text() == "not a digest\n"


def test_cli_new_prints_a_key_that_verifies(tmp_path):
    path = tmp_path / "secrets" / "keys"
    path.parent.mkdir()
    run = subprocess.run([sys.executable, "-m", "serve.keys", "new", "--name", "ci", "--file", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip()
    assert len(key) == 43 and "\n" not in key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"ci:{hash_key(key)}\n"
    assert key not in run.stderr and "Authorization: Bearer <key>" in run.stderr
    assert KeyRing(path).check(None, key) == "ci"


def test_cli_without_a_file_prints_the_line_to_add(capsys):
    assert main(["new"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == hash_key(out.strip())


def test_cli_help_and_bad_names(capsys):
    with pytest.raises(SystemExit) as info:
        main(["new", "--help"])
    assert info.value.code == 0 and "0600" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["new", "--name", "a:b"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_the_setting_is_a_config_key(tmp_path):
    cfg = config_from_app_args({"serve.api_keys_file": str(tmp_path / "keys")})
    assert cfg.serve.api_keys_file == str(tmp_path / "keys")
    assert Config.from_dict(cfg.to_dict()).serve.api_keys_file == str(tmp_path / "keys")
    assert ServeConfig().api_keys_file is None


def test_start_up_notice_only_for_an_exposed_open_predict():
    notice = open_predict_notice(ServeConfig(host="0.0.0.0", port=8123))
    assert notice is not None and "open to anyone who can reach 0.0.0.0:8123" in notice
    assert "--serve.api_keys_file" in notice and "python -m serve.keys new" in notice
    assert open_predict_notice(ServeConfig(host="127.0.0.1")) is None
    assert open_predict_notice(ServeConfig(host="127.0.0.1"), "0.0.0.0") is not None  # a YAML's http_options.host
    assert open_predict_notice(ServeConfig(host="0.0.0.0", api_keys_file="keys")) is None


def base_document() -> dict:
    ok = {"responses": {"200": {"description": "ok"}}}
    return {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {path: {method: dict(ok)} for path, method in (("/predict", "post"), ("/healthz", "get"),
                                                                     ("/readyz", "get"), ("/model", "get"),
                                                                     ("/admin/reload", "post"))}}


def test_openapi_declares_the_key_schemes_on_predict_only_when_configured():
    plain = openapi_document(base_document(), ServeConfig(), "open")
    assert "security" not in plain["paths"]["/predict"]["post"] and "securitySchemes" not in plain["components"]
    assert "401" not in plain["paths"]["/predict"]["post"]["responses"]
    keyed = openapi_document(base_document(), ServeConfig(api_keys_file="keys"), "token")
    predict = keyed["paths"]["/predict"]["post"]
    assert predict["security"] == [{"apiKeyBearer": []}, {"apiKeyHeader": []}]
    assert predict["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    schemes = keyed["components"]["securitySchemes"]
    assert schemes["apiKeyBearer"] == {**schemes["apiKeyBearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKeyHeader"]["type"], schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == \
        ("apiKey", "header", "X-API-Key")
    assert "adminToken" in schemes
    for path in ("/healthz", "/readyz", "/model"):
        assert "security" not in keyed["paths"][path]["get"]


def test_python_m_serve_exits_2_on_a_bad_keys_file_before_ray_starts(tmp_path, capsys):
    from serve.__main__ import main as serve_main

    assert serve_main(["--serve.api_keys_file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m serve: error: config serve.api_keys_file: ") and "does not exist" in err
    (tmp_path / "plain").write_text(ALICE + "\n")
    assert serve_main(["--serve.api_keys_file", str(tmp_path / "plain")]) == 2
    assert ALICE not in capsys.readouterr().err


def test_the_start_up_error_survives_pickling(tmp_path):
    """A replica's constructor error reaches the Serve controller pickled: the message must come through whole."""
    with pytest.raises(KeyFileError) as info:
        KeyRing(tmp_path / "missing")
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is KeyFileError and str(copy) == str(info.value) and copy.key == "serve.api_keys_file"
