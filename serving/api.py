"""The crmml HTTP routes: a FastAPI app that ``serving.service`` mounts into the BentoML service.

Each route reads the worker's :class:`~serving.runtime.Runtime` through :func:`current_runtime`
(the runtime belongs to the BentoML service instance) and the state it holds once, so a reload
never changes what one request sees. Hot routes write their JSON by hand (see ``serving.service``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Annotated, Any

import anyio
import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import schemas
from serving.auth import OPEN_PATHS
from serving.bentoml_patches import route_template
from serving.guard import BodyTooLarge
from serving.runtime import API_VERSION, Runtime
from serving.schemas import ID_PATTERN, MAX_BODY_BYTES, MAX_K
from serving.store import dumps, join_records
from training.names import CHURN, RECOMMENDER

# every id in a path: the form the service enforces, declared once so the OpenAPI document says it everywhere
IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]

log = logging.getLogger("crmml.serving")

JSON = "application/json"
_ID_RE = re.compile(ID_PATTERN)
#: batches above this many ids are answered off the event loop
_OFFLOOP_IDS = 500


def current_runtime() -> Runtime | None:
    """The runtime of this worker's service instance; None while the instance is being created."""
    try:
        return bentoml.get_current_service().runtime
    except BentoMLException:  # "service isn't instantiated yet"
        return None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps(obj), status_code=status, media_type=JSON, headers=headers)


def _error(status: int, detail: str, errors: list | None = None, headers: dict | None = None) -> Response:
    body: dict[str, Any] = {"detail": detail}
    if errors:
        body["errors"] = errors
    return _json(body, status, headers)


def _state():
    runtime = current_runtime()
    state = runtime.state if runtime is not None else None
    if state is None:
        raise HTTPException(503, "the service is starting: models and data are not loaded yet")
    return state


def _check_id(value: str, what: str) -> str:
    # fullmatch: with match, "$" also matches before a trailing newline ("C1\n" would pass)
    if not _ID_RE.fullmatch(value):
        raise HTTPException(422, f"{what} must be 1-64 characters of letters, digits and _ . : @ -")
    return value


# --------------------------------------------------------------------------------------------
# the FastAPI app
# --------------------------------------------------------------------------------------------
ERRORS = {
    400: {"model": schemas.ErrorResponse, "description": "Malformed request (invalid JSON, control characters in the path)."},
    401: {"model": schemas.ErrorResponse, "description": "Missing API key."},
    403: {"model": schemas.ErrorResponse, "description": "Wrong API key."},
    413: {"model": schemas.ErrorResponse, "description": "Body larger than 2 MiB."},
    422: {"model": schemas.ErrorResponse, "description": "Invalid field (limits, id format, unknown field)."},
    503: {"model": schemas.ErrorResponse, "description": "Not ready yet."},
}


def _errors(*codes: int) -> dict:
    return {code: ERRORS[code] for code in codes}


api = FastAPI(
    title="crmml",
    version=API_VERSION,
    description=(
        "Churn warnings, recommendations and customer insight. Send the API key as "
        "`Authorization: Bearer KEY` or `X-API-Key: KEY` (every route except /healthz, /readyz, /metrics)."
    ),
    docs_url="/docs",
    redoc_url=None,
    openapi_url="/openapi.json",
)


