"""The runtime of one service worker: the live :class:`~serving.state.ServingState` and its hot reload.

:class:`Runtime` holds the current state in one attribute. ``check()`` (called by a background
thread every ``CRMML_RELOAD_SECONDS``, default 30, and by ``POST /admin/reload``) asks the registry
for the champion versions and the workspace for its data stamp; if either changed it builds a
complete new state on the side and swaps the attribute. Requests read the attribute once and keep
that object until they answer, so none is dropped or sees a half-loaded state. A failed reload
keeps serving the old state and reports the error. The runtime is owned by the BentoML service
instance (``serving.service.CrmmlService``); nothing here is a module global.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from features.workspace import Workspace
from serving.auth import ApiKey
from serving.champions import (
    ModelLoadError, Registry, RegistryUnavailable, describe, import_champion, now, record_served, resolve_champions,
)
from serving.schemas import Metadata
from serving.state import ServingState, build_state, responsive
from serving.store import data_stamp, risk_tier_counts
from training.names import CHAMPION

log = logging.getLogger("crmml.serving")

DEFAULT_RELOAD_SECONDS = 30.0
API_VERSION = "1.0"


def reload_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CRMML_RELOAD_SECONDS", DEFAULT_RELOAD_SECONDS)))
    except ValueError:
        return DEFAULT_RELOAD_SECONDS


class Runtime:
    """Owns the served state of one worker; ``state`` is swapped whole, never mutated.

    ``start()`` builds the first state (start-up errors propagate: the service refuses to start);
    ``check()`` reloads when the champions or the data changed; ``metadata()`` answers /metadata.
    """

    def __init__(self, ws: Workspace, api_key: ApiKey, poll_seconds: float | None = None):
        self.ws = ws
        self.api_key = api_key
        self.registry = Registry(ws)
        self.poll_seconds = reload_seconds() if poll_seconds is None else poll_seconds
        self.state: ServingState | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_check: str | None = None
        self.last_reload: str | None = None
        self.last_error: str | None = None
        self.registry_reachable: bool | None = None
        #: why the last reload refused a model (hash mismatch, unreadable files); None once one succeeds
        self.degraded: str | None = None
        self.reloads = 0

    @classmethod
    def from_env(cls) -> "Runtime":
        """The workspace of ``CRMML_WORKSPACE`` and the key of ``CRMML_API_KEY`` / ``CRMML_AUTH``."""
        return cls(Workspace(os.environ.get("CRMML_WORKSPACE") or None), ApiKey.from_env())

    # -- start-up -------------------------------------------------------------------------------
    def start(self) -> ServingState:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)  # BLAS and OpenMP: one worker thread per request
        except Exception as exc:  # pragma: no cover - optional: the env variables set one thread already
            log.debug("threadpoolctl could not limit the thread pools: %s", exc)
        started = time.perf_counter()
        refs, warnings = resolve_champions(self.ws, self.registry)
        self.registry_reachable = not any(r.source == "last_imported" for r in refs.values())
        state = build_state(self.ws, refs, warnings, None)
        self.state = state
        record_served(self.ws, {n: m.ref for n, m in state.models.items()})  # served: the fallback next time
        self._live(state, None)
        self.last_reload = now()
        what = ", ".join(f"{n} v{m.ref.version} ({m.ref.source})" for n, m in state.models.items())
        log.info("serving %s; %d customers as of %s; loaded in %.1f s", what, len(state.store), state.as_of,
                 time.perf_counter() - started)
        return state

    @staticmethod
    def _live(new: ServingState, old: ServingState | None) -> None:
        if old is not None:
            old.retired.set()
        new.go_live(old)

    def start_polling(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="crmml-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception as exc:  # keep polling; the error is visible in /metadata
                log.warning("reload check failed: %s", exc)

    # -- reload ---------------------------------------------------------------------------------
    def check(self, force: bool = False) -> tuple[bool, str]:
        """Reload if the champions or the data changed (or ``force``); returns (reloaded, detail).

        Runs beside the requests (a worker thread): the registry look-up and the build run with a
        short GIL switch interval (``serving.state.responsive``) and the heavy part of the build in a
        child process (``serving.state.off_process``), so requests keep their latency during a reload.
        """
        with self._lock, responsive():
            self.last_check = now()
            current = self.state
            try:
                found = self.registry.champions()
                self.registry_reachable = True
            except RegistryUnavailable as exc:
                self.registry_reachable = False
                self.last_error = str(exc)
                return False, f"registry unreachable, still serving the loaded versions: {exc}"
            missing = [n for n, mv in found.items() if mv is None]
            if missing:
                self.last_error = f"no champion for {', '.join(missing)} in the registry; keeping the loaded versions"
                return False, self.last_error
            wanted = {n: (n, str(mv.version), mv.run_id) for n, mv in found.items()}
            serving = {n: m.ref.key for n, m in current.models.items()} if current is not None else {}
            stamp = data_stamp(self.ws)
            models_changed = wanted != serving or any(m.ref.source != "registry" for m in current.models.values())
            data_changed = current is None or stamp != current.data_stamp
            if not (force or models_changed or data_changed):
                self.last_error = None
                return False, "champions and data unchanged"
            try:
                refs = {name: import_champion(self.ws, self.registry, mv) for name, mv in found.items()}
                started = time.perf_counter()
                new_state = build_state(self.ws, refs, [], current)
            except ModelLoadError as exc:  # corrupt or changed files: refused, the old champions keep serving
                self.degraded = describe(exc)
                self.last_error = f"reload refused, still serving the loaded versions: {self.degraded}"
                log.error("%s", self.last_error)
                return False, self.last_error
            except Exception as exc:
                self.last_error = f"reload failed, still serving the loaded versions: {describe(exc)}"
                log.exception("reload failed")
                return False, self.last_error
            self.state = new_state  # the swap: one attribute assignment
            record_served(self.ws, refs)
            self._live(new_state, current)
            self.reloads += 1
            self.last_reload = now()
            self.last_error = None
            self.degraded = None
            what = ", ".join(f"{n} v{r.version}" for n, r in refs.items())
            reason = "forced" if not (models_changed or data_changed) else ("champion changed" if models_changed else "data changed")
            log.info("reloaded (%s) in %.1f s: serving %s", reason, time.perf_counter() - started, what)
            return True, f"reloaded ({reason}): serving {what}"

    # -- /metadata ------------------------------------------------------------------------------
    def metadata(self, state: ServingState) -> Metadata:
        """The ``/metadata`` answer for ``state``."""
        models = {}
        for name, m in state.models.items():
            r = m.ref
            models[name] = {
                "name": r.name, "version": r.version, "alias": CHAMPION, "run_id": r.run_id,
                "bentoml_tag": r.bentoml_tag, "source": r.source, "registered_at": r.registered_at,
                "metrics": r.metrics, "lineage": r.lineage, "grade": r.grade,
            }
        return Metadata.model_validate({
            "service": "crmml",
            "api_version": API_VERSION,
            "loaded_at": state.loaded_at,
            "load_seconds": state.load_seconds,
            "models": models,
            "data": {
                "workspace": str(self.ws.root),
                "as_of": state.as_of,
                "customers": len(state.store),
                "items": state.rec.n_items,
                "sources": state.data.sources,
                "data_fingerprint": state.data.fingerprint,
                "risk_tiers": risk_tier_counts(state.store),
                "store": {**state.store.info(), "recommendation_cache": state.rec.cache_info()},
            },
            "reload": {
                "poll_seconds": self.poll_seconds,
                "last_check": self.last_check,
                "last_reload": self.last_reload,
                "last_error": self.last_error,
                "reloads": self.reloads,
                "registry_reachable": self.registry_reachable,
                "degraded": self.degraded,
            },
            "auth": self.api_key.enabled,
            "warnings": state.warnings,
        })
