"""Champion models for serving: resolve them in MLflow, import them into BentoML, load, hot reload.

Start-up (and every reload) goes through :func:`resolve_champions`:

1. **Registry.** ``crmml-churn@champion`` and ``crmml-recommender@champion`` are resolved in the
   workspace's MLflow registry (``training.registry.tracking_uri``: ``$MLFLOW_TRACKING_URI`` or
   ``<workspace>/mlflow.db``). Each champion is imported into the BentoML model store as
   ``<name>:v<registry version>-<run id prefix>`` (``bentoml.mlflow.import_model`` from
   ``models:/<name>/<version>``), labelled with the registry version, run id and workspace; an
   existing import of the same version is reused. The tags actually served (after a successful
   load) are recorded in ``$BENTOML_HOME/crmml_serving.json``.
2. **Registry unreachable** (HTTP server down, SQLite file missing or unreadable): each model falls
   back to the last imported version of this workspace (the one recorded in
   ``crmml_serving.json``, else the newest import with this workspace's label), and the service
   says so (``source: last_imported`` in ``/metadata`` and a warning in the log).
3. **Nothing to serve** (no champion in a reachable registry, or registry unreachable and no
   earlier import): :class:`NoModelError` with a message that says what to do; the service
   refuses to start.

Only an alias ``champion`` is ever served: a challenger or a bare version never is.

Loading: :func:`load_champion` loads the imported MLflow pyfunc from the BentoML store and unwraps
the crmml object behind it (``ChurnModel``, ``Recommender``) so that requests call plain numpy
code, never the pyfunc wrapper (STACK.md: the wrapper costs ~15 ms per call).

Hot reload: :class:`Runtime` holds the current :class:`ServingState` (models + online store) in one
attribute. ``check()`` (called by a background thread every ``CRMML_RELOAD_SECONDS``, default 30,
and by ``POST /admin/reload``) asks the registry for the champion versions and the workspace for its
data stamp; if either changed it builds a complete new state on the side and swaps the attribute.
Requests read the attribute once and keep that object until they answer, so none is dropped or
sees a half-loaded state. A failed reload keeps serving the old state and reports the error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from features.numeric import finite_or_none as _float
from features.workspace import Workspace, atomic_write
from training.names import CHAMPION, CHURN, MODEL_NAMES, RECOMMENDER

log = logging.getLogger("crmml.serving")

STATE_FILE = "crmml_serving.json"
DEFAULT_RELOAD_SECONDS = 30.0


class NoModelError(RuntimeError):
    """Nothing can be served: no champion in the registry and no earlier import to fall back on."""


class RegistryUnavailable(RuntimeError):
    """The MLflow registry cannot be reached or read."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def tracking_uri(ws: Workspace) -> str:
    try:
        from training.registry import tracking_uri as registry_uri

        return registry_uri(ws)
    except ImportError:  # pragma: no cover - registry module is part of the project
        return ws.mlflow_uri


def workspace_label(ws: Workspace) -> str:
    """A short stable id of the workspace folder (label on every import made for it)."""
    return hashlib.sha256(str(ws.root).encode()).hexdigest()[:12]


def _probe(uri: str, timeout: float = 2.0) -> None:
    """Fail fast (RegistryUnavailable) when the store obviously cannot be reached.

    MLflow's HTTP client retries with back-off for minutes; a plain TCP connect answers at once.
    A SQLite URI whose file is missing is "unreachable" too: MLflow would create an empty store.
    """
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        parsed = urlparse(uri)
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout):
                pass
        except OSError as exc:
            raise RegistryUnavailable(f"MLflow registry {uri} unreachable: {exc}") from exc
    elif scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if path and not Path(path).exists():
            raise RegistryUnavailable(f"MLflow registry {uri}: file not found (nothing trained in this workspace yet?)")


