"""Item-item nearest neighbours with implicit (``BM25Recommender`` or ``CosineRecommender``).

The item × item similarity keeps each item's ``neighbours`` most similar items (BM25 or cosine over
the users who interacted with both, on time-decayed weights). score(u, j) = sum over the user's
items i of ``history[u, i] * similarity[i, j]``, i.e. ``history @ similarity``.
"""

from __future__ import annotations

import warnings

import numpy as np

from training.candidates.base import CandidateGenerator, FitData, Query, dense


class ItemKNNGenerator(CandidateGenerator):
    positive_only = True

    def __init__(self, similarity: str = "bm25", neighbours: int = 100, K1: float = 1.2, B: float = 0.75, value: str = "decayed"):
        self.similarity = similarity
        self.neighbours = neighbours
        self.K1 = K1
        self.B = B
        self.value = value

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.similarity

    def fit(self, data: FitData) -> ItemKNNGenerator:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        if self.similarity not in ("bm25", "cosine"):
            raise ValueError(f"similarity must be 'bm25' or 'cosine', not {self.similarity!r}")
        if self.similarity == "bm25":
            model = BM25Recommender(K=self.neighbours, K1=self.K1, B=self.B, num_threads=data.num_threads)
        else:
            model = CosineRecommender(K=self.neighbours, num_threads=data.num_threads)
        with warnings.catch_warnings():  # implicit's BM25 weighting hands its own fit a COO matrix
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(data.matrix.csr(self.value), show_progress=data.show_progress)
        self.similarity_ = model.similarity.tocsr().astype(np.float32)
        return self

    def score(self, query: Query) -> np.ndarray:
        return dense(query.csr(self.value) @ self.similarity_)

    def item_scores(self, item_idx: np.ndarray) -> np.ndarray:
        return dense(self.similarity_[item_idx].sum(axis=0)).ravel()
