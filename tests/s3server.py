"""A real S3-compatible server for tests: moto's standalone server in its own process.

Why a separate process and not ``mock_aws``: the code under test talks to S3
through ``pyarrow.fs`` (C++, the AWS C++ SDK), which an in-process Python mock
cannot intercept; it needs an HTTP endpoint, exactly as Ray Train does.

Why moto 5.2.5 (pinned in the ``test`` extras): in moto 5.2.1 the S3
``CompleteMultipartUpload`` answer is rendered by moto's generic serializer with
the root element ``<CompleteMultipartUploadResponse>``. boto3 does not look at
that name, but Arrow does: a 200 OK whose root is not
``<CompleteMultipartUploadResult>`` counts as "an error embedded in a 200 OK
response", is retried for ~10 s and then fails as ``INTERNAL_FAILURE``. pyarrow 26
uploads even a 5-byte file as a multipart upload, so every write failed. moto 5.2.5 names
the root correctly (its S3 model overlay gained the ``resultWrapper``).

Use::

    with s3_server("mlp-test") as env:      # env: AWS_ENDPOINT_URL, keys, region
        os.environ.update(env)              # or monkeypatch.setenv per key
        Location.of("s3://mlp-test/a.txt").write_text("hi")

Not for production: no auth checks, data lives in the server's memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(endpoint: str) -> dict[str, str]:
    """What any S3 client (pyarrow, boto3, Ray Train) needs to reach the test server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # without this the AWS SDKs first ask the EC2 metadata service for credentials: seconds of timeouts
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _die_with_parent() -> None:
    """In the child, before exec: a test run killed with SIGKILL must not leave a server behind (Linux).

    The signal follows the *thread* that started the server, so start it from a thread that outlives it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _wait_until_up(proc: subprocess.Popen, endpoint: str, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as log:
                raise RuntimeError(f"moto_server exited with {proc.returncode}:\n{log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S:.0f}s (log: {log_path})")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the one process we started, by its pid: terminate, then kill if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def create_bucket(env: dict[str, str], bucket: str) -> None:
    import boto3  # a dependency of moto, so present wherever the server is

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)


@contextlib.contextmanager
def s3_server(bucket: str = "mlp-test") -> Iterator[dict[str, str]]:
    """Start moto's S3 server on a free loopback port with ``bucket`` created; yield the client env."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w", prefix="moto-server-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    try:
        _wait_until_up(proc, endpoint, log.name)
        env = client_env(endpoint)
        create_bucket(env, bucket)
        yield env
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)


if __name__ == "__main__":  # a manual check: python tests/s3server.py
    with s3_server() as server_env:
        print("\n".join(f"export {k}={v}" for k, v in server_env.items()))
        print("bucket: s3://mlp-test  (Ctrl-C stops the server)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