class Registry:
    """A thin, cached MLflow client for the champion lookups the service makes."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.uri = tracking_uri(ws)
        self._client = None

    def client(self):
        if self._client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            import mlflow
            from mlflow import MlflowClient

            # models:/ URIs (import_model downloads through them) resolve with the global URIs:
            # point them at this store, never at a ./mlflow.db in the current directory
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def champions(self, names=MODEL_NAMES) -> dict[str, Any | None]:
        """``{name: ModelVersion or None}`` for the ``champion`` alias; RegistryUnavailable on failure."""
        from mlflow.exceptions import MlflowException

        _probe(self.uri)
        out: dict[str, Any | None] = {}
        try:
            client = self.client()
            for name in names:
                try:
                    out[name] = client.get_model_version_by_alias(name, CHAMPION)
                except MlflowException as exc:
                    code = getattr(exc, "error_code", "")
                    if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                        out[name] = None
                    else:
                        raise
        except RegistryUnavailable:
            raise
        except Exception as exc:  # connection refused, locked/corrupt SQLite, HTTP 5xx...
            self._client = None
            raise RegistryUnavailable(f"MLflow registry {self.uri}: {type(exc).__name__}: {exc}") from exc
        return out


# --------------------------------------------------------------------------------------------
# BentoML model store
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChampionRef:
    """One model to serve: its registry identity and its BentoML tag."""

    name: str
    version: str
    run_id: str | None
    bentoml_tag: str
    source: str  # "registry" | "last_imported"
    registered_at: str | None = None
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.name, self.version, self.run_id)


def bentoml_tag(name: str, version: str, run_id: str | None) -> str:
    suffix = f"-{run_id[:12].lower()}" if run_id else ""
    return f"{name}:v{version}{suffix}"


def _ref_from_bento(model, source: str) -> ChampionRef:
    labels = dict(model.info.labels or {})
    meta = dict(model.info.metadata or {})
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if _float(v) is not None}
    return ChampionRef(
        name=labels.get("registered_model", model.tag.name),
        version=labels.get("registry_version", "?"),
        run_id=labels.get("run_id") or None,
        bentoml_tag=str(model.tag),
        source=source,
        registered_at=meta.get("registered_at"),
        metrics={k: float(v) for k, v in metrics.items()},
        lineage={str(k): str(v) for k, v in (meta.get("lineage") or {}).items()},
    )


def _state_path() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / STATE_FILE


def _read_state() -> dict:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_state(ws: Workspace, refs: dict[str, ChampionRef]) -> None:
    state = _read_state()
    state[workspace_label(ws)] = {
        "workspace": str(ws.root),
        "updated_at": _now(),
        "models": {name: ref.bentoml_tag for name, ref in refs.items()},
    }
    try:
        atomic_write(_state_path(), lambda tmp: tmp.write_text(json.dumps(state, indent=2)))
    except OSError as exc:  # read-only store: serving still works, only the fallback hint is lost
        log.warning("could not record the served model tags in %s: %s", _state_path(), exc)


def import_champion(ws: Workspace, registry: Registry, mv) -> ChampionRef:
    """Import a registry version into the BentoML store (once) and describe it."""
    import bentoml
    from bentoml.exceptions import NotFound

    name, version, run_id = mv.name, str(mv.version), mv.run_id
    tag = bentoml_tag(name, version, run_id)
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        registry.client()  # sets the global MLflow URIs that models:/ downloads use
        tags = dict(mv.tags or {})
        metrics = {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.") and _float(v) is not None}
        lineage: dict[str, str] = {}
        if run_id:
            try:
                run = registry.client().get_run(run_id)
                lineage = {k[len("lineage."):]: v[:500] for k, v in run.data.tags.items() if k.startswith("lineage.")}
                for key in ("git_commit", "git_dirty"):
                    if key in run.data.tags:
                        lineage[key] = run.data.tags[key]
            except Exception as exc:  # lineage is informative only
                log.warning("%s v%s: could not read the run's lineage: %s", name, version, exc)
        if tags.get("data_fingerprint"):
            lineage.setdefault("data_fingerprint", tags["data_fingerprint"])
        log.info("importing %s version %s into the BentoML store as %s", name, version, tag)
        try:
            from mlflow.artifacts import download_artifacts

            # fail here with MLflow's own message (BentoML's import masks download errors)
            download_artifacts(artifact_uri=f"models:/{name}/{version}/MLmodel")
        except Exception as exc:
            raise RegistryUnavailable(f"{name} version {version}: cannot download the model artifacts: {exc}") from exc
        model = bentoml.mlflow.import_model(
            tag,
            f"models:/{name}/{version}",
            labels={
                "registered_model": name,
                "registry_version": version,
                "run_id": run_id or "",
                "alias_at_import": CHAMPION,
                "workspace": workspace_label(ws),
            },
            metadata={
                "registry_uri": registry.uri,
                "registered_at": tags.get("registered_at") or str(mv.creation_timestamp),
                "metrics": {k: float(v) for k, v in metrics.items()},
                "lineage": lineage,
                "workspace": str(ws.root),
            },
        )
    return _ref_from_bento(model, "registry")


def last_imported(ws: Workspace, name: str) -> ChampionRef | None:
    """The version this workspace last served (recorded tag), else its newest import, else None."""
    import bentoml
    from bentoml.exceptions import NotFound

    recorded = (_read_state().get(workspace_label(ws)) or {}).get("models", {}).get(name)
    if recorded:
        try:
            return _ref_from_bento(bentoml.models.get(recorded), "last_imported")
        except NotFound:
            pass
    try:
        candidates = bentoml.models.list(name)
    except NotFound:
        candidates = []
    mine = [m for m in candidates if (m.info.labels or {}).get("workspace") == workspace_label(ws)]
    if not mine:
        return None
    newest = max(mine, key=lambda m: m.creation_time)
    return _ref_from_bento(newest, "last_imported")


def resolve_champions(ws: Workspace, registry: Registry | None = None) -> tuple[dict[str, ChampionRef], list[str]]:
    """The champions to serve (imported into BentoML) and warnings; NoModelError if none can be."""
    registry = registry or Registry(ws)
    warnings: list[str] = []
    try:
        found = registry.champions()
    except RegistryUnavailable as exc:
        refs: dict[str, ChampionRef] = {}
        missing = []
        for name in MODEL_NAMES:
            ref = last_imported(ws, name)
            if ref is None:
                missing.append(name)
            else:
                refs[name] = ref
        if missing:
            raise NoModelError(
                f"{exc}; and no earlier import of {', '.join(missing)} for workspace {ws.root} in the BentoML "
                f"store {_store_home()}. Start the MLflow registry (or point MLFLOW_TRACKING_URI at it) "
                f"and train/promote the models (`crmml train churn`, `crmml train recommender`)."
            ) from exc
        note = (
            f"registry unreachable ({exc}); serving the last imported versions: "
            + ", ".join(f"{r.name} v{r.version}" for r in refs.values())
        )
        log.warning(note)
        warnings.append(note)
        return refs, warnings
    missing = [name for name, mv in found.items() if mv is None]
    if missing:
        raise NoModelError(
            f"no champion for {', '.join(missing)} in the MLflow registry {registry.uri}: nothing that was "
            f"promoted can be served. Train the models first (`crmml train churn`, `crmml train recommender`, "
            f"or `crmml run`); the first registered version becomes champion."
        )
    refs = {name: import_champion(ws, registry, mv) for name, mv in found.items()}
    return refs, warnings


def _store_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def load_pyfunc(ref: ChampionRef):
    import bentoml

    return bentoml.mlflow.load_model(ref.bentoml_tag)


def unwrap(pyfunc) -> Any:
    """The crmml object behind an MLflow pyfunc (python_model's ``model``), else the raw implementation."""
    try:
        inner = pyfunc.unwrap_python_model()
    except Exception:  # not a python_function model: a native flavor
        return pyfunc.get_raw_model() if hasattr(pyfunc, "get_raw_model") else pyfunc
    for attr in ("model", "churn_model", "recommender", "_model"):
        obj = getattr(inner, attr, None)
        if obj is not None:
            return obj
    return inner


@dataclass
class LoadedModel:
    ref: ChampionRef
    pyfunc: Any
    impl: Any


def load_champion(ref: ChampionRef) -> LoadedModel:
    pyfunc = load_pyfunc(ref)
    return LoadedModel(ref=ref, pyfunc=pyfunc, impl=unwrap(pyfunc))


# --------------------------------------------------------------------------------------------
# runtime: the current state, reload and the poller
# --------------------------------------------------------------------------------------------
def reload_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CRMML_RELOAD_SECONDS", DEFAULT_RELOAD_SECONDS)))
    except ValueError:
        return DEFAULT_RELOAD_SECONDS


class Runtime:
    """Owns the served state; ``state`` is swapped whole, never mutated.

    ``build(ws, refs, warnings, previous)`` makes a new state object (models loaded, online data
    encoded); ``data_stamp(ws)`` is a cheap fingerprint of the workspace tables the state reads.
    """

    def __init__(
        self,
        ws: Workspace,
        build: Callable[..., Any],
        data_stamp: Callable[[Workspace], Any],
        poll_seconds: float | None = None,
    ):
        self.ws = ws
        self.registry = Registry(ws)
        self._build = build
        self._data_stamp = data_stamp
        self.poll_seconds = reload_seconds() if poll_seconds is None else poll_seconds
        self.state: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_check: str | None = None
        self.last_reload: str | None = None
        self.last_error: str | None = None
        self.registry_reachable: bool | None = None
        self.reloads = 0

    # -- start-up -------------------------------------------------------------------------------
    def start(self) -> Any:
        refs, warnings = resolve_champions(self.ws, self.registry)
        self.registry_reachable = not any(r.source == "last_imported" for r in refs.values())
        self.state = self._build(self.ws, refs, warnings, None)
        _write_state(self.ws, {n: m.ref for n, m in self.state.models.items()})  # served: the fallback next time
        self._live(self.state, None)
        self.last_reload = _now()
        return self.state

    @staticmethod
    def _live(new, old) -> None:
        if old is not None and hasattr(old, "retired"):
            old.retired.set()
        if hasattr(new, "go_live"):
            new.go_live()

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
        """Reload if the champions or the data changed (or ``force``); returns (reloaded, detail)."""
        with self._lock:
            self.last_check = _now()
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
            stamp = self._data_stamp(self.ws)
            models_changed = wanted != serving or any(m.ref.source != "registry" for m in current.models.values())
            data_changed = current is None or stamp != current.data_stamp
            if not (force or models_changed or data_changed):
                self.last_error = None
                return False, "champions and data unchanged"
            try:
                refs = {name: import_champion(self.ws, self.registry, mv) for name, mv in found.items()}
                started = time.perf_counter()
                new_state = self._build(self.ws, refs, [], current)
            except Exception as exc:
                self.last_error = f"reload failed, still serving the loaded versions: {type(exc).__name__}: {exc}"
                log.exception("reload failed")
                return False, self.last_error
            self.state = new_state  # the swap: one attribute assignment
            _write_state(self.ws, refs)
            self._live(new_state, current)
            self.reloads += 1
            self.last_reload = _now()
            self.last_error = None
            what = ", ".join(f"{n} v{r.version}" for n, r in refs.items())
            reason = "forced" if not (models_changed or data_changed) else ("champion changed" if models_changed else "data changed")
            log.info("reloaded (%s) in %.1f s: serving %s", reason, time.perf_counter() - started, what)
            return True, f"reloaded ({reason}): serving {what}"


# --------------------------------------------------------------------------------------------
# adapters: the served objects behind the champions
# --------------------------------------------------------------------------------------------
def _records(result) -> list[dict]:
    """A recommender answer (list of dicts or DataFrame) as a list of plain dicts."""
    if result is None:
        return []
    if hasattr(result, "to_dict"):
        return result.to_dict("records")
    return list(result)


def _plain_item(it: dict) -> dict:
    from serving.store import plain

    out = {"item_id": str(it["item_id"]), "score": plain(it.get("score")), "source": str(it.get("source", "model"))}
    for extra in ("support", "confidence", "lift"):
        if extra in it:
            out[extra] = plain(it[extra])
    if out["score"] is None and "confidence" in it:
        out["score"] = out.get("confidence")
    return out


class _Lists:
    """A bounded cache of top-``MAX_K`` answers in compact arrays (item column, score, source code).

    Answers of one state never change (the model is frozen), so a customer's list is computed once
    with ``k = MAX_K`` and later requests take a prefix (``recommend_one`` ranks with a stable sort
    and appends fallbacks after, so the top ``k`` is the prefix of the top ``MAX_K``). About 1 KB
    per entry; the oldest entries go first when full. Belongs to one state: a reload starts empty.
    """

    def __init__(self, item_ids, max_entries: int):
        from collections import OrderedDict

        self._ids = item_ids  # numpy object array: column -> item id
        self._index = {str(x): i for i, x in enumerate(item_ids)}
        self._sources: list[str] = []
        self._codes: dict[str, int] = {}
        self._data: "OrderedDict[Any, tuple]" = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key, k: int) -> list[dict] | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
        cols, scores, codes, extras = entry
        n = min(k, len(cols))
        ids, src = self._ids, self._sources
        out = [
            {"item_id": str(ids[c]), "score": float(sc), "source": src[code]}
            for c, sc, code in zip(cols[:n].tolist(), scores[:n].tolist(), codes[:n].tolist())
        ]
        if extras is not None:
            for item, row in zip(out, extras[:n].tolist()):
                item["support"], item["confidence"], item["lift"] = row
        return out

    def put(self, key, items: list[dict]) -> None:
        import numpy as np

        if self.max_entries <= 0:
            return
        try:
            cols = np.fromiter((self._index[it["item_id"]] for it in items), dtype=np.int32, count=len(items))
        except KeyError:  # an item outside the model's catalogue: do not cache
            return
        codes = np.empty(len(items), dtype=np.uint8)
        with self._lock:
            for n, it in enumerate(items):
                code = self._codes.get(it["source"])
                if code is None:
                    if len(self._sources) >= 255:
                        return
                    code = self._codes[it["source"]] = len(self._sources)
                    self._sources.append(it["source"])
                codes[n] = code
        scores = np.array([np.nan if it.get("score") is None else it["score"] for it in items], dtype=np.float32)
        extras = None
        if items and "confidence" in items[0]:
            extras = np.array([[it.get("support"), it.get("confidence"), it.get("lift")] for it in items], dtype=np.float32)
        with self._lock:
            self._data[key] = (cols, scores, codes, extras)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def info(self) -> dict:
        return {"entries": len(self._data), "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses}


def _cache_size() -> int:
    try:
        return max(0, int(os.environ.get("CRMML_REC_CACHE", "50000")))
    except ValueError:
        return 50000


class RecommenderAdapter:
    """Per-request calls into the champion ``training.recommender.Recommender``.

    Known customers go through ``recommend_one`` (the fast per-user path); unknown ones get its
    cold-start fallback and the answer is flagged ``cold_start``. Unknown items (not in the model's
    catalogue) give None, which the service answers with 404. Unfiltered answers of known customers
    and items are cached per state (``CRMML_REC_CACHE`` entries, default 50,000; 0 turns it off).
    """

    MAX_K = 100

    def __init__(self, rec: Any, cache_size: int | None = None):
        self.rec = rec
        state = getattr(rec, "state_", None)
        matrix = getattr(state, "matrix", None)
        self._users = getattr(matrix, "user_index", None) or {}
        self._items = getattr(rec, "item_index_", None) or {}
        item_ids = getattr(rec, "item_ids_", None)
        size = _cache_size() if cache_size is None else cache_size
        self.cache = _Lists(item_ids if item_ids is not None else [], size if item_ids is not None else 0)
        self.warm_done = False
        self.warm_total = 0
        self.warm_seconds: float | None = None

    def cache_info(self) -> dict:
        return {**self.cache.info(), "warm_done": self.warm_done, "warmed": self.warm_total,
                "warm_seconds": self.warm_seconds}

    @property
    def n_items(self) -> int:
        return len(self._items)

    @property
    def n_users(self) -> int:
        return len(self._users)

    def knows_item(self, item_id: str) -> bool:
        return item_id in self._items

    def _cached(self, key, k: int, compute: Callable[[int], Any]) -> list[dict]:
        hit = self.cache.get(key, k)
        if hit is not None:
            return hit
        items = [_plain_item(it) for it in _records(compute(self.MAX_K))]
        self.cache.put(key, items)
        return items[:k]

    def for_customer(self, customer_id: str, k: int, exclude_seen: bool, filters: dict | None) -> tuple[list[dict], bool]:
        cold = customer_id not in self._users
        if cold or filters:
            items = self.rec.recommend_one(customer_id, k=k, exclude_seen=exclude_seen, filters=filters or None)
            return [_plain_item(it) for it in _records(items)], cold
        compute = lambda kk: self.rec.recommend_one(customer_id, k=kk, exclude_seen=exclude_seen)  # noqa: E731
        return self._cached(("u", customer_id, bool(exclude_seen)), k, compute), False

    def for_basket(self, item_ids: list[str], k: int, filters: dict | None) -> tuple[list[dict], bool, list[str]]:
        unknown = [i for i in dict.fromkeys(item_ids) if i not in self._items]
        known = [i for i in item_ids if i in self._items]
        items = self.rec.recommend_for_items(known or item_ids, k=k, filters=filters or None)
        return [_plain_item(it) for it in _records(items)], not known, unknown

    def similar(self, item_id: str, k: int) -> list[dict] | None:
        if item_id not in self._items:
            return None
        return self._cached(("s", item_id), k, lambda kk: self.rec.similar_items(item_id, k=kk))

    def bought_together(self, item_id: str, k: int) -> list[dict] | None:
        if item_id not in self._items:
            return None
        return self._cached(("b", item_id), k, lambda kk: self.rec.bought_together(item_id, k=kk))

    def warm(self, customer_ids, stop: threading.Event) -> None:
        """Fill the cache for these customers (most likely visitors first) until full or ``stop``.

        Runs in a background thread after a state goes live, so that page views of known customers
        are lookups from the start; requests keep being answered meanwhile (a miss computes itself).
        """
        started = time.perf_counter()
        self.warm_total = 0
        for cid in customer_ids:
            if stop.is_set() or len(self.cache._data) >= self.cache.max_entries:
                break
            if cid not in self._users:
                continue
            try:
                self.for_customer(cid, self.MAX_K, True, None)
            except Exception as exc:  # one customer failing must not stop the rest
                log.warning("warm-up: a recommendation failed: %s", type(exc).__name__)
            self.warm_total += 1
            time.sleep(0)  # let request threads and the event loop in
        self.warm_seconds = round(time.perf_counter() - started, 1)

    def smoke(self) -> None:
        """Call every route's code path once (known and unknown customer, an item, a basket).

        A model that cannot answer (e.g. pickled by a different version of the code) fails here, at
        load, instead of answering 500 later: start-up refuses, a reload keeps the old state.
        """
        user = next(iter(self._users), None)
        item = next(iter(self._items), None)
        if user is not None:
            self.rec.recommend_one(user, k=3, exclude_seen=True)
        self.rec.recommend_one("__crmml_smoke_unknown__", k=3)
        if item is not None:
            self.rec.recommend_for_items([item], k=3)
            self.rec.similar_items(item, k=3)
            self.rec.bought_together(item, k=3)


def score_all(churn: LoadedModel, data) -> Any:
    """Churn scores with reasons for every customer of ``data`` in one vectorised batch.

    ``training.churn.score_customers`` scores the features of every customer seen before the as-of
    date (``prepare_frame(..., include_ineligible=True)``) with the champion's ``ChurnModel``. The
    nightly batch output (``outputs/scores``) is not reused: it covers eligible customers only and
    may come from another champion; the service answers for every customer it knows.
    """
    from training.churn import score_customers

    model = churn.impl
    frame = data.scoring_frame(int(getattr(model, "horizon_days", 90) or 90))
    return score_customers(model, frame, data.clv)


# --------------------------------------------------------------------------------------------
# the served state
# --------------------------------------------------------------------------------------------
@dataclass
class ServingState:
    """Everything one request needs; built whole and never changed after (readers keep a reference)."""

    models: dict[str, LoadedModel]
    store: Any  # serving.store.OnlineStore
    rec: RecommenderAdapter
    data: Any  # serving.store.CustomerData (kept to reuse on a model-only reload)
    as_of: str
    data_stamp: tuple
    loaded_at: str
    load_seconds: float
    warnings: list[str]
    warm_order: list = field(default_factory=list)  # known customers, most recent buyers first
    retired: threading.Event = field(default_factory=threading.Event)  # set when replaced

    def go_live(self) -> None:
        """Start warming the recommendation cache (``CRMML_REC_WARM=0`` turns it off), then freeze the heap."""
        if os.environ.get("CRMML_REC_WARM", "1") in ("0", "false", "off") or not self.warm_order:
            self.rec.warm_done = True
            freeze_heap()
            return

        def warm_then_freeze():
            self.rec.warm(self.warm_order, self.retired)
            if not self.retired.is_set():
                freeze_heap()  # its one full collection pauses requests: before "done", not during traffic
            self.rec.warm_done = True

        threading.Thread(target=warm_then_freeze, name="crmml-warm", daemon=True).start()


def freeze_heap() -> None:
    """Move every object alive now (models, online data, libraries) out of the cyclic GC's reach.

    The worker holds millions of long-lived objects (MLflow, pandas, LightGBM, the state); a full
    collection over them stalls every request for hundreds of milliseconds, which is what the p99
    showed. ``gc.freeze()`` puts them in the permanent generation: later collections only look at
    new objects. Before freezing, the previous freeze is undone and a full collection runs, so the
    cyclic garbage of a replaced state is still reclaimed (one pause per reload, not per request).
    ``CRMML_GC_FREEZE=0`` turns this off.
    """
    import gc

    if os.environ.get("CRMML_GC_FREEZE", "1") in ("0", "false", "off"):
        return
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info("heap frozen: %d objects in %.2f s", gc.get_freeze_count(), time.perf_counter() - started)


def _warm_order(c360) -> list:
    if c360 is None or "customer_id" not in c360.columns:
        return []
    if "recency_days" in c360.columns:
        c360 = c360.sort_values("recency_days", kind="stable", na_position="last")
    return c360["customer_id"].astype(str).tolist()


def build_state(ws: Workspace, refs: dict[str, ChampionRef], warnings: list[str], previous: ServingState | None) -> ServingState:
    """Load models (reusing unchanged ones), online data (reused if unchanged) and encode the store."""
    from serving import store as st

    started = time.perf_counter()
    models: dict[str, LoadedModel] = {}
    for name, ref in refs.items():
        old = previous.models.get(name) if previous is not None else None
        if old is not None and old.ref.bentoml_tag == ref.bentoml_tag:
            models[name] = LoadedModel(ref=ref, pyfunc=old.pyfunc, impl=old.impl)
        else:
            models[name] = load_champion(ref)
    stamp = st.data_stamp(ws)
    if previous is not None and previous.data_stamp == stamp:
        data = previous.data
    else:
        data = st.load_customer_data(ws)
        stamp = data.stamp
    same_churn = previous is not None and previous.models[CHURN].ref.bentoml_tag == refs[CHURN].bentoml_tag
    if same_churn and data is previous.data and previous.models[CHURN].ref.version == refs[CHURN].version:
        store = previous.store
    else:
        scores = score_all(models[CHURN], data)
        store = st.build_customer_store(scores, data.c360, refs[CHURN].version, data.as_of_str)
    same_rec = previous is not None and previous.models[RECOMMENDER].ref.bentoml_tag == refs[RECOMMENDER].bentoml_tag
    rec = previous.rec if same_rec else RecommenderAdapter(models[RECOMMENDER].impl)  # keeps its cache
    try:
        if not same_rec:
            rec.smoke()
    except Exception as exc:
        raise RuntimeError(
            f"{refs[RECOMMENDER].name} v{refs[RECOMMENDER].version} cannot answer requests "
            f"({type(exc).__name__}: {exc}); not serving it"
        ) from exc
    return ServingState(
        models=models,
        store=store,
        rec=rec,
        data=data,
        as_of=data.as_of_str,
        data_stamp=stamp,
        loaded_at=_now(),
        load_seconds=round(time.perf_counter() - started, 3),
        warnings=list(warnings),
        warm_order=_warm_order(data.c360),
    )


class ServingRuntime(Runtime):
    """The runtime of one service worker: workspace, API key, state, reload; ``metadata()`` for /metadata."""

    def __init__(self, ws: Workspace, api_key: str | None, poll_seconds: float | None = None):
        from serving.store import data_stamp

        super().__init__(ws, build_state, data_stamp, poll_seconds)
        self.api_key = api_key
        self.auth = api_key is not None

    @classmethod
    def from_env(cls) -> "ServingRuntime":
        from serving.service import auth_config

        key, _ = auth_config()
        return cls(Workspace(os.environ.get("CRMML_WORKSPACE") or None), key)

    def start(self) -> ServingState:
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)  # BLAS and OpenMP: one worker thread per request
        except Exception:  # pragma: no cover - optional
            pass
        started = time.perf_counter()
        state = super().start()
        what = ", ".join(f"{n} v{m.ref.version} ({m.ref.source})" for n, m in state.models.items())
        log.info("serving %s; %d customers as of %s; loaded in %.1f s", what, len(state.store), state.as_of,
                 time.perf_counter() - started)
        return state

    def metadata(self, state: ServingState) -> dict:
        from serving.store import risk_tier_counts

        models = {}
        for name, m in state.models.items():
            r = m.ref
            models[name] = {
                "name": r.name, "version": r.version, "alias": CHAMPION, "run_id": r.run_id,
                "bentoml_tag": r.bentoml_tag, "source": r.source, "registered_at": r.registered_at,
                "metrics": r.metrics, "lineage": r.lineage,
            }
        return {
            "service": "crmml",
            "api_version": "1.0",
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
            },
            "auth": self.auth,
            "warnings": state.warnings,
        }
