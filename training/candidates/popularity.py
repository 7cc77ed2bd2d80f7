"""Popularity baselines: overall, trending, and per segment (e.g. country).

* ``popular``: ``log1p`` of the number of distinct users with the item in the last
  ``window_days`` (all history when None).
* ``trending``: growth of the item's distinct buyers in the last ``recent_days`` against the
  ``baseline_days`` before, shrunk towards 1 for small counts:
  ``(recent + 1) / (baseline * recent_days / baseline_days + 1)``, times ``log1p(recent)`` so that a
  jump from 0 to 1 buyer does not top the list.
* ``popular_segment``: ``log1p`` distinct users of the item within the user's segment; users with
  no known segment get overall popularity.
* ``seasonal``: ``log1p`` distinct users of the item in the same weeks one year earlier (the
  ``season`` value of the interaction matrix), for shops with yearly cycles (Christmas, summer).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.candidates.base import CandidateGenerator, FitData, Query, broadcast_rows


def distinct_users(data: FitData, max_age_days: float | None = None, min_age_days: float = 0.0) -> np.ndarray:
    """Per item, the number of distinct users with an interaction aged in [min_age, max_age) days."""
    m = data.matrix
    if max_age_days is None and min_age_days <= 0:
        return np.bincount(m.indices, minlength=data.n_items).astype(np.float64)
    age = data.interaction_age_days()
    if age is None:
        return np.bincount(m.indices, minlength=data.n_items).astype(np.float64)
    u, i = data.interaction_codes()
    keep = (u >= 0) & (i >= 0) & (age >= min_age_days)
    if max_age_days is not None:
        keep &= age < max_age_days
    pairs = np.unique(u[keep] * data.n_items + i[keep])
    return np.bincount(pairs % data.n_items, minlength=data.n_items).astype(np.float64)


class GlobalScoreGenerator(CandidateGenerator):
    """A generator whose scores are the same for every user: ``fit`` sets them with
    :meth:`_set_scores`, which also keeps their order (candidates are then a prefix of it)."""

    positive_only = True

    def _set_scores(self, scores: np.ndarray) -> None:
        self.scores_ = np.asarray(scores).astype(np.float32)
        self.order_ = np.argsort(-self.scores_, kind="stable")

    def candidate_order(self, segment: int = -1) -> np.ndarray:
        return self.order_

    def score(self, query: Query) -> np.ndarray:
        return broadcast_rows(self.scores_, len(query))


class PopularityGenerator(GlobalScoreGenerator):
    name = "popular"

    def __init__(self, window_days: float | None = None):
        self.window_days = window_days

    def fit(self, data: FitData) -> PopularityGenerator:
        self._set_scores(np.log1p(distinct_users(data, self.window_days)))
        return self


class TrendingGenerator(GlobalScoreGenerator):
    name = "trending"

    def __init__(self, recent_days: float = 30.0, baseline_days: float = 180.0):
        self.recent_days = recent_days
        self.baseline_days = baseline_days

    def fit(self, data: FitData) -> TrendingGenerator:
        recent = distinct_users(data, self.recent_days)
        base = distinct_users(data, self.recent_days + self.baseline_days, min_age_days=self.recent_days)
        ratio = (recent + 1.0) / (base * self.recent_days / self.baseline_days + 1.0)
        self.ratio_ = ratio.astype(np.float32)
        self._set_scores(ratio * np.log1p(recent))
        return self


class SegmentPopularityGenerator(CandidateGenerator):
    name = "popular_segment"
    positive_only = True

    def __init__(self, window_days: float | None = None):
        self.window_days = window_days

    def fit(self, data: FitData) -> SegmentPopularityGenerator:
        m = data.matrix
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        keep = np.ones(len(rows), dtype=bool)
        if self.window_days is not None and m.now is not None:
            keep = m.values["last_days"] < self.window_days
        seg = data.user_segment[rows]
        known = keep & (seg >= 0)
        counts = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.float32), (seg[known], m.indices[known])),
            shape=(max(data.n_segments, 1), data.n_items),
        )
        self.scores_ = np.log1p(counts.toarray()).astype(np.float32)
        self.overall_ = np.log1p(np.bincount(m.indices[keep], minlength=data.n_items)).astype(np.float32)
        self.orders_ = np.argsort(-self.scores_, axis=1, kind="stable")
        self.overall_order_ = np.argsort(-self.overall_, kind="stable")
        return self

    def candidate_order(self, segment: int = -1) -> np.ndarray:
        return self.orders_[segment] if 0 <= segment < len(self.orders_) else self.overall_order_

    def segment_scores(self, segment: int) -> np.ndarray:
        return self.scores_[segment] if 0 <= segment < len(self.scores_) else self.overall_

    def score(self, query: Query) -> np.ndarray:
        seg = np.asarray(query.segment)
        if len(seg) == 1:
            return self.segment_scores(int(seg[0]))[None, :]
        out = self.scores_[np.clip(seg, 0, len(self.scores_) - 1)].copy()
        out[seg < 0] = self.overall_
        return out


class SeasonalGenerator(GlobalScoreGenerator):
    name = "seasonal"

    def __init__(self, value: str = "season"):
        self.value = value

    def fit(self, data: FitData) -> SeasonalGenerator:
        m = data.matrix
        if self.value in m.values:
            users = np.bincount(m.indices[m.values[self.value] > 0], minlength=data.n_items)
        else:
            users = np.zeros(data.n_items)
        self._set_scores(np.log1p(users))
        return self
