"""API keys for ``POST /predict``: a file of SHA-256 digests that the operator rotates without a restart.

Ray-free, so unit tests and ``python -m serve`` (before Ray starts) read keys files the way a replica does.

The file (``serve.api_keys_file``) holds one SHA-256 hex digest per line, optionally ``name:digest`` so
the logs can say which key a line is without showing it; ``#`` starts a comment, blank lines are skipped.
Plain keys are never stored, and nothing here logs or echoes a key or a line of the file (a line that is
not a digest may be a key pasted by mistake). ``python -m serve.keys new`` makes a key and appends its
line, so nobody hashes by hand.

A replica holds a ``KeyRing``: it reads the file when the replica starts (missing, unreadable, malformed
or without a digest: a ``ConfigError``, so the replica fails to start and says why) and afterwards, at
most once a second and only from a request, looks at the file's inode, size and modification time; it
re-reads the file when they changed. A file that later vanishes, cannot be read or does not parse keeps
the last good keys (a rotation caught half-written, or an unmounted secret, must not lock every client
out) and logs one warning. A file that parses to no digest at all is taken at its word: no key is valid
until one is added, which is how an operator revokes every key at once.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from string import hexdigits
from typing import Callable, NoReturn, Optional, Sequence

from mlp.config import ConfigError

KEY_SETTING = "serve.api_keys_file"
RECHECK_S = 1.0  # a rotation shows within about a second; requests in between cost one clock read each
SETTLE_S = 2.0  # a file modified this recently may change again within its filesystem's timestamp granularity
CHALLENGE = 'Bearer realm="predict"'
DIGEST_CHARS = 64
NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
NEW_KEY_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 random bits

log = logging.getLogger("ray.serve")  # the replica's log, as in serve.app


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of ``key`` (UTF-8): what the keys file holds instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyFileError(ConfigError):
    """The keys file cannot serve as one: missing, unreadable, a line that is not a digest, or no digest."""

    def __init__(self, message: str) -> None:
        super().__init__(KEY_SETTING, message)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # A replica's start-up error travels to the Serve controller pickled: rebuild it from the message alone.
        return (KeyFileError, (self.message,))


@dataclass(frozen=True)
class KeyEntry:
    """One line of the keys file: an optional name (for logs) and the 32-byte digest."""

    name: Optional[str]
    digest: bytes


def parse_keys(text: str, source: str) -> tuple[KeyEntry, ...]:
    """Every ``digest`` / ``name:digest`` line of ``text``; a ``KeyFileError`` naming the first bad line by
    number only (its text may be a plain key)."""
    entries: list[KeyEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, digest = line.rpartition(":")
        name, digest = name.strip(), digest.strip().lower()
        if len(digest) != DIGEST_CHARS or not all(c in hexdigits for c in digest):
            raise KeyFileError(f"{source} line {number} is not a SHA-256 hex digest ({DIGEST_CHARS} hex digits, "
                               "optionally after 'name:'): the file holds digests of keys, never keys; add a key "
                               f"with python -m serve.keys new --file {source}")
        entries.append(KeyEntry(name or None, bytes.fromhex(digest)))
    return tuple(entries)


def describe_keys(entries: Sequence[KeyEntry]) -> str:
    """The keys by name, for a log line: ``3 keys: alice, ci, 1 unnamed``; never a digest."""
    names = [entry.name for entry in entries if entry.name]
    unnamed = len(entries) - len(names)
    parts = names + ([f"{unnamed} unnamed"] if unnamed else [])
    return f"{len(entries)} key{'s' if len(entries) != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")


def presented_key(authorization: Optional[str], api_key: Optional[str]) -> Optional[str]:
    """The key a request carries: ``Authorization: Bearer <key>``, else ``X-API-Key: <key>``; None for neither.

    Another ``Authorization`` scheme (say Basic, from a proxy in front) is not a key: ``X-API-Key`` still counts.
    """
    if authorization:
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            return given.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None


def _refuse(message: str, challenge: str) -> NoReturn:
    # Imported here: serve.inputs pulls in torch (mlp.model), and ``python -m serve.keys new`` should start at once.
    from serve.inputs import InputError

    raise InputError(401, message, headers={"WWW-Authenticate": challenge})


class KeyRing:
    """The keys of one keys file, followed as the operator rotates them (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        """Read ``path`` now; a ``KeyFileError`` (a ``ConfigError``) if it is missing, unreadable, malformed
        or holds no digest: at start-up that is a configuration mistake, not something to serve around."""
        self.path = Path(path).expanduser()
        self._clock, self._wall = clock, wall
        self.problem: Optional[str] = None  # why the last re-read failed (the last good keys stay), for the log
        try:
            signature, text = self._read()
        except FileNotFoundError:
            raise KeyFileError(f"{self.path} does not exist: make a key and the file with "
                               f"python -m serve.keys new --file {self.path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise KeyFileError(f"{self.path} cannot be read: {_reason(err)}") from None
        self.entries = parse_keys(text, str(self.path))
        if not self.entries:
            raise KeyFileError(f"{self.path} holds no key digest: add a key with "
                               f"python -m serve.keys new --file {self.path}")
        self._signature = signature
        self._checked = clock()

    def describe(self) -> str:
        """The current keys by name, for a log line (never a digest)."""
        return describe_keys(self.entries)

    def _read(self) -> tuple[tuple[int, ...], str]:
        """The file's text and the signature of exactly the file read (inode, size, mtime; 0 while settling)."""
        with open(self.path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read()
        return self._signature_of(st), data.decode("utf-8")

    def _signature_of(self, st: os.stat_result) -> tuple[int, ...]:
        # A file modified within SETTLE_S may be rewritten again inside the same timestamp tick with the same
        # size; its signature then never matches, so it is re-read at each check until it has settled.
        settled = int(self._wall() - st.st_mtime > SETTLE_S)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, settled) if settled else (0,)

    def refresh(self) -> bool:
        """Re-read the file if it changed since the last read; True if the keys changed. Never raises."""
        try:
            if self._signature != (0,) and self._signature_of(os.stat(self.path)) == self._signature:
                return False
            signature, text = self._read()
            entries = parse_keys(text, str(self.path))
        except (OSError, UnicodeDecodeError, KeyFileError) as err:
            problem = (err.message if isinstance(err, KeyFileError) else
                       f"{self.path} cannot be read: {_reason(err)}")
            if problem != self.problem:
                log.warning("%s; /predict keeps the %s read before", problem, describe_keys(self.entries))
            self.problem = problem
            return False
        if self.problem is not None:
            log.info("API keys file %s is readable again", self.path)
        self._signature, self.problem = signature, None
        if entries == self.entries:
            return False
        self.entries = entries
        if entries:
            log.info("API keys re-read from %s: %s", self.path, describe_keys(entries))
        else:
            log.warning("API keys re-read from %s: no key digest left, so POST /predict refuses every request "
                        "until one is added", self.path)
        return True

    def check(self, authorization: Optional[str] = None, api_key: Optional[str] = None) -> Optional[str]:
        """The name of the key a request carries (None for an unnamed line) if it is valid; else raise the 401
        ``InputError`` saying what to send. At most once a second it first looks whether the file changed."""
        now = self._clock()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            self.refresh()
        key = presented_key(authorization, api_key)
        if key is None:
            _refuse("API key required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", CHALLENGE)
        given = hashlib.sha256(key.encode("utf-8")).digest()
        found, name = False, None
        for entry in self.entries:  # every line compared, in constant time: the timing tells nothing of the keys
            if hmac.compare_digest(given, entry.digest):
                found, name = True, entry.name
        if not found:
            _refuse("API key rejected: not one of this endpoint's keys", f'{CHALLENGE}, error="invalid_token"')
        return name


def _reason(err: BaseException) -> str:
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err)


def new_key(name: Optional[str], file: Optional[Path]) -> tuple[str, str]:
    """A fresh key and its keys-file line; with ``file``, the line is appended (the file made with mode 0600)."""
    key = secrets.token_urlsafe(NEW_KEY_BYTES)
    line = f"{name}:{hash_key(key)}" if name else hash_key(key)
    if file is not None:
        existing = ""
        if file.exists():
            existing = file.read_text(encoding="utf-8")
            parse_keys(existing, str(file))  # append only to a file a replica can read
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(("\n" if existing and not existing.endswith("\n") else "") + line + "\n")
    return key, line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve.keys",
        description="API keys for POST /predict (serve.api_keys_file). The keys file holds one SHA-256 digest "
                    "per line, optionally name:digest, never a key. Replicas re-read it within a second of a "
                    "change: add a key, or delete its line to revoke it, without restarting anything.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new", help="make a key: print it once, append its digest to the keys file",
        description="Make a random key (secrets.token_urlsafe(32)), print it once on stdout (it is not stored "
                    "anywhere: keep it now), and append 'name:digest' to --file, creating the file with mode 0600. "
                    "Without --file the line to add is printed on stderr. Clients send the key as "
                    "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    new.add_argument("--name", help="a label for logs, e.g. who holds the key (letters, digits, . _ @ + -)")
    new.add_argument("--file", type=Path, help="keys file to append to (the one serve.api_keys_file names)")
    args = parser.parse_args(argv)
    if args.name is not None and not NAME.fullmatch(args.name):
        parser.error(f"--name {args.name!r}: use 1 to 64 letters, digits or . _ @ + -")
    file = args.file.expanduser() if args.file else None
    try:
        key, line = new_key(args.name, file)
    except (OSError, UnicodeDecodeError, KeyFileError) as err:
        print(f"{parser.prog}: error: {err.message if isinstance(err, KeyFileError) else err}", file=sys.stderr)
        return 1
    print(key)
    label = f"key {args.name!r}" if args.name else "an unnamed key"
    if file is not None:
        print(f"added {label} to {file} (its digest only: this is the only time the key is shown). Serve with "
              f"--serve.api_keys_file {file}; clients send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
              file=sys.stderr)
    else:
        print(f"{label}: add this line to the keys file (serve.api_keys_file):\n{line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
