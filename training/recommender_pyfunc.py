"""The recommender as an MLflow pyfunc, and ``log_recommender`` to log it in the active run.

The pyfunc's input is a DataFrame with a ``user_id`` column (``customer_id`` is accepted) and
optional per-row ``k`` (default 10) and ``exclude_seen`` (default True) columns; its output is one
row per recommendation: ``user_id, item_id, score, rank, source``. The fitted
:class:`training.recommender.Recommender` travels as a joblib artifact; the ``training`` and
``features`` packages travel as code paths, so the model loads without this repository on
``sys.path``. The unwrapped ``Recommender`` is
``mlflow.pyfunc.load_model(uri).unwrap_python_model().model`` (see :func:`load_recommender`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

try:  # keep the module importable (and the class definable) without mlflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

PIP_PACKAGES = ("mlflow", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "implicit", "joblib", "rich")
OUTPUT_COLUMNS = ["user_id", "item_id", "score", "rank", "source"]


def model_signature():
    """The pyfunc's MLflow signature, declared: ``user_id, k, exclude_seen`` in, ``OUTPUT_COLUMNS`` out.

    Declared rather than inferred from an example: inference would type ``k`` and ``rank`` from
    the example's integers (and warn that integer columns cannot hold missing values).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k"), ColSpec("boolean", "exclude_seen")]),
        outputs=Schema([ColSpec("string", "user_id"), ColSpec("string", "item_id"), ColSpec("double", "score"),
                        ColSpec("long", "rank"), ColSpec("string", "source")]),
    )


class RecommenderPyfunc(PythonModel):
    """MLflow pyfunc around a fitted ``Recommender`` (artifact ``recommender``)."""

    def __init__(self, model=None):
        self.model = model

    def load_context(self, context):
        import joblib

        self.model = joblib.load(context.artifacts["recommender"])

    # the DataFrame hint tells MLflow the input schema comes from the declared signature (no
    # type-hint validation of its own, and no warning asking for hints)
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "user_id" not in df.columns and "customer_id" in df.columns:
            df = df.rename(columns={"customer_id": "user_id"})
        if "user_id" not in df.columns:
            raise ValueError(f"the input needs a user_id column; got {list(df.columns)}")
        params = params or {}
        default_k = int(params.get("k", 10))
        default_excl = bool(params.get("exclude_seen", True))
        rows = []
        for rec in df.to_dict("records"):
            k = rec.get("k")
            k = default_k if k is None or pd.isna(k) else int(k)
            excl = rec.get("exclude_seen")
            excl = default_excl if excl is None or (not isinstance(excl, bool) and pd.isna(excl)) else bool(excl)
            user = str(rec["user_id"])
            for item in self.model.recommend_one(user, k=k, exclude_seen=excl):
                rows.append({"user_id": user, **item})
        out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
        out["score"] = out["score"].astype("float64")
        out["rank"] = out["rank"].astype("int64")
        return out


def log_recommender(model, metrics: dict | None = None, name: str = "model", example_users: list[str] | None = None):
    """Log ``model`` (a fitted Recommender) as a pyfunc in the active MLflow run; returns the ModelInfo.

    ``metrics`` (e.g. the evaluation's ``{"ndcg@10": .., "coverage": ..}``) are logged to the run
    with MLflow-safe names (``ndcg@10`` -> ``ndcg_at_10``). The signature is declared
    (:func:`model_signature`); a small input example (made-up users) travels with the model.
    Requirements are explicit (pinned to the installed versions), so MLflow does not infer them.
    """
    import mlflow

    from training.registry import log_joblib_pyfunc

    if metrics:
        import math

        from features.numeric import safe_key

        safe = {
            safe_key(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if safe:
            mlflow.log_metrics(safe)
    # made-up ids (cold-start answers), never customers of the training data (issue #16)
    users = example_users or ["example-1", "example-2"]
    example = pd.DataFrame({"user_id": users, "k": [3] * len(users), "exclude_seen": [True] * len(users)})
    return log_joblib_pyfunc(
        RecommenderPyfunc(), "recommender", model,
        name=name, signature=model_signature(), input_example=example, packages=PIP_PACKAGES,
    )


def load_recommender(model_uri: str):
    """The fitted Recommender behind a logged/registered pyfunc URI."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
