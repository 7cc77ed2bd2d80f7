"""The crmml BentoML service: churn scores, recommendations and customer profiles over HTTP.

Run it with ``crmml serve [--port 3000] [--workspace DIR]`` (binds 127.0.0.1), or directly::

    CRMML_WORKSPACE=DIR CRMML_API_KEY=... BENTOML_HOME=DIR/bentoml \\
        bentoml serve serving.service:CrmmlService --host 127.0.0.1 --port 3000

BentoML hosts the process (workers, ``/metrics``, ``/livez``, lifecycle); every crmml route is a
FastAPI app mounted into the service with ``@bentoml.asgi_app``, which gives full control of status
codes, error bodies and the OpenAPI document (``/openapi.json``, browsable at ``/docs``):

    POST /churn/score                 {"customer_ids": [...]}  (1-10,000 ids)
    GET  /customers/{id}/profile      the customer 360 record with churn risk
    POST /recommend                   {"customer_id", "k", "exclude_seen", "filters"}; unknown -> cold start
    POST /recommend/basket            {"item_ids": [...], "k"}: an anonymous basket or session
    GET  /items/{id}/similar?k=10     GET /items/{id}/bought-together?k=10
    GET  /metadata                    model versions, lineage, as-of date, reload status
    POST /admin/reload                re-check the champions and the data now (API key required)
    GET  /healthz  /readyz  /metrics  open (no key)

Safety (see ``CrmmlGuard``): with ``CRMML_API_KEY`` set, every route except ``/healthz``,
``/readyz``, ``/livez`` and ``/metrics`` needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
(401 when absent, 403 when wrong). Without a key the service refuses to start unless
``CRMML_AUTH=off`` says so explicitly (the local demo; ``crmml serve --no-auth``). Bodies over 2 MiB
get 413; invalid input gets 400/422 with a ``detail`` that says what is wrong; unknown ids get 404
or the documented cold-start answer. The access log is off and nothing here logs ids or bodies;
``/metrics`` labels carry route templates (``/customers/{id}/profile``), never ids.

Responses: the hot routes write their JSON by hand (pre-encoded store records, no pydantic per
request); ``tests/test_service.py`` checks every route's body against its declared ``response_model``.
``/metadata`` and ``/admin/reload`` are built through their pydantic models.

Refusing to start: no API key, no champion, a registry that is down with nothing imported, or model
files that cannot be loaded are found before any worker starts (``CrmmlService.check_start_up``):
``bentoml serve`` prints ``crmml: refusing to start: <reason>`` and exits with code 3.

The parts: ``serving/api.py`` (the FastAPI routes), ``serving/guard.py`` (probes, API key, body
size, in front of the routes), ``serving/champions.py`` (champions from MLflow, BentoML store), ``serving/runtime.py``
(the live state and its hot reload, owned by the service instance), ``serving/state.py`` (what a
request reads), ``serving/rec_cache.py`` (recommendations, cached), ``serving/auth.py`` (the API
key), ``serving/bentoml_patches.py`` (two BentoML middlewares, installed below), ``serving/store.py``
(online store). Environment: ``CRMML_WORKSPACE``, ``CRMML_API_KEY``,
``CRMML_AUTH``, ``CRMML_RELOAD_SECONDS`` (default 30; 0 turns polling off), ``CRMML_REC_CACHE``
(cached recommendation lists, default 50,000), ``CRMML_REC_WARM`` (1: fill the cache for known
customers in the background after each load), ``CRMML_GC_FREEZE`` (1: move the loaded state out of
the cyclic GC's reach), ``CRMML_RELOAD_PROCESS`` (1: a reload builds the customer data and batch
records in a child process, ``serving.state.off_process``; 0: in the worker's reload thread),
``CRMML_REQUEST_TIMEOUT`` (seconds before a request gets 504, default 60),
``CRMML_TRACING`` (on: OpenTelemetry spans), ``CRMML_WORKERS`` (worker processes, default 1),
``CRMML_STORE`` (``memory`` or ``redis``) and ``CRMML_REDIS_URL`` (see ``serving.state.batch_store``),
``CRMML_SCORE_CACHE`` (customers whose scored records a worker keeps, default 50,000),
``CRMML_SCORES`` (``lazy``: score a customer when first asked, the default; ``startup``: every
customer when a state loads, the snapshot design, for comparison), ``BENTOML_HOME``. ``POST /events`` records events (``serving.events``).
"""

