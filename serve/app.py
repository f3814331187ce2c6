"""The Ray Serve application: a FastAPI ingress around one ``Predictor``, with batching and hot swap.

``build_app(args)`` is the one entry point for ``serve run serve.app:build_app``,
``serve deploy cluster/serve_config.yaml`` and ``python -m serve``: it turns the
arguments into the typed ``mlp.config.Config`` at once and derives every Ray
option (replicas, autoscaling, queue limits, CPUs, batching) from it.

Hot swap, two ways, neither restarts a replica nor drops a request:

* ``user_config`` ``{"version": ..., "checkpoint": ...}`` -> ``reconfigure``:
  changing it in the YAML and re-running ``serve deploy`` updates every
  replica in place.
* While the source is ``latest`` or an alias (``champion``, ...), each replica
  checks that registry pointer every ``WATCH_INTERVAL_S`` seconds and loads the
  version it names once it moves (a promotion, ``mlp-registry rollback``,
  ``mlp-registry alias set``); a pinned ``vN`` never moves.
  ``POST /admin/reload`` makes the replica that receives it check at once.

A swap loads the new model in a thread and then replaces one reference; a
batch already running keeps the predictor it started with.

``POST /admin/reload`` is open while the endpoint listens on loopback only;
otherwise it needs ``Authorization: Bearer <token>`` (``serve.admin_token_file``
or ``$MLP_ADMIN_TOKEN``) and is off without a token (``serve.options.admin_access``).
With ``serve.api_keys_file`` set, ``POST /predict`` needs an API key (``Authorization: Bearer <key>`` or
``X-API-Key``), checked before the body is read, on loopback too; the replica follows the file as the
operator rotates keys (``serve.keys.KeyRing``). Without it ``/predict`` is open, and a replica whose
endpoint listens beyond loopback says so in its start-up log.
``/openapi.json`` describes every request and answer for this replica's config and
model (``serve.web.openapi_document``: a table model's names its columns and classes);
images decode in a bounded thread pool (``serve.web.DecodePool``), never on the event loop that answers ``/healthz``.

Health: a replica gets traffic only once it holds a model. Ray Serve
marks a replica RUNNING (the only state requests are routed to) after its
constructor, ``reconfigure`` and a first ``check_health`` have all returned;
any of them raising counts as a failed start and the replica is replaced.
So the constructor keeps trying to load for ``serve.load_grace_s`` seconds
and ``check_health`` fails while no model is loaded: a replica that cannot
read the registry never serves a 503. A replica that has a model keeps it when
a later reload fails (it stays healthy and reports the problem instead).
"""

# No ``from __future__ import annotations``: FastAPI must see ``Request`` as a class, not a string,
# in the methods Serve's ingress rebinds.
import asyncio
import logging
import random
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from ray import serve
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mlp.config import Config, ConfigError, ServeConfig
from mlp.registry.rollouts import Rollout, read_rollout, sync_configured_rollout
from serve.inputs import InputError, new_request_id
from serve.keys import KeyRing
from serve.ledger import FLUSH_INTERVAL_S, RolloutLedger
from serve.metrics import ServeMetrics
from serve.options import UNKNOWN_HOST, admin_access, config_from_app_args, deployment_options, open_predict_notice
from serve.predictor import ModelSource, Predictor, load_predictor
from serve.web import (error_response, json_response, openapi_document, parse_feedback, parse_request,
                       prediction_body, split_rows)

log = logging.getLogger("ray.serve")
WATCH_INTERVAL_S = 1.0  # one small pointer-file read per second per replica: cheap, and a promotion shows within ~1 s
LOAD_RETRY_S = 0.5  # between load attempts of a starting replica: a model that appears mid-grace is seen at once
DEPLOYMENT_NAME = "MLPService"
TITLE = "MLP inference"

