"""Ranking metrics on hand-computed examples (training/rec_metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training import rec_metrics as rm

# u1 has 3 relevant items, 2 of them recommended at ranks 1 and 3; u2 has 1 relevant item,
# recommended at rank 2; u3 has 2 relevant items and no recommendation at all.
TRUE = pd.DataFrame(
    {"user_id": ["u1", "u1", "u1", "u2", "u3", "u3"], "item_id": ["a", "b", "c", "d", "a", "e"]}
)
PRED = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "x", "c", "y", "d", "a"],
        "rank": [1, 2, 3, 1, 2, 3],
        "score": [0.9, 0.8, 0.7, 0.9, 0.8, 0.7],
    }
)


def test_precision_recall_hit_rate():
    # precision@3: u1 2/3, u2 1/3, u3 0 -> mean 1/3
    assert rm.precision_at_k(TRUE, PRED, k=3) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    # recall@3: u1 2/3, u2 1/1, u3 0/2
    assert rm.recall_at_k(TRUE, PRED, k=3) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert rm.hit_rate_at_k(TRUE, PRED, k=3) == pytest.approx(2 / 3)
    # k=1: only u1's first item is a hit
    assert rm.precision_at_k(TRUE, PRED, k=1) == pytest.approx(1 / 3)
    assert rm.hit_rate_at_k(TRUE, PRED, k=1) == pytest.approx(1 / 3)


def test_ndcg():
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    u1 = (d[0] + d[2]) / (d[0] + d[1] + d[2])
    u2 = d[1] / d[0]
    assert rm.ndcg_at_k(TRUE, PRED, k=3) == pytest.approx((u1 + u2 + 0) / 3)
    perfect = TRUE.assign(rank=TRUE.groupby("user_id").cumcount() + 1)
    assert rm.ndcg_at_k(TRUE, perfect, k=10) == pytest.approx(1.0)


def test_map():
    # u1: hits at 1 and 3 -> (1/1 + 2/3) / min(3, 3); u2: hit at 2 -> (1/2) / 1; u3: 0
    expected = ((1 + 2 / 3) / 3 + 0.5 + 0) / 3
    assert rm.map_at_k(TRUE, PRED, k=3) == pytest.approx(expected)
    # at k=2, u1 has one hit over min(2, 3) = 2
    assert rm.map_at_k(TRUE, PRED, k=2) == pytest.approx((1 / 2 + 0.5 + 0) / 3)


def test_rank_from_score_and_duplicates():
    by_score = PRED.drop(columns="rank").sample(frac=1.0, random_state=0)
    assert rm.ndcg_at_k(TRUE, by_score, k=3) == pytest.approx(rm.ndcg_at_k(TRUE, PRED, k=3))
    dup = pd.concat([PRED, PRED.assign(rank=PRED["rank"] + 10)])  # a repeated item counts once
    assert rm.precision_at_k(TRUE, dup, k=3) == pytest.approx(rm.precision_at_k(TRUE, PRED, k=3))


def test_custom_columns():
    t = TRUE.rename(columns={"user_id": "customer", "item_id": "sku"})
    p = PRED.rename(columns={"user_id": "customer", "item_id": "sku", "rank": "position"})
    cols = dict(col_user="customer", col_item="sku", col_rank="position")
    assert rm.recall_at_k(t, p, k=3, **cols) == pytest.approx(rm.recall_at_k(TRUE, PRED, k=3))


def test_coverage_and_novelty():
    # distinct recommended items in the top 3: a, x, c, y, d -> 5 of a catalogue of 10
    assert rm.catalog_coverage(PRED, catalog_size=10, k=3) == pytest.approx(0.5)
    assert rm.catalog_coverage(PRED, catalog_size=10, k=1) == pytest.approx(0.2)  # a, y
    pop = pd.Series({"a": 0.5, "c": 0.25, "d": 0.125, "x": 0.5, "y": 0.5})
    # top-1 items: a (p=.5), y (p=.5) -> -log2 .5 = 1
    assert rm.novelty(PRED, pop, k=1) == pytest.approx(1.0)
    items = ["a", "x", "c", "y", "d", "a"]
    expected = np.mean([-math.log2(pop[i]) for i in items])
    assert rm.novelty(PRED, pop, k=3) == pytest.approx(expected)
    unknown = pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"], "rank": [1]})
    assert rm.novelty(unknown, pop, k=1) == pytest.approx(-math.log2(0.125))  # floor: smallest share


def test_ranking_metrics_keys_follow_k():
    out = rm.ranking_metrics(TRUE, PRED, k=5, catalog_size=10, item_popularity=pd.Series({"a": 1.0}))
    assert set(out) == {"ndcg@5", "precision@5", "recall@5", "map@5", "hit_rate@5", "coverage", "novelty"}
    assert rm.ranking_metrics(TRUE, PRED.iloc[:0], k=3)["ndcg@3"] == 0.0


def test_ndcg_of_scores_matches_ndcg_at_k():
    """The array form used by the recommender's selection gives ndcg_at_k's value for the same lists."""
    from training.rec_metrics import ndcg_at_k, ndcg_of_scores

    scores = np.array([[0.9, 0.1, 0.5, -np.inf], [0.2, 0.2, 0.7, 0.1]])
    labels = np.array([[0, 1, 1, 1], [1, 0, 0, 1]])
    n_relevant = np.array([4, 2])  # u0 has a relevant item outside its candidates
    got = ndcg_of_scores(scores, labels, n_relevant, k=3)
    # the same rankings as frames: u0 a, c, b (d is padding); u1 c, then a before b (equal scores keep order), d
    pred = pd.DataFrame({"user_id": ["u0"] * 3 + ["u1"] * 3, "item_id": ["a", "c", "b", "c", "a", "b"],
                         "rank": [1, 2, 3, 1, 2, 3]})
    truth = pd.DataFrame({"user_id": ["u0"] * 4 + ["u1"] * 2, "item_id": ["b", "c", "d", "x", "a", "d"]})
    ref = [ndcg_at_k(truth[truth.user_id == u], pred[pred.user_id == u], k=3) for u in ("u0", "u1")]
    assert got == pytest.approx(ref)
    assert 0 < got[0] < 1 and got[1] == pytest.approx(1 / np.log2(3) / (1 + 1 / np.log2(3)))
