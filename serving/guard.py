"""The ASGI guard in front of the crmml routes: health probes, the API key, the body size limit.

BentoML's own /healthz and /readyz routes come before mounted apps, so the JSON probes are
answered here. Auth happens before the body is read: an unauthenticated client cannot make the
service parse anything. Installed by ``serving.service`` with ``add_asgi_middleware``.
"""

from __future__ import annotations

import json
from typing import Callable

from serving.bentoml_patches import REAL_PATH
from serving.runtime import Runtime
from serving.schemas import MAX_BODY_BYTES


#: answered here, before the routes (BentoML's own probes come before mounted apps)
PROBES = frozenset({"/healthz", "/readyz"})


class BodyTooLarge(Exception):
    """A chunked body went over the limit while it was read."""


class CrmmlGuard:
    """ASGI middleware of the service: answers /healthz and /readyz, checks the API key and the body size.

    ``runtime`` gives the worker's runtime (None while it starts: then
    every route but the probes is answered 503 by the app); BentoML passes it in from
    ``CrmmlService.add_asgi_middleware`` below.
    """

    def __init__(self, app, runtime: Callable[[], Runtime | None], max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.runtime = runtime
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        real = scope.get(REAL_PATH)
        if real is not None:  # undo the metrics label rewrite before routing
            scope = {**scope, "path": real}
        path = scope["path"]
        if path in PROBES and scope.get("method", "GET") not in ("GET", "HEAD"):
            # TRACE/POST/... on a probe: 405 like every other route (a probe is not an echo service)
            await self._send(send, 405, {"detail": f"method {scope.get('method')} not allowed; use GET"},
                             [(b"allow", b"GET, HEAD")])
            return
        if path == "/healthz":
            await self._send(send, 200, {"status": "ok"})
            return
        runtime = self.runtime()
        if path == "/readyz":
            await self._readyz(send, runtime)
            return
        if runtime is not None:
            problem = runtime.api_key.problem(path, scope.get("headers", ()))
            if problem is not None:
                status, detail = problem
                headers = [(b"www-authenticate", b'Bearer realm="crmml"')] if status == 401 else []
                await self._send(send, status, {"detail": detail}, headers)
                return
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
            # an id with a newline: BentoML's outer router ("." stops at a newline) would answer a
            # text/plain 404 before the crmml routes see it
            await self._send(send, 400, {"detail": "the request path contains control characters (e.g. a newline); "
                                                   "ids are 1-64 characters of letters, digits and _ . : @ -"})
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._send(send, 400, {"detail": "invalid Content-Length header"})
                    return
        if length is not None and length > self.max_body:
            await self._send(send, 413, {"detail": f"request body of {length:,} bytes exceeds the limit of {self.max_body:,} bytes"})
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._send(send, 413, {"detail": f"request body exceeds the limit of {self.max_body:,} bytes"})

    @classmethod
    async def _readyz(cls, send, runtime: Runtime | None) -> None:
        state = runtime.state if runtime is not None else None
        if state is None:
            await cls._send(send, 503, {"ready": False, "status": "starting", "detail": "models and data not loaded yet"})
            return
        versions = {name: m.ref.version for name, m in state.models.items()}
        if runtime.degraded:  # still answering with the old champions, but an operator must look
            await cls._send(send, 503, {"ready": False, "status": "degraded", "detail": runtime.degraded,
                                        "models": versions, "as_of": state.as_of})
            return
        await cls._send(send, 200, {"ready": True, "status": "ok", "models": versions, "as_of": state.as_of})

    @staticmethod
    async def _send(send, status: int, body: dict, headers: list | None = None) -> None:
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
                + list(headers or []),
            }
        )
        await send({"type": "http.response.body", "body": payload})
