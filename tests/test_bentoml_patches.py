"""serving.bentoml_patches against the installed BentoML: fails when what the patches rely on changes.

Each patch replaces a middleware class in its BentoML module; BentoML must still (1) define that
class with the constructor and helpers the subclass uses, and (2) look it up in that module when
it builds the app. The timer behaviour itself is covered by tests/test_serving_timeout.py.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path

os.environ.setdefault("BENTOML_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"crmml-test-bentoml-{os.getuid()}"))

from serving import bentoml_patches  # noqa: E402


def _originals():
    from bentoml._internal.server.http import instruments, traffic

    bentoml_patches.install()
    return traffic.TimeoutMiddleware, instruments.RunnerTrafficMetricsMiddleware


def test_install_replaces_both_middlewares_once():
    timeout_cls, metrics_cls = _originals()
    assert timeout_cls.crmml_cancels_timer and metrics_cls.crmml_templated
    bentoml_patches.install()  # idempotent: no subclass of the subclass
    again_timeout, again_metrics = _originals()
    assert again_timeout is timeout_cls and again_metrics is metrics_cls
    assert not getattr(timeout_cls.__mro__[1], "crmml_cancels_timer", False)
    assert not getattr(metrics_cls.__mro__[1], "crmml_templated", False)


def test_bentoml_timeout_middleware_is_what_the_patch_expects():
    timeout_cls, _ = _originals()
    base = timeout_cls.__mro__[1]
    assert base.__module__ == "bentoml._internal.server.http.traffic" and base.__name__ == "TimeoutMiddleware"
    assert list(inspect.signature(base.__init__).parameters) == ["self", "app", "timeout"]
    assert list(inspect.signature(base._set_timer_out).parameters) == ["self", "waiter"]
    # BentoML looks the class up in its module when it builds the app's middlewares
    from bentoml._internal.server.base_app import BaseAppFactory

    source = inspect.getsource(BaseAppFactory.middlewares.fget)
    assert "from .http.traffic import TimeoutMiddleware" in source
    assert "Middleware(TimeoutMiddleware, timeout=self.timeout)" in source


def test_bentoml_metrics_middleware_is_what_the_patch_expects():
    _, metrics_cls = _originals()
    base = metrics_cls.__mro__[1]
    assert base.__module__ == "bentoml._internal.server.http.instruments"
    assert list(inspect.signature(base.__init__).parameters)[:2] == ["self", "app"]
    assert 'endpoint = scope["path"]' in inspect.getsource(base.__call__)  # the label the patch rewrites
    from _bentoml_impl.server.app import ServiceAppFactory

    source = inspect.getsource(ServiceAppFactory.middlewares.fget)
    assert "from bentoml._internal.server.http.instruments import" in source
    assert "RunnerTrafficMetricsMiddleware" in source


class _Recorder:
    def __init__(self, labels: list):
        self.seen = labels

    def labels(self, **kw):
        self.seen.append(kw)
        return self

    def track_inprogress(self):
        import contextlib

        return contextlib.nullcontext()

    def __getattr__(self, name):  # inc, dec, observe, set_to_current_time...
        return lambda *a, **k: None


def test_metrics_are_labelled_by_route_template_and_the_app_sees_the_real_path():
    _, metrics_cls = _originals()
    labels: list[dict] = []
    seen_scopes: list[dict] = []

    class Probe(metrics_cls):
        def __getattr__(self, name):
            if name.startswith("metrics_"):
                return _Recorder(labels)
            raise AttributeError(name)

    async def app(scope, receive, send):
        seen_scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def call():
        middleware = Probe(app, skip_paths=())
        middleware._is_setup = True  # the Prometheus client is replaced by _Recorder above

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            pass

        await middleware({"type": "http", "path": "/customers/C0001/profile", "method": "GET", "headers": []},
                         receive, send)

    asyncio.run(call())
    endpoints = {kw["endpoint"] for kw in labels if "endpoint" in kw}
    assert endpoints == {"/customers/{id}/profile"}
    assert seen_scopes[0][bentoml_patches.REAL_PATH] == "/customers/C0001/profile"
