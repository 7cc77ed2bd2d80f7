"""MLflow tracking, the model registry and the promotion gate.

Store
    ``tracking_uri(ws)`` is ``ws.mlflow_uri``: ``$MLFLOW_TRACKING_URI`` when set, else the absolute
    SQLite file ``<workspace>/mlflow.db``; artifacts of experiments created here go to
    ``<workspace>/mlartifacts/<experiment>``. ``configure(ws)`` points MLflow's tracking *and*
    registry at it and sets ``MLFLOW_DISABLE_TELEMETRY=true``. ``mlflow/server.sh`` serves the same
    store (UI + REST) on 127.0.0.1.

Training (what the churn and recommender trainers call)::

    from training import registry

    with registry.training_run(ws, registry.CHURN, params={...},
                               lineage={"cutoff": "2011-09-01", "horizon_days": 90},
                               feature_docs=[{"name": ..., "meaning": ..., "window": ...}]) as run:
        ...train...
        run.log_metrics({"auc": 0.81, "brier": 0.12})                # model
        run.log_metrics({"auc": 0.66}, prefix="baseline.recency")     # baselines
        run.log_figure(fig, "roc.png")                                # -> plots/roc.png
        run.log_artifact(report_path, "report")                       # the evaluation report
        info = mlflow.sklearn.log_model(model, name="model", signature=sig,
                                        pip_requirements=registry.pip_requirements("scikit-learn"))
        run.register(info, {"auc": 0.81, "brier": 0.12})              # deferred, see below

    Every run records: the params; lineage (``lineage/lineage.json`` with the workspace's ingestion
    records -- sources, content hashes, row counts -- plus what the caller passes: cutoffs, horizon;
    the main figures also as ``lineage.*`` tags); the git commit (tags ``git_commit``,
    ``git_dirty``, ``mlflow.source.git.commit``; a dirty tree's diff of the code as ``code/git_diff.patch``);
    package versions (``environment/versions.json`` and a pinned ``environment/requirements.txt``);
    the feature list and its documentation (``features/features.json``).

    ``run.register(model, metrics)`` is DEFERRED: the model version is only created when the
    ``with`` block exits without an exception. It then gets the alias ``challenger`` and tags
    ``metric.<name>`` with its key metrics. If anything raises inside the block (or while
    registering), the run is marked FAILED and the registry is left exactly as it was.
    The model must carry a signature and ``metrics`` must contain the policy's primary metric.
    FIRST VERSION: when the registered model has no ``champion`` yet, the new version becomes
    champion at once (tag ``promotion=initial``, ``gate.decision=initial``) -- there is nothing to
    compare it with. Afterwards ``champion`` moves only through ``promote()`` or ``rollback()``.
    Never pass ``registered_model_name=`` to ``log_model``: that would register outside the gate.

Metric names are made MLflow-safe with ``safe_key``: ``"ndcg@10"`` is stored as ``ndcg_at_10``.

Gate
    ``POLICIES[name]`` is a ``GatePolicy``: crmml-churn: primary ``auc`` (higher is better), guard
    ``brier`` (calibration, lower is better, tolerance 0.005); crmml-recommender: primary
    ``ndcg@10``, guard ``coverage`` (higher is better, tolerance 0.02). Primary tolerance 0.001.

    ``promote(ws, name, version=None, evaluate=None, force=False, tolerance=None) -> Decision``
    compares the challenger (``version`` or the ``challenger`` alias) with the champion. With
    ``evaluate`` (a function ``model_uri -> {metric: value}``; the pipelines pass one that scores
    a model on the newest evaluation window) both are evaluated now on that same window; otherwise
    the metrics recorded at registration are compared. The challenger passes when it is at least as
    good on the primary metric within the tolerance and not worse than each guard's tolerance.
    A challenger whose version tag ``grade`` (set at registration from its rolling backtest,
    ``training.grade``) is in the policy's ``refused_grades`` (C) does not pass, with the reason first.
    ``champion`` moves only if it passed or ``force`` is set. Either way the decision and both sets
    of figures are written as tags on both versions: ``gate.*`` on the challenger
    (``gate.decision`` = promoted | forced | refused, ``gate.passed``, ``gate.forced``,
    ``gate.compared_with``, ``gate.challenger.<m>``, ``gate.champion.<m>``, ``gate.reasons``,
    ``gate.source``, ``gate.window``, ``gate.evaluated_at``) and ``challenged_by.*`` on the
    champion. The registered model keeps ``champion_history`` (JSON list, newest last) and
    ``previous_champion``; ``rollback(ws, name)`` moves ``champion`` back to the previous one and
    records it (``rolled_back_at`` / ``rolled_back_to`` on the old version, ``promotion=rollback``
    on the restored one, ``last_rollback`` on the registered model).

Reading: ``list_models(ws)`` -> rows (name, version, aliases, key metric, created, run id, gate
decision); ``compare(ws, name)`` -> champion vs challenger side by side plus what the gate would
say; ``model_uri(name, alias)`` -> ``models:/NAME@alias``. This module knows no model's code: the
evaluation function of a model is passed in by the caller (``training.promotion.gate_evaluator``).
User-facing failures (unknown model or version, nothing to roll back to) raise ``RegistryError``.

``mlflow`` is imported lazily so that importing this module stays cheap for the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from features.numeric import finite_or_none as _finite
from features.numeric import safe_key
from features.workspace import REPO_ROOT, Workspace
from training.grade import GRADE_REASON_TAG, GRADE_TAG
from training.names import CHALLENGER, CHAMPION, CHURN, EXPERIMENT, RECOMMENDER, UPLIFT


# Packages whose versions every run records (and that ``pip_requirements`` can pin).
KEY_PACKAGES = (
    "crmml", "mlflow", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "implicit",
    "threadpoolctl", "lifetimes", "ibis-framework", "duckdb", "pandera", "bentoml", "matplotlib",
)

#: model version tag written at registration: :func:`content_sha256` of the model's artifact files;
#: the service checks it when it imports, loads and reloads a champion (``serving.champions``)
CONTENT_HASH_TAG = "content_sha256"
#: files MLflow adds to a model folder when it downloads one, and Python caches: not the model
_NOT_CONTENT = frozenset({"registered_model_meta"})

#: a model URI -> its metrics (and optionally "window") on an evaluation window; see ``training.promotion``
Evaluate = Callable[[str], dict]


def content_sha256(folder: str | Path) -> str:
    """SHA-256 over a model folder: every file's relative path, size and bytes, in path order.

    Leaves out what MLflow writes into a downloaded model folder (``registered_model_meta``) and
    ``__pycache__`` folders, so an MLflow model folder and its copy in the BentoML store hash the
    same. Raises OSError when a file cannot be read.
    """
    import hashlib

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: model folder not found")
    digest = hashlib.sha256()
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name not in _NOT_CONTENT and "__pycache__" not in p.relative_to(root).parts
        and not p.name.endswith(".pyc")
    )
    for path in files:
        rel = path.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_content_sha256(uri: str) -> str:
    """:func:`content_sha256` of the model at ``uri`` (downloaded to a temporary folder)."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    # no MLflow progress bar in crmml's output (read at each download)
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tempfile.TemporaryDirectory(prefix="crmml-hash-") as tmp:
            return content_sha256(download_artifacts(artifact_uri=uri, dst_path=tmp))
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