from __future__ import annotations

import os

for _key, _value in (
    ("OPENBLAS_NUM_THREADS", "1"),
    # implicit's OpenMP pool with 2 threads costs ~30 ms per basket fold-in here; 1 thread ~7 ms
    ("OMP_NUM_THREADS", "1"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    ("BENTOML_DO_NOT_TRACK", "True"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
):
    os.environ.setdefault(_key, _value)

import logging
import sys

import bentoml

from serving import bentoml_patches
from serving.api import api, current_runtime
from serving.auth import ApiKey
from serving.champions import describe
from serving.guard import CrmmlGuard
from serving.runtime import Runtime

log = logging.getLogger("crmml.serving")

# on purpose, before BentoML builds this worker's app from the service below
bentoml_patches.install()

SERVICE_NAME = "crmml"
#: exit code of ``bentoml serve`` when the service refuses to start
EXIT_REFUSED = 3


# --------------------------------------------------------------------------------------------
# the BentoML service
# --------------------------------------------------------------------------------------------
def refuse(exc: BaseException) -> SystemExit:
    """A fatal start-up problem: one line naming the cause (stderr, the log, ``CRMML_REFUSAL_FILE``).

    Returns the SystemExit to raise. ``crmml serve`` sets ``CRMML_REFUSAL_FILE`` and reports the
    reason written there.
    """
    reason = describe(exc)
    print(f"crmml: refusing to start: {reason}", file=sys.stderr, flush=True)
    log.critical("refusing to start: %s", reason)
    refusal = os.environ.get("CRMML_REFUSAL_FILE")
    if refusal:
        try:
            with open(refusal, "w") as fh:
                fh.write(reason)
        except OSError:
            pass
    return SystemExit(EXIT_REFUSED)


@bentoml.service(
    name=SERVICE_NAME,
    workers=int(os.environ.get("CRMML_WORKERS", "1")),  # crmml serve --workers
    traffic={"timeout": float(os.environ.get("CRMML_REQUEST_TIMEOUT", "60"))},  # see bentoml_patches
    # no access log: no paths (ids) or bodies in logs
    logging={"access": {"enabled": False}},
    # OpenTelemetry spans cost ~1.8 ms per request here and nothing exports them; set
    # CRMML_TRACING=on to trace every route again
    tracing={"excluded_urls": [] if os.environ.get("CRMML_TRACING", "").lower() in ("on", "1", "true") else ["."]},
    http={"host": "127.0.0.1"},
)
@bentoml.asgi_app(api, path="/")
class CrmmlService:
    """Owns this worker's :class:`~serving.runtime.Runtime` (``self.runtime``); the mounted FastAPI app answers.

    Fatal start-up problems (no API key, no champion, registry down with nothing imported, model
    files that cannot be loaded) are found by :meth:`check_start_up` in the ``bentoml serve``
    process before any worker is spawned: it exits with code ``EXIT_REFUSED`` and one line naming
    the cause, instead of a worker that BentoML would restart forever.
    """

    @bentoml.on_deployment
    def check_start_up() -> None:
        from features.workspace import Workspace
        from serving.state import check_servable

        try:
            ApiKey.from_env()
            check_servable(Workspace(os.environ.get("CRMML_WORKSPACE") or None))
        except Exception as exc:
            raise refuse(exc) from None

    def __init__(self) -> None:
        from serving.lifecycle import watch_parent

        watch_parent()  # this worker ends with the `bentoml serve` process that spawned it
        try:
            runtime = Runtime.from_env()
            runtime.start()
        except Exception as exc:  # what check_start_up could not see (e.g. the data changed since)
            refuse(exc)  # BentoML restarts a failed worker; `crmml serve` stops it when the reason appears
            raise
        self.runtime = runtime
        self.runtime.start_polling()

    def __is_ready__(self) -> bool:
        return self.runtime.state is not None


CrmmlService.add_asgi_middleware(CrmmlGuard, runtime=current_runtime)  # type: ignore[attr-defined]
