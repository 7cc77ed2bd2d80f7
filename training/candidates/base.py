"""What every candidate generator shares: the data it is fitted on, the query it scores, the base class.

A generator is fitted on a :class:`FitData` and, for a :class:`Query` of ``n`` users, returns a dense
``(n, n_items)`` float32 score matrix (higher is better). Generators with ``positive_only`` only
propose items with a positive score (an item-based generator scores 0 when it has no evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.interactions import InteractionMatrix


@dataclass
class FitData:
    """Everything a generator may learn from.

    ``matrix``: users × items aggregates (values ``weight``, ``decayed``, ``recent``, ``count``,
    ``last_days``, ``first_days``); ``interactions``: the normalised interactions frame (for
    baskets and time windows); ``user_segment``: segment code per matrix row (-1 unknown);
    ``item_category``: category code per item (-1 unknown).
    """

    matrix: InteractionMatrix
    interactions: pd.DataFrame
    user_segment: np.ndarray
    n_segments: int
    item_category: np.ndarray
    n_categories: int
    show_progress: bool = False
    num_threads: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    def interaction_age_days(self) -> np.ndarray | None:
        """Age in days of each interaction row at ``matrix.now`` (None without timestamps)."""
        if "timestamp" not in self.interactions.columns or self.matrix.now is None:
            return None
        if "age" not in self._cache:
            ts = self.interactions["timestamp"].to_numpy()
            self._cache["age"] = np.maximum((self.matrix.now - ts) / np.timedelta64(1, "D"), 0.0)
        return self._cache["age"]

    def interaction_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Matrix row and item column of each interaction row (-1 where unknown)."""
        if "codes" not in self._cache:
            u = pd.Index(self.matrix.user_ids).get_indexer(self.interactions["user_id"])
            i = pd.Index(self.matrix.item_ids).get_indexer(self.interactions["item_id"])
            self._cache["codes"] = (u.astype(np.int64), i.astype(np.int64))
        return self._cache["codes"]


@dataclass
class Query:
    """The users to score: their matrix rows (-1 when the generators never saw them, e.g. an
    anonymous basket), their history rows (an :class:`InteractionMatrix` aligned with the fitted
    item columns) and their segment codes (-1 unknown)."""

    uidx: np.ndarray
    history: InteractionMatrix
    segment: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.uidx)

    def csr(self, value: str):
        if value not in self._cache:
            self._cache[value] = self.history.csr(value)
        return self._cache[value]


class CandidateGenerator:
    """Base class. Subclasses set ``name``, implement ``fit`` and ``score``; item-to-item
    generators also implement ``item_scores`` (used by similar items and anonymous baskets)."""

    name: str = ""
    positive_only: bool = True

    def fit(self, data: FitData) -> CandidateGenerator:
        raise NotImplementedError

    def score(self, query: Query) -> np.ndarray:
        raise NotImplementedError

    def candidate_order(self, segment: int = -1) -> np.ndarray | None:
        """For generators whose scores are the same for every user (of a segment): all items,
        best first, so that candidates are a prefix instead of a sort. None otherwise."""
        return None

    def item_scores(self, item_idx: np.ndarray) -> np.ndarray | None:
        """Summed item-to-item scores of the given items over all items, or None if unsupported."""
        return None

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def dense(x) -> np.ndarray:
    """A dense float32 ndarray from a sparse or dense matrix."""
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=np.float32)


def broadcast_rows(vector: np.ndarray, n: int) -> np.ndarray:
    """``n`` copies of a per-item score vector as an ``(n, n_items)`` array (no copy)."""
    return np.broadcast_to(vector.astype(np.float32, copy=False), (n, len(vector)))