class RegistryError(Exception):
    """A user-facing registry problem (unknown model or version, nothing to roll back to...)."""


# --------------------------------------------------------------------------------------------
# names and policies
# --------------------------------------------------------------------------------------------
_DIRECTIONS = {"higher": True, "lower": False}


@dataclass
class GatePolicy:
    """What a challenger must show: ``primary`` within ``tolerance``, no guard worse than its tolerance, and
    no grade in ``refused_grades`` (the grade of its rolling evaluation, ``training.grade``).

    ``guards`` maps a metric to ``(direction, tolerance)`` with direction ``"higher"`` or ``"lower"``
    (which way is better).
    """

    primary: str
    higher_is_better: bool = True
    tolerance: float = 0.001
    guards: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: a challenger whose version tag ``grade`` (``training.grade``) is one of these is refused unless forced
    refused_grades: tuple[str, ...] = ("C",)

    def __post_init__(self) -> None:
        for metric, (direction, tol) in self.guards.items():
            if direction not in _DIRECTIONS:
                raise ValueError(f"guard {metric!r}: direction must be 'higher' or 'lower', not {direction!r}")
            if tol < 0:
                raise ValueError(f"guard {metric!r}: tolerance must be >= 0")

    @property
    def primary_key(self) -> str:
        return safe_key(self.primary)

    def metrics(self) -> list[str]:
        """Safe keys of the primary and guard metrics, primary first."""
        return [self.primary_key] + [safe_key(m) for m in self.guards]

    def check(self, challenger: dict, champion: dict, tolerance: float | None = None) -> tuple[bool, list[str]]:
        """(passed, reasons): compare two metric dicts (safe keys) under this policy."""
        tol = self.tolerance if tolerance is None else float(tolerance)
        checks = [(self.primary_key, self.higher_is_better, tol, True)]
        checks += [(safe_key(m), _DIRECTIONS[d], float(t), False) for m, (d, t) in self.guards.items()]
        passed, reasons = True, []
        for key, higher, t, is_primary in checks:
            role = "primary" if is_primary else "guard"
            new, old = _finite(challenger.get(key)), _finite(champion.get(key))
            if new is None and old is None and not is_primary:
                reasons.append(f"{key} ({role}): recorded on neither version, skipped")
                continue
            if new is None or old is None:
                passed = False
                who = "challenger" if new is None else "champion"
                reasons.append(f"{key} ({role}): missing on the {who}, cannot compare")
                continue
            gain = (new - old) if higher else (old - new)
            ok = gain >= -t - 1e-12
            passed &= ok
            better = "higher" if higher else "lower"
            reasons.append(
                f"{key} ({role}, {better} is better): challenger {new:.4f} vs champion {old:.4f}, "
                f"change {new - old:+.4f}, tolerance {t:g}: {'ok' if ok else 'WORSE'}"
            )
        return passed, reasons


