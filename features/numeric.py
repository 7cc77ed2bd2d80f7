"""Small numeric rules shared by every layer."""

from __future__ import annotations

import math
import re
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None`` (JSON has no NaN or infinity)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def safe_key(name: str) -> str:
    """An MLflow-valid metric/tag key: ``ndcg@10`` -> ``ndcg_at_10``; other odd characters -> ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", str(name).replace("@", "_at_"))
