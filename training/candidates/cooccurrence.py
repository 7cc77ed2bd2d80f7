"""Co-occurrence ("frequently bought together") from market-basket rules within orders.

Rules ``A → B`` come from :func:`features.interactions.pair_rules` (support, confidence, lift over
baskets). Each item keeps its ``neighbours`` consequents with the highest confidence among pairs
seen in at least ``min_count`` baskets. score(u, j) = sum over the user's items i of
``recent_history[u, i] * confidence(i → j)``, so items bought lately weigh most.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.interactions import basket_matrix, pair_rules
from training.candidates.base import CandidateGenerator, FitData, Query, dense


def top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix."""
    m = m.tocsr()
    keep = np.zeros(len(m.data), dtype=bool)
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-m.data[lo:hi], k)[:k]] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


class CooccurrenceGenerator(CandidateGenerator):
    name = "cooc"
    positive_only = True

    def __init__(self, neighbours: int = 50, min_count: int = 2, value: str = "decayed"):
        self.neighbours = neighbours
        self.min_count = min_count
        self.value = value

    def fit(self, data: FitData) -> CooccurrenceGenerator:
        baskets, _ = basket_matrix(data.interactions, data.matrix.item_index)
        rules = pair_rules(baskets)
        conf = rules["confidence"].copy()
        conf.data[rules["count"].data < self.min_count] = 0.0
        conf.eliminate_zeros()
        conf = top_per_row(conf, self.neighbours)
        conf.sort_indices()
        self.confidence_ = conf.astype(np.float32)
        self.item_count_ = np.asarray(rules["item_count"], dtype=np.float64)
        self.n_baskets_ = int(rules["n_baskets"])
        return self

    def score(self, query: Query) -> np.ndarray:
        return dense(query.csr(self.value) @ self.confidence_)

    def item_scores(self, item_idx: np.ndarray) -> np.ndarray:
        return dense(self.confidence_[item_idx].sum(axis=0)).ravel()

    def rules_for(self, item: int) -> dict[str, np.ndarray]:
        """The kept rules ``item → consequent`` with consequent, support, confidence, lift, count
        (recovered from confidence and the items' basket counts)."""
        lo, hi = self.confidence_.indptr[item], self.confidence_.indptr[item + 1]
        cons = self.confidence_.indices[lo:hi]
        conf = self.confidence_.data[lo:hi].astype(np.float64)
        n = max(self.n_baskets_, 1)
        count = np.rint(conf * self.item_count_[item])
        return {
            "consequent": cons,
            "support": count / n,
            "confidence": conf,
            "lift": conf / np.maximum(self.item_count_[cons] / n, 1e-12),
            "count": count,
        }
