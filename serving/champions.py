"""Champion models for serving: resolve them in MLflow, import them into BentoML, load them.

Start-up (and every reload) goes through :func:`resolve_champions`:

1. **Registry.** ``crmml-churn@champion`` and ``crmml-recommender@champion`` are resolved in the
   workspace's MLflow registry (``training.registry.tracking_uri``: ``$MLFLOW_TRACKING_URI`` or
   ``<workspace>/mlflow.db``). Each champion is imported into the BentoML model store as
   ``<name>:v<registry version>-<run id prefix>`` (``bentoml.mlflow.import_model`` from
   ``models:/<name>/<version>``), labelled with the registry version, run id and workspace; an
   existing import of the same version is reused. The tags actually served (after a successful
   load) are recorded in ``$BENTOML_HOME/crmml_serving.json`` (:func:`record_served`).
2. **Registry unreachable** (HTTP server down, SQLite file missing or unreadable): each model falls
   back to the last imported version of this workspace (the one recorded in
   ``crmml_serving.json``, else the newest import with this workspace's label), and the service
   says so (``source: last_imported`` in ``/metadata`` and a warning in the log).
3. **Nothing to serve** (no champion in a reachable registry, or registry unreachable and no
   earlier import): :class:`NoModelError` with a message that says what to do; the service
   refuses to start.

Only an alias ``champion`` is ever served: a challenger or a bare version never is.

Loading: :func:`load_champion` loads the imported MLflow pyfunc from the BentoML store and takes
the crmml estimator out of its wrapper (``ChurnModel`` from ``ChurnPyfunc``, ``Recommender`` from
``RecommenderPyfunc``) so that requests call plain numpy code, never the pyfunc wrapper (STACK.md:
the wrapper costs ~15 ms per call). Model files that cannot be loaded raise :class:`ModelLoadError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from features.numeric import finite_or_none
from features.workspace import Workspace, atomic_write
from training.grade import GRADE_TAG, is_grade
from training.names import CHAMPION, CHURN, MODEL_NAMES, RECOMMENDER
from training.registry import CONTENT_HASH_TAG, content_sha256, model_content_sha256, tracking_uri

log = logging.getLogger("crmml.serving")

#: written by :func:`record_served` in ``$BENTOML_HOME``: the tags each workspace served last
STATE_FILE = "crmml_serving.json"


class NoModelError(RuntimeError):
    """Nothing can be served: no champion in the registry and no earlier import to fall back on."""


class RegistryUnavailable(RuntimeError):
    """The MLflow registry cannot be reached or read."""


class ModelLoadError(RuntimeError):
    """A champion's files in the BentoML store cannot be loaded (truncated, corrupt, wrong code version)."""


class ModelIntegrityError(ModelLoadError):
    """A champion's files do not hash to the ``content_sha256`` recorded at registration, or cannot be read."""


