"""BentoML's per-request timeout, as crmml installs it: the timer goes when the answer starts."""

import asyncio

from bentoml._internal.server.http import traffic

from serving import bentoml_patches

bentoml_patches.install()


async def _call(middleware, app_delay: float) -> tuple[list[dict], int]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await middleware(scope, receive, send)
    loop = asyncio.get_running_loop()
    pending = sum(1 for h in loop._scheduled if not h.cancelled())  # noqa: SLF001
    return sent, pending


def _app(delay: float):
    async def app(scope, receive, send):
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_answered_request_leaves_no_live_timer():
    assert traffic.TimeoutMiddleware.crmml_cancels_timer
    middleware = traffic.TimeoutMiddleware(_app(0.0), timeout=60.0)
    sent, pending = asyncio.run(_call(middleware, 0.0))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert pending == 0  # BentoML's own middleware keeps a 60 s timer per request here


def test_slow_request_still_gets_504():
    middleware = traffic.TimeoutMiddleware(_app(5.0), timeout=0.05)
    sent, _ = asyncio.run(_call(middleware, 5.0))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]
