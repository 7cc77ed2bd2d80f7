"""How the report writes numbers: one formatting rule per kind of figure ("–" for a missing one)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd


def num(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def pct(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def money(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:,.2f}M"
    if ax >= 1e4:
        return f"{x / 1e3:,.0f}k"
    return f"{x:,.0f}"


def date(ts) -> str:
    return "–" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d")


def label(name) -> str:
    return str(name).replace("_", " ")


def as_list(value):
    """Reasons as a list: Parquet gives list columns back as numpy arrays, the scores hold JSON text."""
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def reason_text(value) -> str:
    """Reasons as one readable string: a list of sentences or of ``{"sentence": ...}`` records."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        parsed = as_list(value)
        return value if isinstance(parsed, str) else reason_text(parsed)
    if isinstance(value, dict):
        return str(value.get("sentence") or value.get("text") or value.get("feature") or "")
    try:
        return "; ".join(t for t in (reason_text(v) for v in value) if t)
    except TypeError:
        return str(value)


def is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False
