"""Frequency: the customer's own items ranked by how often they bought them.

score(u, i) = ``count[u, i]`` (the baskets of u holding i) plus a recency tie-break below 1,
``0.5 * 0.5 ** (last_days / 365)``, so that among items bought equally often the latest comes
first; the tie-break never reorders different counts. Unlike ``buy_again`` (recency-decayed
weights, which suit wholesale reorders) it has no time scale to get wrong, which makes it the
strong baseline of weekly grocery baskets. Only items the user already has are scored.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.candidates.base import CandidateGenerator, FitData, Query, dense


class FrequencyGenerator(CandidateGenerator):
    name = "frequency"
    positive_only = True

    def __init__(self, tie_half_life_days: float = 365.0):
        self.tie_half_life_days = tie_half_life_days

    def fit(self, data: FitData) -> FrequencyGenerator:
        self.n_items_ = data.n_items
        return self

    def score(self, query: Query) -> np.ndarray:
        count = query.csr("count")
        last = query.csr("last_days").data if "last_days" in query.history.values else np.full(count.nnz, np.inf)
        tie = 0.5 * 0.5 ** (np.nan_to_num(last, nan=np.inf) / self.tie_half_life_days)
        return dense(sp.csr_matrix((count.data + tie, count.indices, count.indptr), shape=count.shape))
