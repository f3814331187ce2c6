"""Every use of a Ray private API or a Ray-version workaround, in one place, behind one version check.

The rest of the project uses Ray's public API only. Each entry below says which Ray
behaviour it exists for; on a Ray outside ``RAY_SERIES`` none of the private calls is
made, and each entry falls back to what is safe without it (stated per entry). When a
Ray upgrade brings a public API for an entry, the entry goes, and so does its caller's
dependence on this module.

Checked against Ray 2.60 and kept because no public API does the job there:

1. ``cluster_config``: the node groups an autoscaling platform reported to GCS, with
   their max counts. Preflight needs them to tell "fits once nodes are added" from
   "never fits"; ``ray.nodes()`` shows only the nodes that exist now. Ray Train makes
   the same private read for its own maximum cluster size.
2. ``autoscaler_status``: whether an autoscaler runs at all (v2's flag in GCS, else
   v1's status key, which ``ray status`` itself reads); there is no public query.
3. ``quiet_train_report_logs``: Ray Train logs every report and checkpoint at INFO.
   Its ``LoggingConfig`` (public) would silence all of ``ray.train``, its controller's
   useful progress lines included, and it cannot reach the report line at all: that
   logger is named by its file's path, not ``ray.train.*``.
4. ``ray_address_file``: ``ray.init()`` trusts the address a ``ray start`` head left in
   ``ray_current_cluster`` even when that head died without ``ray stop``, and then waits
   minutes for a GCS that never answers; ``init_ray`` checks the address first.
5. ``TrainControllerCallbacks`` and ``worker_group_placement_group``: Ray Train's
   ``PlacementGroupCleaner`` frees a Tune-stopped trial's workers only when the State
   API (the dashboard) answers it; ``tune.release`` frees them otherwise, which needs
   Train's internal controller and worker-group callbacks.
6. ``serve_http_host``: Serve has no public getter for the bound ``http_options.host``
   (``serve.status()`` drops it); the admin route needs it to know whether it is exposed.

Ray settings chosen through environment variables live in ``mlp.distributed.rayenv``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Optional

import ray

log = logging.getLogger(__name__)
RAY_SERIES = "2.60."  # the Ray versions every entry below was read and tested against


def supported(version: Optional[str] = None) -> bool:
    """Whether ``version`` (default: the installed Ray) is one this module was written against."""
    return (version or ray.__version__).startswith(RAY_SERIES)


# 1 ------------------------------------------------------------------------------------------------
def cluster_config() -> Any:
    """GCS's ``autoscaler_pb2.ClusterConfig`` (node groups and max counts), or None when unknown."""
    if not supported():
        return None
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # noqa: BLE001 - absent or changed: "unknown", which preflight handles
        return None


# 2 ------------------------------------------------------------------------------------------------
def autoscaler_status() -> tuple[bool, Optional[bytes]]:
    """(autoscaler v2 enabled?, autoscaler v1's status JSON or None); (False, None) when unknown."""
    if not supported():
        return False, None
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return True, None
        from ray.experimental.internal_kv import _internal_kv_get

        return False, _internal_kv_get("__autoscaling_status")  # Ray's DEBUG_AUTOSCALING_STATUS key
    except Exception:  # noqa: BLE001
        return False, None


# 3 ------------------------------------------------------------------------------------------------
_TRAIN_LOGGER_MODULES = ("ray.train.v2._internal.execution.context",  # logger named by its file path
                         "ray.train.v2._internal.execution.storage")  # logger named by its module


def quiet_train_report_logs() -> None:
    """Raise Ray Train's per-report and per-checkpoint INFO lines to WARNING (the progress line says it once)."""
    if not supported():
        return
    for module in _TRAIN_LOGGER_MODULES:
        spec = importlib.util.find_spec(module)  # finds the file without importing the module
        if spec is not None and spec.origin and module.endswith(".context"):
            logging.getLogger(spec.origin).setLevel(logging.WARNING)
        else:
            logging.getLogger(module).setLevel(logging.WARNING)


# 4 ------------------------------------------------------------------------------------------------
def ray_address_file() -> str:
    """Where ``ray start`` records the current cluster's address (``<ray temp dir>/ray_current_cluster``)."""
    if supported():
        try:
            from ray._common.utils import get_ray_address_file

            return get_ray_address_file(None)
        except ImportError:
            pass
    # Ray's own rule for its temp dir: $RAY_TMPDIR, on Linux $TMPDIR, else /tmp.
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return os.path.join(base or "/tmp", "ray", "ray_current_cluster")


# 5 ------------------------------------------------------------------------------------------------
def train_controller_callback_bases() -> tuple[type, ...]:
    """Ray Train's internal controller and worker-group callback classes; a plain ``UserCallback`` otherwise.

    A callback built on the latter has no controller hooks, so it changes nothing.
    """
    if supported():
        from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

        return ControllerCallback, WorkerGroupCallback
    from ray.train import UserCallback

    return (UserCallback,)


def worker_group_placement_group(worker_group: Any) -> Any:
    """The placement group holding a Train worker group's workers (an internal attribute path)."""
    return worker_group.get_worker_group_state().placement_group_handle.placement_group


# 6 ------------------------------------------------------------------------------------------------
def serve_http_host() -> Optional[str]:
    """The address Serve's HTTP ingress binds, asked of the Serve controller; None when it cannot say."""
    if not supported():
        return None
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception as err:  # noqa: BLE001
        log.warning("cannot ask Serve which address it binds: %r", err)
        return None
