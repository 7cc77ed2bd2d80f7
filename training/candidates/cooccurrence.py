"""Co-occurrence ("frequently bought together") from market-basket rules within orders.

Rules ``A → B`` come from :func:`features.interactions.pair_rules` (support, confidence, lift over
baskets). As a candidate generator, each item keeps its ``neighbours`` consequents with the
highest confidence among pairs seen in at least ``min_count`` baskets. score(u, j) = sum over the
user's items i of ``recent_history[u, i] * confidence(i → j)``, so items bought lately weigh most.

Confidence favours popular consequents: a best-seller is in many baskets with anything, even with
items whose buyers take it *less* often than other shoppers (lift below 1). The "bought together"
answer (:meth:`CooccurrenceGenerator.together_for`) therefore keeps only positively associated
pairs and ranks them by a measure that discounts popularity. With N baskets, n(A), n(B) and n(A,B)
baskets holding A, B and both, and ``E = n(A) n(B) / N`` the baskets expected to hold both if A
and B were independent:

* kept: ``n(A,B) >= min_count``, ``lift = n(A,B) / E > 1`` and a one-sided hypergeometric test
  (Fisher's exact test) of "more baskets hold both than chance" with p-value below
  ``together_alpha``;
* ranked by ``association = n(A,B) / (E + 1)``: the lift with one pseudo-basket added to its
  expectation, so that a pair seen in 2 baskets of rare items does not outrank a pair seen in 50
  (the lift of rare pairs is large and noisy), while a best-seller's lift stays near 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.interactions import basket_matrix, pair_rules
from training.candidates.base import CandidateGenerator, FitData, Query, dense


def top_mask_per_row(m: sp.csr_matrix, k: int) -> np.ndarray:
    """Boolean mask over ``m.data`` of the ``k`` largest entries of each row of a CSR matrix."""
    keep = np.zeros(len(m.data), dtype=bool)
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-m.data[lo:hi], k)[:k]] = True
    return keep


def top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix."""
    m = m.tocsr()
    keep = top_mask_per_row(m, k)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


class CooccurrenceGenerator(CandidateGenerator):
    name = "cooc"
    positive_only = True

    def __init__(self, neighbours: int = 50, min_count: int = 2, value: str = "decayed",
                 together_neighbours: int = 100, together_alpha: float = 0.01):
        self.neighbours = neighbours
        self.min_count = min_count
        self.value = value
        self.together_neighbours = together_neighbours
        self.together_alpha = together_alpha

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
        self._fit_together(rules["count"])
        return self

    def _fit_together(self, count: sp.csr_matrix) -> None:
        """The positively associated pairs, at most ``together_neighbours`` per item (module docstring)."""
        from scipy.stats import hypergeom

        count = count.tocsr()
        count.sort_indices()
        n = max(self.n_baskets_, 1)
        rows = np.repeat(np.arange(count.shape[0]), np.diff(count.indptr))
        expected = self.item_count_[rows] * self.item_count_[count.indices] / n
        both = count.data
        ok = (both >= self.min_count) & (both > expected)
        assoc = np.where(ok, both / (expected + 1.0), 0.0)
        m = sp.csr_matrix((assoc, count.indices, count.indptr), shape=count.shape)
        keep = top_mask_per_row(m, self.together_neighbours) & ok
        # P(n(A,B) >= observed) when the n(B) baskets with B are drawn at random from the N baskets
        p = hypergeom.sf(both[keep] - 1, n, self.item_count_[rows[keep]], self.item_count_[count.indices[keep]])
        sel = np.flatnonzero(keep)[p < self.together_alpha]
        self.together_ = sp.csr_matrix((assoc[sel], (rows[sel], count.indices[sel])), shape=count.shape)
        self.together_count_ = sp.csr_matrix((both[sel], (rows[sel], count.indices[sel])), shape=count.shape)
        self.together_.sort_indices()
        self.together_count_.sort_indices()

    def score(self, query: Query) -> np.ndarray:
        return dense(query.csr(self.value) @ self.confidence_)

    def item_scores(self, item_idx: np.ndarray) -> np.ndarray:
        return dense(self.confidence_[item_idx].sum(axis=0)).ravel()

    def together_for(self, item: int) -> dict[str, np.ndarray]:
        """The positively associated items of ``item`` (see the module docstring) with consequent,
        association (the ranking score), support, confidence, lift and count, in column order."""
        lo, hi = self.together_.indptr[item], self.together_.indptr[item + 1]
        cons = self.together_.indices[lo:hi]
        count = self.together_count_.data[lo:hi].astype(np.float64)
        n = max(self.n_baskets_, 1)
        conf = count / max(self.item_count_[item], 1.0)
        return {
            "consequent": cons,
            "association": self.together_.data[lo:hi].astype(np.float64),
            "support": count / n,
            "confidence": conf,
            "lift": conf / np.maximum(self.item_count_[cons] / n, 1e-12),
            "count": count,
        }
