"""Storage every node can reach: local folders and URIs, through ``pyarrow.fs``.

A cluster has several machines with several disks, so everything that another
node must read (run files, checkpoints, the registry) goes through this one
layer. It takes what Ray Train takes for ``storage_path``: a local path or any
URI that ``pyarrow.fs.FileSystem.from_uri`` understands (``s3://``, ``gs://``,
``abfs://``, ``hdfs://``, ``file://``, ...). Object-store endpoints and
credentials come from the usual environment of each node (for S3-compatible
servers: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), never from the URI,
so a location stays a plain string that can be joined and shown.

What it is not: a sync tool. ``download_dir`` copies a folder once;
``cached_copy`` keeps one local copy of an immutable folder (a registry version,
a reported checkpoint) so that nodes download it once, not on every use.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Union
from urllib.parse import urlparse

import pyarrow.fs as pafs

PathLike = Union[str, Path]
# Environment that decides which endpoint and identity a filesystem object talks to; part of its cache key.
_CLIENT_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "HADOOP_", "ARROW_")
CACHE_ENV = "MLP_CACHE_DIR"


def is_uri(location: PathLike) -> bool:
    """True for ``scheme://...`` (including ``file://``); False for a plain local path."""
    return "://" in str(location)


def normalize(location: PathLike) -> str:
    """A local path made absolute (``~`` expanded); a URI returned as given, never ``abspath``-ed.

    URI options (``?endpoint_override=...``) are refused: they would not survive ``join``
    and would put endpoints or secrets into paths that get logged; the environment carries them.
    """
    text = str(location)
    if is_uri(text):
        if "?" in text:
            raise ValueError(f"{text}: options in a storage URI are not supported; set them in the "
                             "environment instead (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, ...)")
        return text.rstrip("/") if not text.endswith(":///") else text
    return os.path.abspath(os.path.expanduser(text))


def join(location: PathLike, *parts: str) -> str:
    """``location/part/...`` for a local path or a URI (URIs join with ``/`` whatever the OS)."""
    base = normalize(location)
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def local_path(location: PathLike) -> str | None:
    """The local folder a location names (``file://`` included), or None for remote storage."""
    text = normalize(location)
    if not is_uri(text):
        return text
    parsed = urlparse(text)
    return parsed.path if parsed.scheme == "file" else None


def _client_env() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CLIENT_ENV_PREFIXES)))


@lru_cache(maxsize=32)
def _filesystem(scheme_and_host: str, client_env: tuple[tuple[str, str], ...]) -> tuple[pafs.FileSystem, str]:
    """One filesystem object (and its base path) per bucket and client environment.

    Building an S3 client costs a region lookup (one request); a once-a-second poll must not
    pay it. The environment is part of the key so that a new endpoint or new credentials
    (another test server, a rotated key) get a new client instead of a stale one.
    """
    return pafs.FileSystem.from_uri(scheme_and_host)


