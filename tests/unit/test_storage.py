"""``mlp.registry.storage`` behaves the same on a local folder and on a real S3-compatible server.

The S3 half runs against moto's standalone server (``tests/s3server.py``) through
``pyarrow.fs``, the same client Ray Train uses for ``s3://`` storage paths.
"""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from mlp.registry.storage import Location, cached_copy, join, normalize





@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_root")


def make_tree(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB: more than one read
    return folder


def test_write_read_children_delete(root: str) -> None:
    base = Location.of(root)
    (base / "x" / "note.txt").write_text("hello")
    (base / "y.txt").write_text("first")
    (base / "y.txt").write_text("second")  # a rewrite replaces the whole file
    assert (base / "x" / "note.txt").read_text() == "hello"
    assert (base / "y.txt").read_text() == "second"
    assert base.children() == ["x", "y.txt"]
    assert (base / "x").is_dir() and not (base / "y.txt").is_dir()
    assert (base / "y.txt").is_file() and not (base / "missing").exists()
    assert base.list_files() == ["x/note.txt", "y.txt"]
    (base / "x").delete()
    assert base.children() == ["y.txt"] and not (base / "x").exists()
    (base / "x").delete()  # already gone: no error
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        (base / "missing.txt").read_text()


def test_upload_and_download_a_folder(root: str, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    target = Location.of(root) / "tree"
    target.upload_dir(source)
    (target / "extra.txt").upload_file(source / "a.txt")
    assert target.list_files() == ["a.txt", "extra.txt", "sub/b.bin"]
    copy = target.download_dir(tmp_path / "copy")
    assert (copy / "sub" / "b.bin").read_bytes() == (source / "sub" / "b.bin").read_bytes()
    assert (copy / "extra.txt").read_text() == "alpha"
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        (Location.of(root) / "nothing-here").download_dir(tmp_path / "empty")


def test_local_writes_leave_no_temporary_files_and_replace_symlinks(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    os.symlink("v1", tmp_path / "latest")
    Location.of(tmp_path / "latest").write_text("v1\n")
    assert not (tmp_path / "latest").is_symlink() and (tmp_path / "latest").read_text() == "v1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v1"]


def test_cached_copy_downloads_once(s3_root: str, tmp_path: Path) -> None:
    remote = Location.of(s3_root) / "ck"
    remote.upload_dir(make_tree(tmp_path / "src"))
    first = cached_copy(remote, tmp_path / "cache" / "ck")
    assert (first / "a.txt").read_text() == "alpha"
    remote.delete()  # a second call must not touch the store at all
    assert cached_copy(remote, tmp_path / "cache" / "ck") == first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ck"]  # no staging folder left behind


def test_uris_join_with_slashes_and_refuse_options(tmp_path: Path) -> None:
    assert join("s3://bucket/reg/", "mlp", "v1") == "s3://bucket/reg/mlp/v1"
    assert normalize("~/x") == os.path.expanduser("~/x")
    assert Location.of(f"file://{tmp_path}").is_local
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        Location.of("s3://bucket/reg?endpoint_override=localhost:9000")


def test_ray_train_storage_path_round_trip(s3_root: str, tmp_path: Path) -> None:
    """What Ray Train does with ``storage_path="s3://..."``: ``from_uri`` plus ``copy_files`` both ways."""
    fs, path = pafs.FileSystem.from_uri(f"{s3_root}/run/checkpoint_000000")
    pafs.copy_files(str(make_tree(tmp_path / "src")), path,
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    pafs.copy_files(path, str(tmp_path / "back"), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    assert (tmp_path / "back" / "sub" / "b.bin").stat().st_size == 1024 * 1024
    assert Location.of(s3_root).list_files() == ["run/checkpoint_000000/a.txt", "run/checkpoint_000000/sub/b.bin"]


def test_a_new_endpoint_gets_a_new_client(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystem objects are cached, but never across a change of endpoint or credentials."""
    (Location.of(s3_root) / "a.txt").write_text("x")
    hits: list[str] = []

    class Refuse(http.server.BaseHTTPRequestHandler):  # answers 403 at once: not retried by the S3 client
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{other.server_address[1]}")
        with pytest.raises(OSError):
            (Location.of(s3_root) / "a.txt").read_text()
        assert hits  # the request went to the new endpoint, not to the cached client's old one
    finally:
        other.shutdown()
        other.server_close()