POLICIES: dict[str, GatePolicy] = {
    CHURN: GatePolicy("auc", True, 0.001, {"brier": ("lower", 0.005)}),
    RECOMMENDER: GatePolicy("ndcg@10", True, 0.001, {"coverage": ("higher", 0.02)}),
    UPLIFT: GatePolicy("auuc", True, 0.001),
}


def policy_for(name: str) -> GatePolicy:
    """The gate policy of a registered model (unknown names: primary ``auc``, no guards)."""
    return POLICIES.get(name, GatePolicy("auc"))


def _numeric(metrics: dict | None) -> dict[str, float]:
    """Safe-keyed finite floats of a metrics dict (other values dropped)."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool):
            continue
        number = _finite(value)
        if number is not None:
            out[safe_key(key)] = number
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# store
# --------------------------------------------------------------------------------------------
def _ws(workspace: Workspace | str | Path | None) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def tracking_uri(workspace: Workspace | str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` or the workspace's absolute ``sqlite:////.../mlflow.db``."""
    uri = _ws(workspace).mlflow_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"  # relative path -> absolute
    return uri


def _is_local(uri: str) -> bool:
    return not uri.split(":", 1)[0] in ("http", "https", "databricks", "databricks-uc", "uc")


def configure(workspace: Workspace | str | Path | None = None) -> str:
    """Point MLflow tracking and registry at the workspace store; returns the URI."""
    import mlflow

    ws = _ws(workspace)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(ws)
    if _is_local(uri):
        ws.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    # mlflow.set_tracking_uri copies the URI into $MLFLOW_TRACKING_URI (for subprocesses). Put the
    # variable back as it was: otherwise it would read as a user override for the next workspace.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    return uri


def client(workspace: Workspace | str | Path | None = None):
    """An ``MlflowClient`` on the workspace store (tracking and registry)."""
    from mlflow import MlflowClient

    uri = configure(workspace)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(workspace: Workspace | str | Path | None = None, name: str = EXPERIMENT) -> str:
    """The id of experiment ``name``, created with artifacts under ``<workspace>/mlartifacts/<name>``."""
    from mlflow.exceptions import MlflowException

    ws = _ws(workspace)
    mlc = client(ws)
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (ws.mlflow_artifacts / name).as_uri() if _is_local(tracking_uri(ws)) else None
    try:
        return mlc.create_experiment(name, artifact_location=location, tags={"project": "crmml"})
    except MlflowException:  # created concurrently
        found = mlc.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def model_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"


