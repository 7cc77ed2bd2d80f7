"""The two changes crmml makes to BentoML 1.4's HTTP middlewares, installed by :func:`install`.

``serving.service`` calls :func:`install` once, before BentoML builds the worker's ASGI app (it
builds it after importing the service module). BentoML creates both middlewares by looking the
class up in its module when the app is built, so replacing the module attribute is enough.
``tests/test_bentoml_patches.py`` fails when BentoML changes what these patches rely on.

1. :class:`CancellingTimeoutMiddleware` (``bentoml._internal.server.http.traffic.TimeoutMiddleware``):
   BentoML arms ``loop.call_later(timeout, ...)`` per request and never cancels it. The timer keeps
   the request's context (and with it the request's objects) alive for ``timeout`` seconds: at
   1,000 requests/s, hundreds of thousands of objects that every full GC pass walks, stalling all
   requests for 100-400 ms (seen as the p99, BENCHMARKS.md). The subclass answers the same way
   (504 after ``timeout``) and cancels the timer as soon as the response has started.
2. :class:`TemplatedTrafficMetrics` (``...http.instruments.RunnerTrafficMetricsMiddleware``):
   BentoML labels ``bentoml_api_server_request_*`` with ``scope["path"]``: customer and item ids
   would land in ``/metrics`` (personal data, unbounded label sets). The subclass hands it the
   route template (:func:`route_template`) and keeps the real path in ``scope["crmml.path"]``;
   the service's guard restores it before routing.
"""

from __future__ import annotations

import asyncio
import re

#: the scope key holding the real path while the metrics middleware sees the template
REAL_PATH = "crmml.path"

_TEMPLATES = (
    (re.compile(r"^/customers/[^/]+/profile/?$"), "/customers/{id}/profile"),
    (re.compile(r"^/items/[^/]+/similar/?$"), "/items/{id}/similar"),
    (re.compile(r"^/items/[^/]+/bought-together/?$"), "/items/{id}/bought-together"),
)
_KNOWN = frozenset(
    {"/churn/score", "/recommend", "/recommend/basket", "/metadata", "/admin/reload", "/openapi.json", "/docs",
     "/healthz", "/readyz", "/livez", "/metrics", "/"}
)


def route_template(path: str) -> str:
    """The route a path belongs to, without ids (``/customers/{id}/profile``); ``/{other}`` if none."""
    if path in _KNOWN:
        return path
    for pattern, template in _TEMPLATES:
        if pattern.match(path):
            return template
    return "/{other}"


def _timeout_middleware(base: type) -> type:
    from starlette.responses import JSONResponse

    class CancellingTimeoutMiddleware(base):  # type: ignore[misc, valid-type]
        """BentoML's TimeoutMiddleware (504 after ``timeout``) that cancels its timer on the answer."""

        crmml_cancels_timer = True

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] not in ("http", "websocket"):
                return await self.app(scope, receive, send)
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

            async def _send(message) -> None:
                if not waiter.done():
                    waiter.set_result(None)
                    timer.cancel()
                await send(message)

            fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
            try:
                await waiter
            except asyncio.TimeoutError:
                if fut.cancel():
                    error = {"error": f"Not able to process the request in {self.timeout} seconds"}
                    await JSONResponse(error, status_code=504)(scope, receive, send)
            else:
                await fut
            finally:
                timer.cancel()

    return CancellingTimeoutMiddleware


def _metrics_middleware(base: type) -> type:
    class TemplatedTrafficMetrics(base):  # type: ignore[misc, valid-type]
        """BentoML's HTTP metrics, labelled with the route template instead of the raw path."""

        crmml_templated = True

        async def __call__(self, scope, receive, send):
            if scope.get("type") == "http":
                path = scope.get("path", "")
                template = route_template(path)
                if template != path:
                    scope = {**scope, "path": template, REAL_PATH: path}
            await super().__call__(scope, receive, send)

    return TemplatedTrafficMetrics


def install() -> None:
    """Replace BentoML's timeout and metrics middlewares by the crmml subclasses (idempotent)."""
    from bentoml._internal.server.http import instruments, traffic

    if not getattr(traffic.TimeoutMiddleware, "crmml_cancels_timer", False):
        traffic.TimeoutMiddleware = _timeout_middleware(traffic.TimeoutMiddleware)
    if not getattr(instruments.RunnerTrafficMetricsMiddleware, "crmml_templated", False):
        instruments.RunnerTrafficMetricsMiddleware = _metrics_middleware(instruments.RunnerTrafficMetricsMiddleware)