def now() -> str:
    """The current UTC time as ISO seconds (timestamps in ``/metadata`` and the state file)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
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

    def reopen(self) -> None:
        """Close the pooled SQLite connections of this store: the next query opens the file anew.

        MLflow caches one SQLAlchemy engine per database URI for the life of the process, and its
        pooled connections keep the file they opened: a ``mlflow.db`` replaced on disk (restored
        from a backup) would never be seen, the deleted file being still read. Disposing the
        engines (idle connections only; a query in flight keeps its own) costs well under a ms.
        """
        if not self.uri.lower().startswith("sqlite:"):
            return
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        for store in (TrackingStore, RegistryStore):
            engine = getattr(store, "_engine_map", {}).get(self.uri)
            if engine is not None:
                engine.dispose()

    def champions(self, names=MODEL_NAMES) -> dict[str, Any | None]:
        """``{name: ModelVersion or None}`` for the ``champion`` alias; RegistryUnavailable on failure.

        The store is re-opened first (:meth:`reopen`): every check reads the file now on disk.
        """
        from mlflow.exceptions import MlflowException

        _probe(self.uri)
        self.reopen()
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
    content_sha256: str | None = None  # recorded at registration (or at import for older versions)
    metrics: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    grade: str | None = None  # the version's tag training.grade.GRADE_TAG (A/B/C), None when ungraded

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.name, self.version, self.run_id)


def bentoml_tag(name: str, version: str, run_id: str | None) -> str:
    suffix = f"-{run_id[:12].lower()}" if run_id else ""
    return f"{name}:v{version}{suffix}"


def _ref_from_bento(model, source: str) -> ChampionRef:
    labels = dict(model.info.labels or {})
    meta = dict(model.info.metadata or {})
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if finite_or_none(v) is not None}
    return ChampionRef(
        name=labels.get("registered_model", model.tag.name),
        version=labels.get("registry_version", "?"),
        run_id=labels.get("run_id") or None,
        bentoml_tag=str(model.tag),
        source=source,
        registered_at=meta.get("registered_at"),
        content_sha256=meta.get(CONTENT_HASH_TAG) or None,
        metrics={k: float(v) for k, v in metrics.items()},
        lineage={str(k): str(v) for k, v in (meta.get("lineage") or {}).items()},
        grade=meta.get("grade") if is_grade(meta.get("grade")) else None,
    )


def _state_path() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get()) / STATE_FILE


def _read_state() -> dict:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return {}


def record_served(ws: Workspace, refs: dict[str, ChampionRef]) -> None:
    """Record the tags now served for this workspace: the fallback when the registry is down later."""
    state = _read_state()
    state[workspace_label(ws)] = {
        "workspace": str(ws.root),
        "updated_at": now(),
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
    tags = dict(mv.tags or {})
    registered_hash = tags.get(CONTENT_HASH_TAG) or None
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        registry.client()  # sets the global MLflow URIs that models:/ downloads use
        metrics = {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.") and finite_or_none(v) is not None}
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
        expected = registered_hash
        if expected is None:  # registered before crmml recorded hashes: pin what MLflow holds now
            log.warning("%s v%s has no %s tag (registered by an older crmml): hashing it at import",
                        name, version, CONTENT_HASH_TAG)
            expected = model_content_sha256(f"models:/{name}/{version}")
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
                CONTENT_HASH_TAG: expected,
                # BentoML metadata takes no None: an ungraded version has no entry
                **({"grade": tags[GRADE_TAG]} if is_grade(tags.get(GRADE_TAG)) else {}),
            },
        )
        ref = _ref_from_bento(model, "registry")
        try:
            verify(ref, model)
        except ModelIntegrityError:
            # never leave a copy that does not match in the store: the next start would find it
            bentoml.models.delete(tag)
            raise
        return ref
    ref = _ref_from_bento(model, "registry")
    if registered_hash is not None and ref.content_sha256 != registered_hash:
        raise ModelIntegrityError(
            f"{name} v{version} ({tag}): the BentoML copy was imported with content hash "
            f"{str(ref.content_sha256)[:12]}, the registry records {registered_hash[:12]}; not serving it "
            f"(`bentoml models delete {tag}` to import it again)"
        )
    verify(ref, model)  # an earlier import: its files may have changed on disk since
    return ref


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
def _estimator_types() -> dict[str, tuple[type, type]]:
    """Per model name: (the pyfunc wrapper class it is logged with, the crmml estimator inside)."""
    from training.churn import ChurnModel
    from training.churn_pyfunc import ChurnPyfunc
    from training.recommender import Recommender
    from training.recommender_pyfunc import RecommenderPyfunc

    return {CHURN: (ChurnPyfunc, ChurnModel), RECOMMENDER: (RecommenderPyfunc, Recommender)}


def unwrap(name: str, pyfunc) -> Any:
    """The crmml estimator behind the MLflow pyfunc of model ``name`` (its wrapper's ``model``).

    Each registered model is logged with one wrapper (``training.churn_pyfunc.ChurnPyfunc``,
    ``training.recommender_pyfunc.RecommenderPyfunc``); anything else is a ModelLoadError.
    """
    wrapper_type, estimator_type = _estimator_types()[name]
    wrapper = pyfunc.unwrap_python_model()
    if not isinstance(wrapper, wrapper_type) or not isinstance(wrapper.model, estimator_type):
        raise ModelLoadError(
            f"{name}: expected a {wrapper_type.__name__} holding a {estimator_type.__name__}, "
            f"got {type(wrapper).__name__} holding {type(getattr(wrapper, 'model', None)).__name__}"
        )
    return wrapper.model


@dataclass
class LoadedModel:
    """A champion as served: its identity, the MLflow pyfunc and the estimator requests call."""

    ref: ChampionRef
    pyfunc: Any
    impl: Any


def verify(ref: ChampionRef, model=None) -> None:
    """Check that ``ref``'s files in the BentoML store hash to its recorded ``content_sha256``.

    Runs before anything is unpickled (a changed pickle is code). ModelIntegrityError naming the
    model, both hashes and the folder on a mismatch or an unreadable file. A ref without a recorded
    hash (imported by an older crmml) is not verified: a warning says so.
    """
    import bentoml

    from _bentoml_impl.frameworks.mlflow import MLFLOW_MODEL_FOLDER

    try:
        model = model or bentoml.models.get(ref.bentoml_tag)
        folder = model.path_of(MLFLOW_MODEL_FOLDER)
        if ref.content_sha256 is None:
            log.warning("%s v%s (%s): no content hash recorded at import; files not verified",
                        ref.name, ref.version, ref.bentoml_tag)
            return
        actual = content_sha256(folder)
    except Exception as exc:  # OSError (unreadable, missing), BentoML's NotFound...
        raise ModelIntegrityError(
            f"{ref.name} v{ref.version} ({ref.bentoml_tag}): the model files cannot be read: {describe(exc)}"
        ) from exc
    if actual != ref.content_sha256:
        raise ModelIntegrityError(
            f"{ref.name} v{ref.version} ({ref.bentoml_tag}): content hash mismatch: the files in {folder} hash "
            f"{actual[:12]}, registered {ref.content_sha256[:12]} (changed or truncated); not serving them "
            f"(`bentoml models delete {ref.bentoml_tag}` to import the version again from MLflow)"
        )


def load_champion(ref: ChampionRef) -> LoadedModel:
    """Verify and load ``ref`` from the BentoML store; ModelLoadError (naming the model and the cause) if it cannot be."""
    import bentoml

    verify(ref)
    try:
        pyfunc = bentoml.mlflow.load_model(ref.bentoml_tag)
        impl = unwrap(ref.name, pyfunc)
    except ModelLoadError:
        raise
    except Exception as exc:  # truncated pickle (EOFError), missing file, code that changed...
        raise ModelLoadError(
            f"{ref.name} v{ref.version} ({ref.bentoml_tag}): the model files cannot be loaded: "
            f"{describe(exc)}"
        ) from exc
    return LoadedModel(ref=ref, pyfunc=pyfunc, impl=impl)


def describe(exc: BaseException) -> str:
    """One line naming an error: its type and message (never empty, e.g. for a bare ``EOFError()``)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