# --------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        # fixed argv, no shell; `git` from PATH on purpose (whichever git the user runs)
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)  # noqa: S603, S607
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_info() -> dict:
    """commit, dirty flag and branch of the code in REPO_ROOT (``unknown`` outside git / before a commit)."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or "unknown"
    status = _git("status", "--porcelain")
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or "unknown"
    changed = [line for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit, "dirty": status is None or bool(changed), "branch": branch, "changed_files": len(changed)}


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in KEY_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return versions


#: the packages a logged pyfunc model imports; MLflow copies them next to the model (``code_paths``)
MODEL_CODE_PACKAGES = ("training", "features")

#: what of a dirty tree's diff a run keeps (``code/git_diff.patch``): the code, never the data or
#: anything else a user keeps in the checkout (a tracked file may hold customers' rows)
CODE_DIFF_PATHS = ("*.py", "pyproject.toml", "constraints.txt", "Makefile", "mlflow/*", "features/mappings/*")


def log_joblib_pyfunc(
    python_model: Any, artifact: str, obj: Any, *, name: str, signature: Any, input_example: Any, packages: tuple
):
    """Log ``obj`` (joblib-dumped as artifact ``artifact``) behind ``python_model`` in the active run.

    The one way every crmml model is logged: the model's own code travels with it
    (:data:`MODEL_CODE_PACKAGES`), requirements are pinned (:func:`pip_requirements`), and the
    signature and input example are the caller's (made up, never customers' rows). Returns the ModelInfo.
    """
    import tempfile

    import joblib
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{artifact}.joblib"
        joblib.dump(obj, path)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts={artifact: str(path)},
            code_paths=[str(REPO_ROOT / package) for package in MODEL_CODE_PACKAGES],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(*packages),
        )


def pip_requirements(*packages: str) -> list[str]:
    """Pinned requirements (``pkg==version``) of installed packages, for ``log_model(pip_requirements=...)``.

    Explicit requirements skip MLflow's slow inference. Unknown packages are left unpinned.
    """
    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(pkg)
    return out


def _lineage_tags(lineage: dict) -> dict[str, str]:
    tags = {}
    for key, value in lineage.items():
        if key in ("ingestions",):
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            tags[f"lineage.{safe_key(key)}"] = str(value)[:5000]
        elif isinstance(value, (list, tuple)) and len(json.dumps(value, default=str)) <= 500:
            tags[f"lineage.{safe_key(key)}"] = json.dumps(value, default=str)
    records = lineage.get("ingestions") or []
    tags["lineage.ingestions"] = str(len(records))
    summary = []
    for rec in records:
        if not isinstance(rec, dict):
            continue
        source = rec.get("source") or rec.get("name") or "?"
        when = rec.get("ingested_at", "")
        rows = rec.get("rows", rec.get("row_count", rec.get("counts", "")))
        hashes = [v for k, v in _walk(rec) if "hash" in k.lower() or "sha" in k.lower()]
        short = ",".join(str(h)[:12] for h in hashes[:8])
        summary.append(f"{source}@{when} rows={json.dumps(rows, default=str)} sha256={short}")
    if summary:
        tags["lineage.ingestion_summary"] = " | ".join(summary)[-5000:]
    return tags


def _walk(obj: Any, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


# --------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------
class TrainingRun:
    """Handle yielded by ``training_run``: log to the active MLflow run, register at a clean exit."""

    def __init__(self, workspace: Workspace, model_name: str, run):
        self.workspace = workspace
        self.model_name = model_name
        self.run = run
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.policy = policy_for(model_name)
        self._pending: tuple[str, dict[str, float]] | None = None
        self._version_tags: dict[str, str] = {}
        self._fingerprint: str | None = None
        self.model_version: str | None = None  # set after a successful registration

    # -- logging ------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        import mlflow

        items = {safe_key(k): ("" if v is None else str(v)[:6000]) for k, v in (params or {}).items()}
        keys = list(items)
        for i in range(0, len(keys), 100):
            mlflow.log_params({k: items[k] for k in keys[i:i + 100]})

    def log_metrics(self, metrics: dict, prefix: str = "", step: int | None = None) -> None:
        """Log finite numeric metrics; keys are made safe and prefixed (``baseline.recency.auc``)."""
        import mlflow

        values = _numeric(metrics)
        if prefix:
            values = {f"{safe_key(prefix).rstrip('.')}.{k}": v for k, v in values.items()}
        if values:
            mlflow.log_metrics(values, step=step)

    def log_figure(self, fig, path: str) -> None:
        """Log a matplotlib/plotly figure; a bare file name goes under ``plots/``."""
        import mlflow

        mlflow.log_figure(fig, path if "/" in path else f"plots/{path}")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(json.dumps(obj, indent=2, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        import mlflow

        mlflow.log_text(text, artifact_file)

    def set_tags(self, tags: dict) -> None:
        import mlflow

        mlflow.set_tags({safe_key(k): str(v)[:5000] for k, v in tags.items()})

    # -- registration -------------------------------------------------------------------------
    def register(self, model, metrics: dict, tags: dict | None = None) -> None:
        """Queue ``model`` (a ``ModelInfo`` from ``log_model`` or a model URI) for registration.

        The version is created when the ``with`` block exits cleanly; ``metrics`` (must include the
        primary metric) become its ``metric.*`` tags, ``tags`` (e.g. the grade of a rolling
        evaluation, ``training.rolling.grade_tags``) further tags of the version. Raises now if the
        model has no signature.
        """
        from mlflow.models import get_model_info

        if self._pending is not None:
            raise ValueError("register() was already called in this run")
        uri = getattr(model, "model_uri", model)
        if not isinstance(uri, str):
            raise TypeError(f"register() takes a ModelInfo or a model URI, not {type(model).__name__}")
        signature = getattr(model, "signature", None) if not isinstance(model, str) else get_model_info(uri).signature
        if signature is None:
            raise ValueError(f"{uri}: the model has no signature; pass signature= to log_model")
        values = _numeric(metrics)
        if self.policy.primary_key not in values:
            raise ValueError(
                f"register() needs the primary metric {self.policy.primary!r} of {self.model_name}; got {sorted(values)}"
            )
        self._pending = (uri, values)
        self._version_tags = {str(k): str(v)[:5000] for k, v in (tags or {}).items()}

    def _context(self, params: dict | None, lineage: dict | None, feature_docs: list[dict] | None) -> None:
        import mlflow

        ws = self.workspace
        git = git_info()
        versions = package_versions()
        self.log_params(params or {})
        full_lineage = {
            "workspace": str(ws.root),
            "ingestions": ws.ingestions(),
            **(lineage or {}),
        }
        if "data_fingerprint" not in full_lineage and ws.data_dir.exists():
            full_lineage["data_fingerprint"] = ws.data_fingerprint()
        full_lineage["git"] = git
        self._fingerprint = full_lineage.get("data_fingerprint")
        self.log_dict(full_lineage, "lineage/lineage.json")
        tags = {
            "model_name": self.model_name,
            "git_commit": git["commit"],
            "git_dirty": str(git["dirty"]).lower(),
            "git_branch": git["branch"],
            "mlflow.source.git.commit": git["commit"],
            "python": versions["python"],
            **_lineage_tags(full_lineage),
        }
        mlflow.set_tags(tags)
        if git["dirty"]:
            diff = _git("diff", "HEAD", "--", *CODE_DIFF_PATHS)
            if diff:
                mlflow.log_text(diff[: 2 << 20], "code/git_diff.patch")
        self.log_dict(versions, "environment/versions.json")
        reqs = [f"{k}=={v}" for k, v in versions.items() if k not in ("python", "platform")]
        mlflow.log_text("\n".join(reqs) + "\n", "environment/requirements.txt")
        if feature_docs is not None:
            docs = [d if isinstance(d, dict) else {"name": str(d)} for d in feature_docs]
            self.log_dict({"n_features": len(docs), "features": docs}, "features/features.json")
            mlflow.log_text("\n".join(str(d.get("name", "")) for d in docs) + "\n", "features/feature_list.txt")
            mlflow.set_tag("n_features", str(len(docs)))

    def _finish(self) -> str | None:
        """Create the queued model version; on any failure undo it and re-raise."""
        import mlflow

        if self._pending is None:
            mlflow.set_tag("crmml.registered", "false")
            return None
        uri, metrics = self._pending
        name = self.model_name
        mlc = client(self.workspace)
        before = _snapshot(mlc, name)
        version = None
        try:
            if before is None:
                mlc.create_registered_model(
                    name, tags={"project": "crmml"}, description=f"crmml model {name}; aliases champion/challenger"
                )
            git = git_info()
            tags = {f"metric.{k}": repr(v) for k, v in metrics.items()}
            tags.update(self._version_tags)
            tags.update(
                {
                    "run_id": self.run_id,
                    "git_commit": git["commit"],
                    "primary_metric": self.policy.primary_key,
                    "registered_at": _now(),
                }
            )
            if self._fingerprint:
                tags["data_fingerprint"] = str(self._fingerprint)
            # what the service verifies before it serves this version (import, load, reload)
            tags[CONTENT_HASH_TAG] = model_content_sha256(uri)
            # MLflow prints "already exists" (the model was created above on purpose) and "Created
            # version" on its event stream; crmml reports the version itself
            from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

            stream_on, MLFLOW_LOGGING_STREAM.enabled = MLFLOW_LOGGING_STREAM.enabled, False
            try:
                mv = mlflow.register_model(uri, name, tags=tags, await_registration_for=60)
            finally:
                MLFLOW_LOGGING_STREAM.enabled = stream_on
            version = str(mv.version)
            champion = alias_version(mlc, name, CHAMPION)
            if champion is None:
                for key, value in {
                    "promotion": "initial",
                    "gate.decision": "initial",
                    "gate.reasons": "first version: no champion to compare with",
                    "promoted_at": _now(),
                }.items():
                    mlc.set_model_version_tag(name, version, key, value)
                mlc.set_registered_model_alias(name, CHAMPION, version)
                _push_history(mlc, name, version)
            else:
                mlc.set_model_version_tag(name, version, "gate.decision", "pending")
                mlc.set_registered_model_alias(name, CHALLENGER, version)
            mlflow.set_tags({"crmml.registered": "true", "crmml.model_version": version, "crmml.registered_model": name})
        except BaseException:
            _undo(mlc, name, before, version)
            raise
        self.model_version = version
        return version


@contextlib.contextmanager
def training_run(
    workspace: Workspace | str | Path | None,
    model_name: str,
    params: dict | None = None,
    lineage: dict | None = None,
    feature_docs: list[dict] | None = None,
    *,
    experiment: str = EXPERIMENT,
    run_name: str | None = None,
    tags: dict | None = None,
) -> Iterator[TrainingRun]:
    """A tracked training run; see the module docstring. Fails -> run FAILED, registry untouched."""
    import mlflow

    ws = _ws(workspace)
    exp_id = ensure_experiment(ws, experiment)
    run_name = run_name or f"{model_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run = mlflow.start_run(
        experiment_id=exp_id,
        run_name=run_name,
        nested=mlflow.active_run() is not None,
        tags={"model_name": model_name, **{safe_key(k): str(v) for k, v in (tags or {}).items()}},
    )
    handle = TrainingRun(ws, model_name, run)
    try:
        handle._context(params, lineage, feature_docs)
        yield handle
        handle._finish()
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) else "FAILED"
        with contextlib.suppress(Exception):
            mlflow.set_tags({"crmml.registered": "false", "crmml.error": f"{type(exc).__name__}: {exc}"[:5000]})
        with contextlib.suppress(Exception):  # never hide the original error behind a store error
            mlflow.end_run(status=status)
        raise
    mlflow.end_run(status="FINISHED")


# --------------------------------------------------------------------------------------------
# registry helpers
# --------------------------------------------------------------------------------------------
def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def _registered_model(mlc, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    known = sorted(m.name for m in mlc.search_registered_models())
    raise RegistryError(f"no registered model {name!r}; known: {', '.join(known) or 'none'}")


def _version(mlc, name: str, version: str | int):
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    versions = sorted(int(v.version) for v in mlc.search_model_versions(f"name='{name}'"))
    raise RegistryError(f"{name} has no version {version}; versions: {', '.join(map(str, versions)) or 'none'}")


def alias_version(mlc, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlc.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if _not_found(exc) or "alias" in str(exc).lower():
            return None
        raise


def _history(mlc, name: str) -> list[str]:
    raw = mlc.get_registered_model(name).tags.get("champion_history")
    try:
        return [str(v) for v in json.loads(raw)] if raw else []
    except ValueError:
        return []


def _write_history(mlc, name: str, history: list[str]) -> None:
    history = history[-100:]
    mlc.set_registered_model_tag(name, "champion_history", json.dumps(history))
    if len(history) >= 2:
        mlc.set_registered_model_tag(name, "previous_champion", history[-2])
    else:
        with contextlib.suppress(Exception):
            mlc.delete_registered_model_tag(name, "previous_champion")


def _push_history(mlc, name: str, version: str) -> None:
    history = [v for v in _history(mlc, name)]
    if not history or history[-1] != version:
        history.append(version)
    _write_history(mlc, name, history)


def _snapshot(mlc, name: str) -> dict | None:
    """Aliases and tags of a registered model (None if it does not exist), to undo a failed registration."""
    from mlflow.exceptions import MlflowException

    try:
        rm = mlc.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return {"aliases": {k: str(v) for k, v in (rm.aliases or {}).items()}, "tags": dict(rm.tags or {})}


def _undo(mlc, name: str, before: dict | None, version: str | None) -> None:
    """Best effort: put the registry back as ``before`` after a failed registration."""
    with contextlib.suppress(Exception):
        if version is not None:
            mlc.delete_model_version(name, version)
    if before is None:
        with contextlib.suppress(Exception):
            mlc.delete_registered_model(name)
        return
    with contextlib.suppress(Exception):
        current = mlc.get_registered_model(name)
        for alias, v in before["aliases"].items():
            if str((current.aliases or {}).get(alias)) != str(v):
                with contextlib.suppress(Exception):
                    mlc.set_registered_model_alias(name, alias, str(v))
        for key in set(current.tags) - set(before["tags"]):
            with contextlib.suppress(Exception):
                mlc.delete_registered_model_tag(name, key)
        for key, value in before["tags"].items():
            if current.tags.get(key) != value:
                with contextlib.suppress(Exception):
                    mlc.set_registered_model_tag(name, key, value)


def _recorded_metrics(mv) -> dict[str, float]:
    return _numeric({k[len("metric."):]: v for k, v in (mv.tags or {}).items() if k.startswith("metric.")})


# --------------------------------------------------------------------------------------------
# the gate
# --------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """Outcome of ``promote``. ``decision``: promoted (passed), forced (refused but --force), refused.

    ``forced`` is whether --force was given; ``promoted`` whether ``champion`` moved.
    """

    name: str
    challenger: str
    champion: str | None
    decision: str  # promoted | forced | refused
    passed: bool
    promoted: bool
    forced: bool
    reasons: list[str]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    primary: str
    tolerance: float
    source: str  # evaluate | recorded
    window: str | None = None
    grade: str | None = None  # the challenger's version tag ``grade`` (training.grade), None when ungraded

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluate(evaluate: Evaluate, uri: str) -> tuple[dict[str, float], dict[str, str]]:
    result = evaluate(uri)
    if not isinstance(result, dict):
        raise TypeError(f"evaluate({uri!r}) must return a dict of metrics, got {type(result).__name__}")
    extra = {str(k): str(v) for k, v in result.items() if isinstance(v, str)}
    return _numeric(result), extra


def promote(
    workspace: Workspace | str | Path | None,
    name: str,
    version: str | int | None = None,
    evaluate: Evaluate | None = None,
    force: bool = False,
    tolerance: float | None = None,
    policy: GatePolicy | None = None,
) -> Decision:
    """Run the promotion gate for ``version`` (default: the challenger) against the champion."""
    mlc = client(workspace)
    _registered_model(mlc, name)
    policy = policy or policy_for(name)
    tol = policy.tolerance if tolerance is None else float(tolerance)
    if version is None:
        version = alias_version(mlc, name, CHALLENGER)
        if version is None:
            raise RegistryError(f"{name} has no challenger; train a new version or pass --version")
    challenger = _version(mlc, name, version)
    version = str(challenger.version)
    champion_v = alias_version(mlc, name, CHAMPION)
    if champion_v == version:
        raise RegistryError(f"{name} version {version} is already the champion")
    window = None
    if champion_v is None:
        source = "evaluate" if evaluate else "recorded"
        new = _evaluate(evaluate, f"models:/{name}/{version}")[0] if evaluate else _recorded_metrics(challenger)
        old: dict[str, float] = {}
        passed, reasons = True, ["no champion: nothing to compare with"]
    else:
        champion = _version(mlc, name, champion_v)
        if evaluate is not None:
            source = "evaluate"
            new, extra_new = _evaluate(evaluate, f"models:/{name}/{version}")
            old, extra_old = _evaluate(evaluate, f"models:/{name}/{champion_v}")
            window = extra_new.get("window") or extra_old.get("window")
        else:
            source = "recorded"
            new, old = _recorded_metrics(challenger), _recorded_metrics(champion)
        passed, reasons = policy.check(new, old, tol)
    grade = (challenger.tags or {}).get(GRADE_TAG)
    if grade in policy.refused_grades:
        passed = False
        why = (challenger.tags or {}).get(GRADE_REASON_TAG, "")
        reasons.insert(0, f"grade {grade}: a challenger graded {grade} is refused unless forced"
                          + (f" ({why})" if why else ""))
    move = passed or force
    decision = "promoted" if passed else ("forced" if force else "refused")
    when = _now()

    tags = {
        "gate.decision": decision,
        "gate.passed": str(passed).lower(),
        "gate.forced": str(bool(force)).lower(),
        "gate.compared_with": champion_v or "none",
        "gate.primary": policy.primary_key,
        "gate.tolerance": repr(tol),
        "gate.source": source,
        "gate.evaluated_at": when,
        "gate.reasons": "; ".join(reasons)[:5000],
    }
    if window:
        tags["gate.window"] = window[:5000]
    if grade:
        tags["gate.grade"] = grade
    tags.update({f"gate.challenger.{k}": repr(v) for k, v in new.items()})
    tags.update({f"gate.champion.{k}": repr(v) for k, v in old.items()})
    for key, value in tags.items():
        mlc.set_model_version_tag(name, version, key, value)
    if champion_v is not None:
        ctags = {
            "challenged_by.version": version,
            "challenged_by.decision": decision,
            "challenged_by.forced": str(bool(force)).lower(),
            "challenged_by.at": when,
            "challenged_by.source": source,
        }
        ctags.update({f"challenged_by.challenger.{k}": repr(v) for k, v in new.items()})
        ctags.update({f"challenged_by.champion.{k}": repr(v) for k, v in old.items()})
        for key, value in ctags.items():
            mlc.set_model_version_tag(name, champion_v, key, value)

    if move:
        mlc.set_model_version_tag(name, version, "promotion", "forced" if not passed else "gate")
        mlc.set_model_version_tag(name, version, "promoted_at", when)
        if champion_v is not None:
            mlc.set_model_version_tag(name, champion_v, "retired_at", when)
            mlc.set_model_version_tag(name, champion_v, "replaced_by", version)
            if not _history(mlc, name):  # history lost or never written: start it at the old champion
                _write_history(mlc, name, [champion_v])
        mlc.set_registered_model_alias(name, CHAMPION, version)
        if alias_version(mlc, name, CHALLENGER) == version:
            mlc.delete_registered_model_alias(name, CHALLENGER)
        _push_history(mlc, name, version)
    return Decision(
        name=name, challenger=version, champion=champion_v, decision=decision, passed=passed, promoted=move,
        forced=bool(force), reasons=reasons, challenger_metrics=new, champion_metrics=old,
        primary=policy.primary_key, tolerance=tol, source=source, window=window, grade=grade,
    )


def rollback(workspace: Workspace | str | Path | None, name: str) -> dict:
    """Move ``champion`` back to the previous champion; returns ``{"name", "from", "to"}``."""
    mlc = client(workspace)
    _registered_model(mlc, name)
    current = alias_version(mlc, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from")
    history = _history(mlc, name)
    if history and history[-1] == current:
        history = history[:-1]
    existing = {str(v.version) for v in mlc.search_model_versions(f"name='{name}'")}
    while history and (history[-1] not in existing or history[-1] == current):
        history.pop()
    if not history:
        raise RegistryError(f"{name}: no previous champion to roll back to (champion is version {current})")
    target = history[-1]
    when = _now()
    mlc.set_model_version_tag(name, current, "rolled_back_at", when)
    mlc.set_model_version_tag(name, current, "rolled_back_to", target)
    mlc.set_model_version_tag(name, target, "promotion", "rollback")
    mlc.set_model_version_tag(name, target, "restored_at", when)
    mlc.set_registered_model_alias(name, CHAMPION, target)
    _write_history(mlc, name, history)
    mlc.set_registered_model_tag(name, "last_rollback", f"{current} -> {target} at {when}")
    return {"name": name, "from": current, "to": target}


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _versions(mlc, name: str) -> list:
    return sorted(mlc.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)


def list_models(workspace: Workspace | str | Path | None = None, name: str | None = None) -> list[dict]:
    """One row per model version, newest first: name, version, aliases, key metric, created, run, gate."""
    mlc = client(workspace)
    names = [name] if name else sorted(m.name for m in mlc.search_registered_models())
    rows = []
    for model in names:
        rm = _registered_model(mlc, model)
        by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        key = policy_for(model).primary_key
        for mv in _versions(mlc, model):
            tags = mv.tags or {}
            created = datetime.fromtimestamp(mv.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M:%S")
            rows.append(
                {
                    "name": model,
                    "version": str(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "metric": key,
                    "value": _finite(tags.get(f"metric.{key}")),
                    "created": created,
                    "run_id": mv.run_id,
                    "decision": tags.get("gate.decision", ""),
                    "promotion": tags.get("promotion", ""),
                    "rolled_back": "rolled_back_at" in tags and CHAMPION not in by_version.get(str(mv.version), []),
                }
            )
    return rows


def compare(
    workspace: Workspace | str | Path | None, name: str, evaluate: Evaluate | None = None, tolerance: float | None = None
) -> dict:
    """Champion vs challenger metrics side by side, and what the gate would decide (nothing is written)."""
    mlc = client(workspace)
    _registered_model(mlc, name)
    policy = policy_for(name)
    champion_v = alias_version(mlc, name, CHAMPION)
    challenger_v = alias_version(mlc, name, CHALLENGER)
    figures = {}
    for role, v in (("champion", champion_v), ("challenger", challenger_v)):
        if v is None:
            figures[role] = {}
        elif evaluate is not None:
            figures[role] = _evaluate(evaluate, f"models:/{name}/{v}")[0]
        else:
            figures[role] = _recorded_metrics(_version(mlc, name, v))
    keys = policy.metrics() + sorted((set(figures["champion"]) | set(figures["challenger"])) - set(policy.metrics()))
    rows = []
    for key in keys:
        old, new = figures["champion"].get(key), figures["challenger"].get(key)
        rows.append(
            {
                "metric": key,
                "role": "primary" if key == policy.primary_key else ("guard" if key in policy.metrics() else ""),
                "champion": old,
                "challenger": new,
                "delta": None if old is None or new is None else new - old,
            }
        )
    verdict = None
    if champion_v and challenger_v:
        passed, reasons = policy.check(figures["challenger"], figures["champion"], tolerance)
        verdict = {"passed": passed, "reasons": reasons}
    return {
        "name": name,
        "primary": policy.primary_key,
        "champion": champion_v,
        "challenger": challenger_v,
        "source": "evaluate" if evaluate else "recorded",
        "rows": rows,
        "gate": verdict,
    }


__all__ = [
    "CHALLENGER", "CHAMPION", "CHURN", "RECOMMENDER", "EXPERIMENT", "POLICIES", "Decision", "GatePolicy",
    "RegistryError", "TrainingRun", "client", "compare", "configure", "ensure_experiment", "Evaluate",
    "git_info", "list_models", "log_joblib_pyfunc", "model_uri", "package_versions", "pip_requirements", "policy_for", "promote",
    "rollback", "safe_key", "tracking_uri", "training_run",
]