def resolve(location: PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)`` for a location, as Ray Train resolves its ``storage_path``."""
    text = normalize(location)
    local = local_path(text)
    if local is not None:
        return pafs.LocalFileSystem(), local
    parsed = urlparse(text)
    fs, base = _filesystem(f"{parsed.scheme}://{parsed.netloc}", _client_env())
    # s3://bucket/key -> "bucket/key", hdfs://host/p -> "/p": the base path from_uri gave, plus the rest
    rest = parsed.path.strip("/")
    return fs, posixpath.join(base, rest) if rest else base


@dataclass(frozen=True)
class Location:
    """A file or folder on some storage; every method works the same on a disk and on a bucket."""

    uri: str

    @classmethod
    def of(cls, location: PathLike) -> "Location":
        return cls(normalize(location))

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> "Location":
        return Location(join(self.uri, part))

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return local_path(self.uri) is not None

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return resolve(self.uri)

    def info(self) -> pafs.FileInfo:
        fs, path = self._fs()
        return fs.get_file_info(path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder, or on an object store a prefix that holds at least one object."""
        fs, path = self._fs()
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            return True
        if isinstance(fs, pafs.LocalFileSystem):
            return False
        return bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))

    def children(self) -> list[str]:
        """Names directly inside this folder (empty when it does not exist)."""
        fs, path = self._fs()
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def read_bytes(self) -> bytes:
        fs, path = self._fs()
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri} does not exist") from None

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file so that readers see the old content or the new, never a part.

        On a disk: a temporary sibling, flushed to disk, renamed over the target (atomic on
        POSIX; it also replaces a symlink rather than writing through it). On an object store
        an object appears whole when its upload completes, so one upload is enough.
        """
        fs, path = self._fs()
        if isinstance(fs, pafs.LocalFileSystem):
            _replace_local_file(path, data)
            return
        with fs.open_output_stream(path) as out:
            out.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def makedirs(self) -> None:
        fs, path = self._fs()
        fs.create_dir(path, recursive=True)

    def delete(self) -> None:
        """Remove a file or a whole folder; nothing happens when it is already gone."""
        fs, path = self._fs()
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.File:
            fs.delete_file(path)
        elif kind == pafs.FileType.Directory or self.is_dir():
            fs.delete_dir(path)

    def list_files(self) -> list[str]:
        """Paths of every file below this folder, relative to it (``a/b.txt``); one listing on a bucket."""
        fs, path = self._fs()
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
        prefix = path.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos
                      if i.type == pafs.FileType.File and i.path.startswith(prefix))

    def upload_file(self, source: PathLike) -> None:
        """Copy one local file to this location (a complete object or file; see ``write_bytes``)."""
        fs, path = self._fs()
        pafs.copy_files(str(source), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def upload_dir(self, source: PathLike) -> None:
        """Copy a local folder's files (recursively) to this location."""
        fs, path = self._fs()
        pafs.copy_files(str(source), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def download_dir(self, target: PathLike) -> Path:
        """Copy this folder into a local folder (created); returns it."""
        fs, path = self._fs()
        if not self.is_dir():  # copy_files would copy nothing and say nothing
            raise FileNotFoundError(f"{self.uri} does not exist (or holds no files)")
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return target


def _replace_local_file(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # a crash right after the rename must not leave an empty pointer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def iter_lines(location: Location) -> Iterator[str]:
    """Lines of a text file on any storage; nothing when it does not exist."""
    if location.is_file():
        yield from location.read_text().splitlines()


def cache_root() -> Path:
    """This node's download cache: ``$MLP_CACHE_DIR``, else ``~/.cache/mlp``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/mlp").expanduser()


def cache_key(location: PathLike) -> str:
    """A short, stable folder name for a location (a URI holds ``/`` and ``:``, a name must not)."""
    return hashlib.sha256(normalize(location).encode()).hexdigest()[:16]


def cached_copy(location: Location, target: PathLike) -> Path:
    """``target``, holding a copy of the remote folder ``location``; downloaded only when absent.

    Only for folders that never change once written (a registry version, a reported
    checkpoint): an existing ``target`` is trusted as is. The download lands in a hidden
    sibling renamed into place, so ``target`` is complete or absent, and two processes
    on one node that race both end up using the same complete copy.
    """
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.download-"))
    try:
        location.download_dir(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def local_copy(location: Location, cache_root: PathLike) -> Path:
    """A local folder holding ``location``'s files: the folder itself when it is local, else a fresh copy.

    The copy lands in a temporary folder renamed into ``cache_root/<name>-<id>``,
    so a reader never sees half of it. Callers keep the path while they use it.
    """
    local = local_path(location.uri)
    if local is not None:
        return Path(local)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".download-"))
    try:
        location.download_dir(staging)
        final = root / f"{location.name}-{uuid.uuid4().hex[:8]}"
        os.rename(staging, final)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
