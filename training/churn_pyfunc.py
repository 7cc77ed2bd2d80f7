"""The churn model as an MLflow pyfunc, and ``log_churn`` to log it in the active run.

The pyfunc takes a snapshot frame (the columns in the model's ``feature_names_in_``: its features
and, when it applies a seasonal shift, ``cutoff``; plus optionally ``customer_id``) and
returns one row per customer: ``customer_id`` (when given), ``churn_probability``, ``risk_tier`` and
``reasons`` (JSON text: a list of ``{feature, value, contribution, sentence}``). The fitted
:class:`training.churn.ChurnModel` travels as a joblib artifact; the ``training`` and ``features``
packages travel as code paths, so the model loads without this repository on ``sys.path``.
The unwrapped ``ChurnModel`` is ``mlflow.pyfunc.load_model(uri).unwrap_python_model().model``.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

try:  # keep the module importable (and the class definable) without mlflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

PIP_PACKAGES = ("mlflow", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "lifetimes", "joblib")


class ChurnPyfunc(PythonModel):
    """MLflow pyfunc around a fitted ``ChurnModel`` (artifact ``churn_model``)."""

    def __init__(self, model=None, top_k: int = 3):
        self.model = model
        self.top_k = top_k

    def load_context(self, context):
        import joblib

        self.model = joblib.load(context.artifacts["churn_model"])

    # the DataFrame hint tells MLflow the input schema comes from the logged signature (no
    # type-hint validation of its own, and no warning asking for hints)
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        top_k = int((params or {}).get("top_k", self.top_k))
        proba = self.model.predict_proba(df)[:, 1]
        out = pd.DataFrame(index=range(len(df)))
        if "customer_id" in df.columns:
            out["customer_id"] = df["customer_id"].astype(str).to_numpy()
        out["churn_probability"] = proba
        out["risk_tier"] = self.model.risk_tier(proba)
        out["reasons"] = [json.dumps(r) for r in self.model.explain(df, top_k=top_k)]
        return out


def log_churn(model, input_example: pd.DataFrame, name: str = "model", top_k: int = 3):
    """Log ``model`` (a fitted ChurnModel) as a pyfunc in the active MLflow run; returns the ModelInfo.

    ``input_example``: a few snapshot rows (feature columns, ``customer_id`` allowed); the signature
    is inferred from it and from the pyfunc's output on it. Requirements are explicit (pinned to
    the installed versions), so MLflow does not infer them.
    """
    from mlflow.models import infer_signature

    from training.registry import log_joblib_pyfunc

    cols = ["customer_id"] if "customer_id" in input_example.columns else []
    # every column the model reads (its features, and the snapshot ``cutoff`` when the seasonal
    # shift applies), so that the signature lets them through to predict_proba
    cols += [c for c in model.feature_names_in_ if c in input_example.columns]
    example = input_example[cols].head(5).reset_index(drop=True)
    # object columns with pandas NA -> plain strings/None so the schema is clean
    for c in example.columns:
        if example[c].dtype == "string" or example[c].dtype == object:
            example[c] = example[c].astype(object).where(example[c].notna(), None)
        elif c != "customer_id" and pd.api.types.is_numeric_dtype(example[c]):
            example[c] = example[c].astype("float64")  # features may be missing: never integer columns
    wrapper = ChurnPyfunc(model, top_k=top_k)
    # the signature comes from real rows (types); what is logged is a synthetic example of the same
    # shape (issue #16): no customer's id, gender, age or country may reach MLflow or BentoML
    signature = infer_signature(example, wrapper.predict(None, example))
    example = synthetic_example(example)
    return log_joblib_pyfunc(
        ChurnPyfunc(top_k=top_k), "churn_model", model,
        name=name, signature=signature, input_example=example, packages=PIP_PACKAGES,
    )


def synthetic_example(rows: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """``n`` made-up rows with the columns and dtypes of ``rows`` and none of their values.

    Ids are ``example-1``...; numeric features are missing (the model takes NaN); text and
    categorical features are the word ``example`` (an unknown category, read as missing); the
    snapshot ``cutoff`` (a date shared by every customer of a snapshot, not a personal value) is kept.
    """
    out = {}
    for c in rows.columns:
        col = rows[c]
        if c == "customer_id":
            out[c] = [f"example-{i + 1}" for i in range(n)]
        elif c == "cutoff":
            out[c] = [col.iloc[0]] * n
        elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out[c] = pd.array([float("nan")] * n, dtype="float64")
        else:
            out[c] = ["example"] * n
    return pd.DataFrame(out)


def load_churn(model_uri: str):
    """The fitted ChurnModel behind a logged/registered pyfunc URI."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
