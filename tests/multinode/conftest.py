"""Fixtures for multi-node tests: a real two-node Ray cluster on this machine (see cluster.py).

A test module chooses its cluster with a module-level ``two_nodes_options`` dict, or
per test with ``@pytest.mark.parametrize("two_nodes", [{...}], indirect=True)``; the
keys are ``TwoNodeCluster``'s arguments (``head_cpus``, ``worker_cpus``, ``env``,
``head_env``, ``worker_env``, ...). Environment that only a fixture knows (an S3 server's
``AWS_*``) comes from overriding the module-scoped ``two_nodes_env`` fixture in the test
module; it is added to ``env`` (both nodes and drivers). Nothing here calls ``ray.init``
in the pytest process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from .cluster import TwoNodeCluster


def _skip_unless_able() -> None:
    # A private tmpfs needs a mount namespace: root (CI runs as root) and util-linux's unshare.
    if os.geteuid() != 0:
        pytest.skip("multi-node tests mount a tmpfs in a private mount namespace: run as root")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"multi-node tests need `{tool}` (util-linux)")


def _options(request: pytest.FixtureRequest, extra_env: dict[str, str]) -> dict[str, Any]:
    options = dict(getattr(request.module, "two_nodes_options", {}))
    options.update(getattr(request, "param", None) or {})
    options["env"] = {**(options.get("env") or {}), **extra_env}
    return options


@pytest.fixture(scope="module")
def two_nodes_env() -> dict[str, str]:
    """Extra environment for both nodes and every driver; override it in a module (e.g. S3 credentials)."""
    return {}


@pytest.fixture(scope="module")
def two_nodes(request: pytest.FixtureRequest, two_nodes_env: dict[str, str]) -> Iterator[TwoNodeCluster]:
    """A started two-node cluster (head 1 CPU + worker 1 CPU by default), stopped after the module.

    Teardown fails the test run if any process of the cluster is left running.
    """
    _skip_unless_able()
    cluster = TwoNodeCluster(**_options(request, two_nodes_env)).start()
    try:
        yield cluster
    finally:
        cluster.stop()
