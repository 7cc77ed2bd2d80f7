"""Matrix factorisation with implicit: ALS (Hu, Koren & Volinsky 2008), BPR optional.

Input confidence is ``log1p`` of the time-decayed interaction weight (times ``alpha`` inside
implicit). score(u, i) = ``user_factors[u] · item_factors[i]``. A user the model never saw but
who comes with a history (an anonymous basket) is folded in: implicit's ``recalculate_user``
solves the user's least-squares problem against the fixed item factors (ALS only).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.candidates.base import CandidateGenerator, FitData, Query


def _confidence(x: sp.csr_matrix) -> sp.csr_matrix:
    x = x.astype(np.float32, copy=True)
    x.data = np.log1p(x.data)
    return x


class ALSGenerator(CandidateGenerator):
    """Implicit ALS (``kind="als"``) or BPR (``kind="bpr"``)."""

    positive_only = False

    def __init__(
        self,
        kind: str = "als",
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 3.0,
        iterations: int = 15,
        learning_rate: float = 0.01,
        value: str = "decayed",
        random_state: int = 0,
    ):
        self.kind = kind
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.value = value
        self.random_state = random_state

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.kind

    def fit(self, data: FitData) -> ALSGenerator:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        if self.kind not in ("als", "bpr"):
            raise ValueError(f"kind must be 'als' or 'bpr', not {self.kind!r}")
        x = _confidence(data.matrix.csr(self.value))
        if self.kind == "als":
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                iterations=self.iterations, random_state=self.random_state, num_threads=data.num_threads,
            )
        else:
            model = BayesianPersonalizedRanking(
                factors=self.factors, regularization=self.regularization, learning_rate=self.learning_rate,
                iterations=self.iterations, random_state=self.random_state, num_threads=data.num_threads,
            )
        model.fit(x, show_progress=data.show_progress)
        self.model_ = model
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        return self

    def user_vectors(self, query: Query) -> np.ndarray:
        uidx = np.asarray(query.uidx)
        known = uidx >= 0
        if known.all():
            return self.user_factors_[uidx]
        out = np.zeros((len(uidx), self.item_factors_.shape[1]), dtype=np.float32)
        out[known] = self.user_factors_[uidx[known]]
        unknown = np.flatnonzero(~known)
        hist = _confidence(query.csr(self.value))[unknown]
        if self.kind == "als" and hist.nnz:
            out[unknown] = self.model_.recalculate_user(np.arange(len(unknown)), hist)
        elif hist.nnz:  # BPR has no fold-in: average the item factors of the history
            sums = np.asarray(hist @ self.item_factors_)
            out[unknown] = sums / np.maximum(np.asarray(hist.sum(axis=1)), 1e-9)
        return out

    def score(self, query: Query) -> np.ndarray:
        return self.user_vectors(query) @ self.item_factors_.T

    def item_scores(self, item_idx: np.ndarray) -> np.ndarray:
        """Summed cosine similarity of the item factors."""
        f = self.item_factors_
        norms = np.linalg.norm(f, axis=1) + 1e-9
        q = (f[item_idx] / norms[item_idx, None]).sum(axis=0)
        return (f @ q) / norms