def _openapi() -> dict:
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, ops in schema.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            for op in ops.values():
                op["security"] = [{"bearer": []}, {"apiKey": []}]
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = sorted(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")  # a wrapped body: say so first
    if any(e.get("type") == "json_invalid" for e in errors):
        return _error(400, "request body is not valid JSON")
    items = []
    for e in errors[:20]:
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "missing" and e.get("loc") == ("body",):
            msg = "a JSON body is required"
        elif e.get("type") == "string_pattern_mismatch":
            msg = "must be 1-64 characters of letters, digits and _ . : @ -"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field (fields go at the top level of the body)"
        items.append({"loc": [p for p in e.get("loc", ()) if isinstance(p, (str, int))], "msg": msg, "type": str(e.get("type", ""))})
    first = items[0] if items else {"loc": [], "msg": "invalid request"}
    detail = f"{_loc(first['loc'])}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return _error(422, detail, items)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc.__cause__, BodyTooLarge):  # a chunked body went over the limit while FastAPI read it
        return _error(413, f"request body exceeds the limit of {MAX_BODY_BYTES:,} bytes")
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return _error(exc.status_code, detail, headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> Response:
    # the exception's type and where it happened, not its message (it could quote an id)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
    log.error("internal error on %s: %s at %s", route_template(request.url.path), type(exc).__name__, where)
    return _error(500, "internal error (logged on the server)")


# -- churn ------------------------------------------------------------------------------------
def _churn_body(state, ids: list[str]) -> tuple[int, bytes]:
    seen: set[str] = set()
    unique = [i for i in ids if not (i in seen or seen.add(i))]
    records = state.store.get_many("churn", unique)
    found = [r for r in records if r is not None]
    unknown = [i for i, r in zip(unique, records) if r is None]
    if not found:
        return 404, json.dumps({
            "detail": f"none of the {len(unique)} customer id(s) is known (as of {state.as_of})",
            "unknown_ids": unknown[:100],
        }).encode()
    head = (
        b'{"model_version":' + json.dumps(state.models[CHURN].ref.version).encode()
        + b',"as_of":' + json.dumps(state.as_of).encode()
        + b',"count":' + str(len(found)).encode()
        + b',"unknown_ids":' + json.dumps(unknown).encode()
        + b',"scores":'
    )
    return 200, head + join_records(found) + b"}"


@api.post(
    "/churn/score",
    response_model=schemas.ChurnScoreResponse,
    responses={404: {"model": schemas.ChurnNotFound, "description": "None of the ids is known."}, **_errors(400, 401, 403, 413, 422, 503)},
    summary="Churn scores with reasons for up to 10,000 customers",
    tags=["churn"],
)
async def churn_score(body: schemas.ChurnScoreRequest) -> Response:
    state = _state()
    if len(body.customer_ids) > _OFFLOOP_IDS or state.store.computes:  # scoring off the event loop
        status, payload = await anyio.to_thread.run_sync(_churn_body, state, body.customer_ids)
    else:
        status, payload = _churn_body(state, body.customer_ids)
    return Response(payload, status_code=status, media_type=JSON)


@api.get(
    "/customers/{customer_id}/profile",
    response_model=schemas.CustomerProfile,
    responses={404: {"model": schemas.ErrorResponse, "description": "Unknown customer."}, **_errors(400, 401, 403, 422, 503)},
    summary="The customer 360 record: RFM, segment, value tier, lifecycle stage, tags, CLV, churn risk",
    tags=["customers"],
)
async def customer_profile(customer_id: IdPath) -> Response:
    _check_id(customer_id, "customer id")
    state = _state()
    if state.store.computes:  # scoring off the event loop
        record = await anyio.to_thread.run_sync(state.store.get, "profile", customer_id)
    else:
        record = state.store.get("profile", customer_id)
    if record is None:
        raise HTTPException(404, f"unknown customer (no record as of {state.as_of})")
    return Response(record, media_type=JSON)


@api.get(
    "/customers/{customer_id}/next-best-action",
    response_model=schemas.NextBestAction,
    responses={404: {"model": schemas.ErrorResponse, "description": "Unknown customer."}, **_errors(400, 401, 403, 422, 503)},
    summary="The action with the highest expected value (uplift x value - cost), with the reason",
    tags=["customers"],
)
async def next_best_action(customer_id: IdPath) -> Response:
    from serving.nba import UnknownCustomer

    _check_id(customer_id, "customer id")
    state = _state()
    try:  # the first call loads the uplift model: off the event loop
        body = await anyio.to_thread.run_sync(state.nba.answer, state, customer_id)
    except UnknownCustomer:
        raise HTTPException(404, f"unknown customer (no record as of {state.as_of})") from None
    return _json(body)


# -- recommendations --------------------------------------------------------------------------
def _items(items: list[dict]) -> list[dict]:
    out = []
    for n, it in enumerate(items, 1):
        row = {"item_id": it["item_id"], "score": it.get("score"), "source": it.get("source", "model"), "rank": n}
        if "confidence" in it:  # NaN: a cold-start fallback has no rule figures
            row.update({key: None if it.get(key) is None or it[key] != it[key] else it[key]
                        for key in ("support", "confidence", "lift")})
        out.append(row)
    return out


@api.post(
    "/recommend",
    response_model=schemas.RecommendResponse,
    responses=_errors(400, 401, 403, 413, 422, 503),
    summary="Top-k items for a customer (unknown customers get the cold-start answer, flagged)",
    tags=["recommendations"],
)
async def recommend(body: schemas.RecommendRequest) -> Response:
    state = _state()
    filters = body.filters.model_dump(exclude_none=True) if body.filters is not None else None
    try:
        bought = state.online.purchased_items(body.customer_id) if state.online is not None else None
        items, cold = state.rec.for_customer(body.customer_id, body.k, body.exclude_seen, filters, bought)
    except ValueError as exc:  # a filter the model cannot apply
        raise HTTPException(422, f"filters: {exc}") from None
    return _json({
        "customer_id": body.customer_id, "k": body.k, "cold_start": cold, "items": _items(items),
        "model_version": state.models[RECOMMENDER].ref.version,
    })


@api.post(
    "/recommend/basket",
    response_model=schemas.BasketResponse,
    responses=_errors(400, 401, 403, 413, 422, 503),
    summary="Top-k items for an anonymous basket or session",
    tags=["recommendations"],
)
async def recommend_basket(body: schemas.BasketRequest) -> Response:
    state = _state()
    filters = body.filters.model_dump(exclude_none=True) if body.filters is not None else None
    try:
        items, cold, unknown = state.rec.for_basket(body.item_ids, body.k, filters)
    except ValueError as exc:
        raise HTTPException(422, f"filters: {exc}") from None
    return _json({
        "k": body.k, "cold_start": cold, "items": _items(items), "unknown_item_ids": unknown,
        "model_version": state.models[RECOMMENDER].ref.version,
    })


def _item_list(kind: str, item_id: str, k: int) -> Response:
    _check_id(item_id, "item id")
    state = _state()
    items = state.rec.similar(item_id, k) if kind == "similar" else state.rec.bought_together(item_id, k)
    if items is None:
        raise HTTPException(404, "unknown item")
    # bought-together answers only positive associations; without any, popular items stand in
    cold = kind == "bought_together" and bool(items) and all(it["source"] != "cooc" for it in items)
    return _json({
        "item_id": item_id, "k": k, "kind": kind, "cold_start": cold, "items": _items(items),
        "model_version": state.models[RECOMMENDER].ref.version,
    })


@api.get(
    "/items/{item_id}/similar",
    response_model=schemas.ItemListResponse,
    responses={404: {"model": schemas.ErrorResponse, "description": "Unknown item."}, **_errors(400, 401, 403, 422, 503)},
    summary="Items similar to an item",
    tags=["recommendations"],
)
async def similar_items(
    item_id: IdPath, k: int = Query(schemas.DEFAULT_K, ge=1, le=MAX_K)
) -> Response:
    return _item_list("similar", item_id, k)


@api.get(
    "/items/{item_id}/bought-together",
    response_model=schemas.ItemListResponse,
    responses={404: {"model": schemas.ErrorResponse, "description": "Unknown item."}, **_errors(400, 401, 403, 422, 503)},
    summary="Items frequently bought together with an item",
    tags=["recommendations"],
)
async def bought_together(
    item_id: IdPath, k: int = Query(schemas.DEFAULT_K, ge=1, le=MAX_K)
) -> Response:
    return _item_list("bought_together", item_id, k)


# -- events -----------------------------------------------------------------------------------
@api.post(
    "/events",
    status_code=202,
    response_model=schemas.EventsResponse,
    responses=_errors(400, 401, 403, 413, 422, 503),
    summary="Record up to 1,000 events; the customers' next answers include them",
    tags=["events"],
)
async def post_events(body: schemas.EventsRequest) -> Response:
    """Events are checked with the ingestion contract (rejected ones counted with their reasons),
    de-duplicated on ``event_id``, and written durably to the workspace's event log before the 202;
    the next ingestion adds them to the batch data."""
    state = _state()
    raw = [e.model_dump() for e in body.events]
    try:
        counts = await anyio.to_thread.run_sync(state.online.accept, raw)
    except OSError as exc:
        log.error("event log not writable: %s", type(exc).__name__)
        raise HTTPException(503, "the event log cannot be written; nothing was recorded, send the events again") from None
    return _json(counts, 202)


# -- operations -------------------------------------------------------------------------------
@api.get("/healthz", response_model=schemas.Health, tags=["operations"], summary="Liveness (no key needed)")
async def healthz() -> dict:  # answered by CrmmlGuard; documented here
    return {"status": "ok"}


@api.get(
    "/readyz", response_model=schemas.Readiness, tags=["operations"],
    responses={503: {"model": schemas.Readiness}}, summary="Readiness: models and data loaded (no key needed)",
)
async def readyz() -> dict:  # answered by CrmmlGuard; documented here
    runtime = current_runtime()
    return {"ready": runtime is not None and runtime.state is not None, "status": "ok"}


@api.get(
    "/metadata", response_model=schemas.Metadata, responses=_errors(401, 403, 503),
    summary="Model versions, training data lineage, as-of date, reload status", tags=["operations"],
)
async def metadata() -> Response:
    state = _state()
    return Response(current_runtime().metadata(state).model_dump_json(), media_type=JSON)


@api.post(
    "/admin/reload", response_model=schemas.ReloadResponse, responses=_errors(401, 403, 503),
    summary="Re-check the registry champions and the workspace data now; reload if changed", tags=["operations"],
)
async def admin_reload(force: bool = Query(False, description="Rebuild even if nothing changed.")) -> Response:
    _state()
    runtime = current_runtime()
    reloaded, detail = await anyio.to_thread.run_sync(lambda: runtime.check(force=force))
    answer = schemas.ReloadResponse(
        reloaded=reloaded, detail=detail, models={name: m.ref.version for name, m in runtime.state.models.items()}
    )
    return Response(answer.model_dump_json(), media_type=JSON)