# The replica serves /openapi.json and /docs itself: the document depends on its config (limits, admin access).
api = FastAPI(title=TITLE, openapi_url=None, docs_url=None, redoc_url=None,
              description="Digit / Fashion-MNIST classifier served by Ray Serve. POST JSON pixels or an image "
                          "to /predict.")


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown path, wrong method: the same ``{"error", "status"}`` body as every other refusal (Allow kept)."""
    return json_response({"error": f"{exc.detail}: {request.method} {request.url.path}", "status": exc.status_code},
                         status=exc.status_code, headers=exc.headers)


api.add_exception_handler(HTTPException, http_error)


# Helpers the routes call live above the class: ``@serve.ingress`` pickles the FastAPI app (routes
# included) when the class is defined, so a name defined further down is missing in the replica.
def describe_source(source: ModelSource) -> str:
    """Where a replica looks for its model, in the words of an error message (path or URI included)."""
    if source.checkpoint:
        return f"checkpoint {source.checkpoint}"
    return f"version {source.version} of model {source.model_name!r} in registry {source.registry}"


def replica_id() -> str:
    """This replica's Serve id: with several replicas, says which one answered."""
    return serve.get_replica_context().replica_id.unique_id


def serve_http_host() -> str:
    """The address Serve's HTTP ingress binds (``http_options.host``), asked of the controller.

    The config's ``serve.host`` is not enough: a ``serve deploy`` YAML sets ``http_options.host`` on its own.
    Serve has no public call for it (``mlp.distributed.ray_compat``). If the controller cannot say,
    the address counts as exposed (the admin route then needs a token).
    """
    from mlp.distributed.ray_compat import serve_http_host as bound_host

    host = bound_host()
    if host is None:
        log.warning("POST /admin/reload will need a token: Serve did not say which address it binds")
        return UNKNOWN_HOST
    return host


