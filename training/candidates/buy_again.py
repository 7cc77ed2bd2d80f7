"""Buy-again: the customer's own history with recency decay.

score(u, i) = sum over u's interactions with i of ``weight * 0.5 ** (age_days / half_life)``
(the ``value`` column of the interaction matrix, built with that half-life). For wholesale and
consumables this is often the strongest single signal. Only items the user already has are scored.
"""

from __future__ import annotations

import numpy as np

from training.candidates.base import CandidateGenerator, FitData, Query, dense


class BuyAgainGenerator(CandidateGenerator):
    name = "buy_again"
    positive_only = True

    def __init__(self, value: str = "buy_again"):
        self.value = value

    def fit(self, data: FitData) -> BuyAgainGenerator:
        self.n_items_ = data.n_items
        return self

    def score(self, query: Query) -> np.ndarray:
        return dense(query.csr(self.value))