def model_input(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """What ``predictor`` takes for parsed rows: a table model's raw rows standardised as in its training."""
    return predictor.table_input(x) if predictor.table_form is not None else x


def candidate_mismatch(current: Predictor, candidate: Predictor) -> str:
    """Why ``candidate`` cannot answer the requests ``current`` accepts ("" when it can)."""
    if candidate.info.class_names != current.info.class_names:
        return f"its classes {candidate.info.class_names} differ from the served {current.info.class_names}"
    ours = current.table_form.features if current.table_form is not None else None
    theirs = candidate.table_form.features if candidate.table_form is not None else None
    if ours != theirs:
        return f"it takes other inputs ({theirs or 'pixels'}) than the served version ({ours or 'pixels'})"
    return ""


def base_openapi() -> dict[str, Any]:
    """FastAPI's document of the routes (paths, summaries, operation ids), before ``openapi_document`` fills in
    the bodies. Module-level, so the replica reads the routes of the module it imported."""
    return get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class MLPService:
    """One replica: the current predictor, a batching queue and a registry watcher."""

    async def __init__(self, config: dict[str, Any], ledger: Any = None) -> None:
        self.cfg = Config.from_dict(config)
        self.ledger = ledger  # the app's RolloutLedger handle: answers go there in batches, feedback is scored there
        self.rollout: Optional[Rollout] = None  # the rollout being followed, once its candidate is loaded
        self.candidate: Optional[Predictor] = None
        self._answers: list[dict[str, Any]] = []
        self.rollout_problem = ""
        torch.set_num_threads(max(1, int(self.cfg.serve.replica_cpus)))
        self.source = ModelSource.from_config(self.cfg)
        self.predictor: Optional[Predictor] = None
        self.problem = "no model loaded yet"
        self.loaded_at = 0.0
        self._load_deadline = time.monotonic() + self.cfg.serve.load_grace_s
        self._lock = asyncio.Lock()
        self.metrics = ServeMetrics()
        self._infer.set_max_batch_size(self.cfg.serve.max_batch_size)
        self._infer.set_batch_wait_timeout_s(self.cfg.serve.batch_wait_timeout_s)
        bound_host = await asyncio.to_thread(serve_http_host)
        self.admin = admin_access(self.cfg.serve, bound_host)
        if self.admin.mode != "open":
            log.info("POST /admin/reload: %s (%s)", "token required" if self.admin.mode == "token" else "off",
                     self.admin.detail or self.admin.reason)
        # A keys file that is missing, unreadable or holds no digest raises ConfigError here: a failed start
        # naming the file, rather than a replica that refuses every prediction or, worse, accepts them all.
        self.keys: Optional[KeyRing] = None
        if self.cfg.serve.api_keys_file:
            self.keys = await asyncio.to_thread(KeyRing, self.cfg.serve.api_keys_file)
            log.info("POST /predict: API key required (%s from %s)", self.keys.describe(), self.keys.path)
        elif (notice := open_predict_notice(self.cfg.serve, bound_host)) is not None:
            log.warning(notice)
        self.openapi_doc = self._document(None)  # replaced by each model loaded: a table model's names its columns
        # Serve routes nothing here before this returns, so waiting for the model costs no 503s.
        await self._load_within_grace()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._reporter = asyncio.get_running_loop().create_task(self._report_answers())

    async def check_health(self) -> None:
        """Serve's health check: fail while no model is loaded, so Serve neither starts routing nor keeps routing.

        Ray runs it once right after ``__init__`` and ``reconfigure`` (a failure there is a failed start:
        the replica is stopped and retried, and after a few failures the deploy fails with this message)
        and every ``serve.health_check_period_s`` after that. A failed *reload* does not fail it: the
        replica still serves the model it has. Kept cheap: it runs on the request loop.
        """
        if self.predictor is None:
            raise RuntimeError(f"no model to serve after {self.cfg.serve.load_grace_s:g}s "
                               f"(serve.load_grace_s): {self.problem}")
        if self._watcher.done() and not self._watcher.cancelled():  # hot swap would stop without a word
            raise RuntimeError(f"the registry watcher stopped: {self._watcher.exception()!r}")

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve this source from now on: ``{"version": "latest" | "vN" | alias, "checkpoint": path | null}``.

        Never raises for a source that cannot be loaded: Ray would stop a running replica whose
        ``reconfigure`` fails, and the model it already has is better than none (``problem`` says why).
        """
        unknown = set(user_config) - {"version", "checkpoint", "rollout"}
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)} (known: version, checkpoint, rollout)")
        serving = {key: value for key, value in user_config.items() if key != "rollout"}
        serve_cfg = ServeConfig(**{**self.cfg.serve.__dict__, **serving})  # validates the version
        await self._configured_rollout(user_config.get("rollout"), serve_cfg)
        self.source = ModelSource(self.source.registry, self.source.model_name,
                                  serve_cfg.version, serve_cfg.checkpoint)
        if self.predictor is None:  # still starting: this source gets what is left of the grace period
            await self._load_within_grace()
        else:
            await self._refresh()

    async def _configured_rollout(self, spec: Any, serve_cfg: ServeConfig) -> None:
        """``user_config.rollout`` (a Serve YAML): start, change or end that rollout in the registry, where
        every replica (and ``mlp-registry rollout show``) sees it. A bad spec fails the deploy, naming the key."""
        if spec is not None and serve_cfg.checkpoint:
            raise ValueError("user_config.rollout needs a registry: this app serves a checkpoint folder")
        if serve_cfg.checkpoint:
            return
        done = await asyncio.to_thread(sync_configured_rollout, self.source.registry, self.source.model_name, spec)
        if done:
            log.info(done)

    async def _load_within_grace(self) -> None:
        """Try to load until a model is in or ``serve.load_grace_s`` has passed since the replica started.

        A registry that shows up a moment late (a slow mount, a promotion in flight) costs a short
        wait instead of a failed replica; one that never shows up leaves ``predictor`` at None and
        ``check_health`` fails with ``problem``.
        """
        while self.predictor is None:
            await self._refresh()
            remaining = self._load_deadline - time.monotonic()
            if self.predictor is not None or remaining <= 0:
                return
            await asyncio.sleep(min(LOAD_RETRY_S, remaining))

    async def _refresh(self) -> bool:
        """Load the source's current folder if it differs from the one being served; True if swapped."""
        async with self._lock:
            try:
                folder = await asyncio.to_thread(self.source.resolve)
                if self.predictor is not None and Path(self.predictor.info.path) == folder:
                    self.problem = ""  # the source resolves again to what we serve: nothing is wrong
                    return False
                if self.candidate is not None and Path(self.candidate.info.path) == folder:
                    predictor = self.candidate  # a promoted candidate is already loaded: no second load
                else:
                    predictor = await asyncio.to_thread(load_predictor, self.source)
            except (OSError, ValueError, RuntimeError, ConfigError) as err:
                self._report(f"cannot load {describe_source(self.source)}: {err}")
                return False
            old = self.predictor.version if self.predictor else None
            document = self._document(predictor)
            self.predictor, self.openapi_doc, self.problem, self.loaded_at = predictor, document, "", time.time()
            self.metrics.serving(predictor.version, self.candidate.version if self.candidate else None)
            log.info("serving model %s (was %s)", predictor.version, old)
            return True

    def _document(self, predictor: Predictor | None) -> dict[str, Any]:
        """``/openapi.json`` for this config and model: a table model's lists its columns and classes, so a
        swap to a version with other columns changes the document with the model."""
        table = predictor.table_form if predictor is not None else None
        classes = predictor.info.class_names if table is not None else ()
        names = predictor.info.class_names if predictor is not None else ()
        return openapi_document(base_openapi(), self.cfg.serve, self.admin.mode, table, classes, names)

    def _report(self, problem: str) -> None:
        """Remember why the last load failed; log it once, not on every watcher tick."""
        if problem != self.problem:
            log.warning(problem)
        self.problem = problem

    async def _watch(self) -> None:
        """Follow a moving source (``latest``, an alias) and the rollout: two small reads a tick, a load only
        when something moved."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.predictor is None or self.source.follows_registry:
                await self._refresh()
            if not self.source.checkpoint:  # a checkpoint has no registry, hence no rollout
                await self._follow_rollout()

    async def _follow_rollout(self) -> None:
        """Start, change or end routing to a rollout's candidate as ``rollout.json`` says.

        The candidate is loaded before any request is routed to it, and ending only stops routing:
        no request fails on either. A candidate that cannot answer the same requests (other classes
        or columns) is not routed to; the replica logs why, once.
        """
        try:
            rollout = await asyncio.to_thread(read_rollout, self.source.registry, self.source.model_name)
        except (OSError, ValueError) as err:
            self._report_rollout(f"cannot read the rollout: {err}")
            return
        current = self.predictor
        if rollout is None or current is None or rollout.candidate == current.version:
            self.rollout, self.candidate = None, None
        elif self.candidate is None or self.candidate.version != rollout.candidate:
            try:
                candidate = await asyncio.to_thread(
                    load_predictor, ModelSource(self.source.registry, self.source.model_name, rollout.candidate))
            except (OSError, ValueError, RuntimeError, ConfigError) as err:
                self._report_rollout(f"cannot load the rollout's candidate {rollout.candidate}: {err}")
                return
            mismatch = candidate_mismatch(current, candidate)
            if mismatch:
                self._report_rollout(f"not routing to the rollout's candidate {rollout.candidate}: {mismatch}")
                return
            self.rollout, self.candidate = rollout, candidate
            log.info("rollout %s: %s of /predict to candidate %s", rollout.id,
                     f"{rollout.percent:g}%" if rollout.mode == "canary" else "a shadow", rollout.candidate)
        else:
            self.rollout = rollout  # the same candidate: a new percentage or mode takes effect at once
        self.rollout_problem = ""
        self.metrics.serving(current.version if current else None, self.candidate.version if self.candidate else None)

    def _report_rollout(self, problem: str) -> None:
        """Like ``_report`` for the rollout, kept apart so the two do not overwrite (and re-log) each other."""
        if problem != self.rollout_problem:
            log.warning(problem)
        self.rollout_problem = problem

    async def _report_answers(self) -> None:
        """Send the answers gathered since the last tick to the ledger in one call (figures, never requests,
        are lost when the ledger is unreachable)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if not self._answers:  # nothing is queued without a ledger (``_answered``)
                continue
            answers, self._answers = self._answers, []
            try:
                await self.ledger.record.remote(answers)
            except Exception as err:  # noqa: BLE001  (the ledger restarting: these figures are lost, that is all)
                log.warning("could not report %d answers to the rollout ledger: %s", len(answers), err)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)  # both set from the config in __init__
    async def _infer(self, items: list[tuple[Predictor, np.ndarray]]) -> list[tuple[str, list[dict[str, Any]]]]:
        """One model call for every request that arrived together; each keeps the predictor it started with."""
        results: list[tuple[str, list[dict[str, Any]]]] = []
        start = 0
        while start < len(items):  # group by predictor: only a swap mid-batch makes more than one group
            predictor = items[start][0]
            end = start
            while end < len(items) and items[end][0] is predictor:
                end += 1
            group = [x for _, x in items[start:end]]
            probs = predictor.predict_proba(np.concatenate(group) if len(group) > 1 else group[0])
            self.metrics.batched(predictor.version, len(probs))
            for rows in split_rows(probs, [len(x) for x in group]):
                results.append((predictor.version, predictor.format(rows)))
            start = end
        return results

    @api.post("/predict", summary="Classify one instance, a batch, or an uploaded image")
    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        response, version = await self._predict(request)
        self.metrics.answered("/predict", response.status_code, version, time.perf_counter() - started)
        return response

    def _without_key(self, route: str, request: Request) -> Optional[Response]:
        """The 401 for a request without a valid API key (None: keys are off, or the key is good). Checked
        before anything else: a request without a key costs no body read or decode."""
        if self.keys is None:
            return None
        try:
            self.keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))
        except InputError as err:
            return self._refused(route, err)
        return None

    async def _predict(self, request: Request) -> tuple[Response, Optional[str]]:
        """``/predict``'s answer and the version that computed it (None: refused before any model ran)."""
        if (refused := self._without_key("/predict", request)) is not None:
            return refused, None
        predictor = self.predictor
        if predictor is None:
            return self._refused("/predict", InputError(503, self.problem)), None
        try:
            parsed = await parse_request(request, self.cfg.serve, predictor.info.dataset, predictor.table_form)
        except InputError as err:
            return self._refused("/predict", err), None
        rollout, candidate = self.rollout, self.candidate
        mode = rollout.mode if rollout is not None and candidate is not None else "none"
        shadow: Optional[Predictor] = None
        if mode == "canary" and random.random() * 100.0 < rollout.percent:  # type: ignore[union-attr]
            predictor = candidate  # type: ignore[assignment]
        elif mode == "shadow":
            shadow = candidate
        self.metrics.routed(mode, "candidate" if predictor is candidate else "current")
        request_id = new_request_id()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.cfg.serve.request_timeout_s):  # no extra task, unlike wait_for
                if shadow is None:
                    version, predictions = await self._infer((predictor, model_input(predictor, parsed.x)))
                    compared = None
                else:
                    (version, predictions), compared = await asyncio.gather(
                        self._infer((predictor, model_input(predictor, parsed.x))), self._shadow(shadow, parsed.x))
        except asyncio.TimeoutError:
            self._answered(request_id, rollout if mode != "none" else None, predictor.version, None, started, None)
            return json_response({"error": f"prediction took longer than {self.cfg.serve.request_timeout_s}s",
                                  "status": 504}, status=504), predictor.version
        labels = [p["label"] for p in predictions]
        self._answered(request_id, rollout if mode != "none" else None, version, labels, started, compared)
        return json_response(prediction_body(predictions, parsed.single, version, request_id)), version

    async def _shadow(self, candidate: Predictor, x: np.ndarray) -> dict[str, Any]:
        """The shadow candidate's answer to the same rows: its labels and latency, or the error it raised
        (which the client never sees)."""
        started = time.perf_counter()
        try:
            _, predictions = await self._infer((candidate, model_input(candidate, x)))
        except Exception as err:  # noqa: BLE001  (the candidate failing is a figure, not the client's problem)
            log.warning("shadow candidate %s failed: %s", candidate.version, err)
            return {"version": candidate.version, "predicted": None, "error": True,
                    "latency_ms": (time.perf_counter() - started) * 1000.0}
        return {"version": candidate.version, "predicted": [p["label"] for p in predictions], "error": False,
                "latency_ms": (time.perf_counter() - started) * 1000.0}

    def _answered(self, request_id: str, rollout: Optional[Rollout], version: str, labels: Optional[list[int]],
                  started: float, shadow: Optional[dict[str, Any]]) -> None:
        """Queue one answer for the ledger (``labels`` None: it failed); count the shadow's agreement."""
        if shadow is not None and shadow["predicted"] is not None and labels is not None:
            self.metrics.agreement("shadow", sum(a == b for a, b in zip(labels, shadow["predicted"])), len(labels))
        if self.ledger is None:
            return
        self._answers.append({"request_id": request_id, "rollout": rollout.id if rollout is not None else "",
                              "version": version, "predicted": labels, "error": labels is None,
                              "latency_ms": (time.perf_counter() - started) * 1000.0, "shadow": shadow})

    def _refused(self, route: str, err: InputError) -> Response:
        """The 4xx/503 answer to a request refused before any model ran, counted by reason."""
        self.metrics.refusal(route, err.status)
        return error_response(err)

    @api.get("/healthz", summary="Liveness: the replica answers")
    async def healthz(self) -> Response:
        return json_response({"status": "ok"})

    @api.get("/readyz", summary="Readiness: a model is loaded; problem: why the last load failed")
    async def readyz(self) -> Response:
        if self.predictor is None:
            return json_response({"ready": False, "error": self.problem, "replica": replica_id()}, status=503)
        return json_response({"ready": True, "version": self.predictor.version, "problem": self.problem or None,
                              "replica": replica_id()})

    @api.post("/feedback", summary="The true label(s) of an answered request, for the live accuracy of the "
                                   "version that answered it and the rollout gate")
    async def feedback(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self._feedback(request)
        self.metrics.answered("/feedback", response.status_code, None, time.perf_counter() - started)
        return response

    async def _feedback(self, request: Request) -> Response:
        if (refused := self._without_key("/feedback", request)) is not None:  # feedback moves the gate
            return refused
        predictor = self.predictor
        if predictor is None or self.ledger is None:
            return json_response({"error": self.problem or "no rollout ledger in this application",
                                  "status": 503}, status=503)
        try:
            request_id, labels = await parse_feedback(request, self.cfg.serve, predictor.info.class_names)
        except InputError as err:
            return self._refused("/feedback", err)
        result = await self.ledger.feedback.remote(request_id, labels)
        if "status" in result:  # unknown (404) or already labelled / another count (409)
            return self._refused("/feedback", InputError(result["status"], result["error"]))
        return json_response(result)

    @api.get("/rollout", summary="The running rollout (canary or shadow), live figures per version, last decision")
    async def rollout_status(self) -> Response:
        if self.ledger is None:
            return json_response({"error": "no rollout ledger in this application", "status": 503}, status=503)
        return json_response(await self.ledger.status.remote())

    @api.get("/model", summary="The model being served: version (vN), metrics, provenance; source.version is "
                               "what was asked for (latest, vN or an alias)")
    async def model(self) -> Response:
        if self.predictor is None:
            return json_response({"error": self.problem, "status": 503}, status=503)
        return json_response({**self.predictor.info.to_dict(), "loaded_at": self.loaded_at,
                              "source": {"registry": self.source.registry, "model_name": self.source.model_name,
                                         "version": self.source.version, "checkpoint": self.source.checkpoint},
                              "problem": self.problem or None, "replica": replica_id()})

    @api.post("/admin/reload", summary="Re-read the registry now (this replica; others within a second)")
    async def reload(self, request: Request) -> Response:
        try:
            self.admin.check(request.headers.get("authorization"))
        except InputError as err:
            return error_response(err)
        changed = await self._refresh()
        if self.predictor is None:
            return json_response({"error": self.problem, "status": 503}, status=503)
        return json_response({"version": self.predictor.version, "changed": changed, "problem": self.problem or None})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")  # the route prefix, e.g. /mlp
        return json_response({**self.openapi_doc, "servers": [{"url": root}]} if root else self.openapi_doc)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{TITLE} - docs")


def failure_reason(app_name: str) -> str:
    """Why an application is not running, one line per unhealthy deployment, from ``serve.status()``.

    ``serve.run`` raises only "Failed to update the deployments [...]": the replica's own error
    (e.g. ``check_health``'s "no model to serve ...") is the last line of the deployment's message.
    """
    app = serve.status().applications.get(app_name)
    if app is None:
        return f"no application named {app_name!r}"
    lines = [f"{name}: {deployment.message.strip().splitlines()[-1]}"
             for name, deployment in app.deployments.items()
             if deployment.status != "HEALTHY" and deployment.message.strip()]
    return "\n".join(lines) or app.message


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` / ``python -m serve``."""
    return build_from_config(config_from_app_args(args))


def build_from_config(cfg: Config) -> serve.Application:
    """Same as ``build_app`` for callers that already hold a ``Config`` (the CLI, tests): the service and
    its rollout ledger (``serve.ledger``)."""
    config = cfg.to_dict()
    return MLPService.options(**deployment_options(cfg.serve)).bind(config, RolloutLedger.bind(config))
