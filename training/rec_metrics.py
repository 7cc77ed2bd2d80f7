"""Ranking metrics for top-k recommendations: pure functions, no I/O.

Inputs follow one convention (like Microsoft Recommenders' ``python_evaluation``):

* ``rating_true``: the relevant items, one row per (user, item) — e.g. what each test user
  bought in the evaluation window. Relevance is binary.
* ``rating_pred``: the recommendations, one row per (user, item) with a rank column (1 = best)
  or, failing that, a score column (higher = better).

Every accuracy metric is averaged over the users of ``rating_true``; a user with no
recommendation counts as 0 (so leaving users out never helps). With ``rel(u)`` the relevant
items of user u, ``top_k(u)`` the first k recommendations and ``hit(u, r) = 1`` when the item at
rank r is relevant:

* ``precision@k = |top_k(u) ∩ rel(u)| / k``
* ``recall@k = |top_k(u) ∩ rel(u)| / |rel(u)|``
* ``hit_rate@k = 1 if top_k(u) ∩ rel(u) is not empty else 0``
* ``ndcg@k = DCG / IDCG`` with ``DCG = Σ_r hit(u, r) / log2(r + 1)`` over r ≤ k and IDCG the DCG
  of a perfect list, ``Σ_{r ≤ min(k, |rel(u)|)} 1 / log2(r + 1)``
* ``map@k = Σ_r precision@r · hit(u, r) / min(k, |rel(u)|)`` (average precision at k)

Beyond accuracy (over all recommended lists, not per user):

* ``coverage = |∪_u top_k(u)| / catalog_size`` — share of the catalogue ever recommended;
* ``novelty = mean over recommended items of -log2 p(i)`` with ``p(i)`` the share of training
  users who had item i (items never seen count as ``1 / n_users`` through ``min_popularity``).
  Higher means less obvious recommendations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_USER_COL = "user_id"
DEFAULT_ITEM_COL = "item_id"
DEFAULT_RANK_COL = "rank"
DEFAULT_SCORE_COL = "score"


def _top_k(rating_pred: pd.DataFrame, k: int, col_user: str, col_item: str, col_rank: str, col_score: str) -> pd.DataFrame:
    """The first ``k`` distinct items per user, with their 1-based position as ``_pos``."""
    pred = rating_pred[[c for c in (col_user, col_item, col_rank, col_score) if c in rating_pred.columns]]
    if col_rank in pred.columns:
        pred = pred.sort_values([col_user, col_rank], kind="stable")
    elif col_score in pred.columns:
        pred = pred.sort_values([col_user, col_score], ascending=[True, False], kind="stable")
    else:
        raise ValueError(f"rating_pred needs a {col_rank!r} or {col_score!r} column")
    pred = pred.drop_duplicates([col_user, col_item])
    pred = pred.assign(_pos=pred.groupby(col_user).cumcount() + 1)
    return pred[pred["_pos"] <= k][[col_user, col_item, "_pos"]]


def _hits(
    rating_true: pd.DataFrame, rating_pred: pd.DataFrame, k: int, col_user: str, col_item: str, col_rank: str, col_score: str
) -> tuple[pd.DataFrame, pd.Series]:
    """Relevant recommended rows (user, item, _pos) and the number of relevant items per user."""
    truth = rating_true[[col_user, col_item]].drop_duplicates()
    n_rel = truth.groupby(col_user).size()
    top = _top_k(rating_pred, k, col_user, col_item, col_rank, col_score)
    hits = top.merge(truth, on=[col_user, col_item], how="inner")
    return hits, n_rel


def precision_at_k(rating_true, rating_pred, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Mean over users of ``|top_k ∩ rel| / k``."""
    hits, n_rel = _hits(rating_true, rating_pred, k, col_user, col_item, col_rank, col_score)
    per_user = hits.groupby(col_user).size().reindex(n_rel.index, fill_value=0) / k
    return float(per_user.mean()) if len(per_user) else 0.0


def recall_at_k(rating_true, rating_pred, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Mean over users of ``|top_k ∩ rel| / |rel|``."""
    hits, n_rel = _hits(rating_true, rating_pred, k, col_user, col_item, col_rank, col_score)
    per_user = hits.groupby(col_user).size().reindex(n_rel.index, fill_value=0) / n_rel
    return float(per_user.mean()) if len(per_user) else 0.0


def hit_rate_at_k(rating_true, rating_pred, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Share of users with at least one relevant item in their top k."""
    hits, n_rel = _hits(rating_true, rating_pred, k, col_user, col_item, col_rank, col_score)
    return float(n_rel.index.isin(hits[col_user].unique()).mean()) if len(n_rel) else 0.0


def ndcg_at_k(rating_true, rating_pred, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Mean over users of binary-relevance ``DCG@k / IDCG@k`` (see the module docstring)."""
    hits, n_rel = _hits(rating_true, rating_pred, k, col_user, col_item, col_rank, col_score)
    dcg = (1.0 / np.log2(hits["_pos"] + 1.0)).groupby(hits[col_user]).sum().reindex(n_rel.index, fill_value=0.0)
    ideal_cum = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))
    idcg = pd.Series(ideal_cum[np.minimum(n_rel.to_numpy(), k) - 1], index=n_rel.index)
    return float((dcg / idcg).mean()) if len(n_rel) else 0.0


def map_at_k(rating_true, rating_pred, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Mean over users of average precision at k: ``Σ_r precision@r · hit(r) / min(k, |rel|)``."""
    hits, n_rel = _hits(rating_true, rating_pred, k, col_user, col_item, col_rank, col_score)
    hits = hits.sort_values([col_user, "_pos"])
    hits = hits.assign(_prec=(hits.groupby(col_user).cumcount() + 1) / hits["_pos"])
    ap = hits.groupby(col_user)["_prec"].sum().reindex(n_rel.index, fill_value=0.0) / np.minimum(n_rel, k)
    return float(ap.mean()) if len(n_rel) else 0.0


def catalog_coverage(rating_pred, catalog_size: int, k=10, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Distinct items in all top-k lists over the catalogue size."""
    if catalog_size <= 0:
        return 0.0
    top = _top_k(rating_pred, k, col_user, col_item, col_rank, col_score)
    return float(top[col_item].nunique() / catalog_size)


def novelty(rating_pred, item_popularity: pd.Series, k=10, min_popularity: float | None = None, col_user=DEFAULT_USER_COL, col_item=DEFAULT_ITEM_COL, col_rank=DEFAULT_RANK_COL, col_score=DEFAULT_SCORE_COL) -> float:
    """Mean self-information ``-log2 p(i)`` of the recommended items; ``item_popularity`` maps item
    id to the share of training users who had it (``min_popularity`` replaces 0 or unknown,
    default the smallest positive share)."""
    top = _top_k(rating_pred, k, col_user, col_item, col_rank, col_score)
    if top.empty:
        return 0.0
    floor = min_popularity if min_popularity is not None else float(item_popularity[item_popularity > 0].min())
    p = top[col_item].map(item_popularity).fillna(0.0).clip(lower=floor)
    return float((-np.log2(p)).mean())


def ranking_metrics(
    rating_true: pd.DataFrame,
    rating_pred: pd.DataFrame,
    k: int = 10,
    catalog_size: int | None = None,
    item_popularity: pd.Series | None = None,
    col_user: str = DEFAULT_USER_COL,
    col_item: str = DEFAULT_ITEM_COL,
    col_rank: str = DEFAULT_RANK_COL,
    col_score: str = DEFAULT_SCORE_COL,
) -> dict[str, float]:
    """All metrics at once: ``ndcg@k, precision@k, recall@k, map@k, hit_rate@k`` and, when the
    catalogue size / item popularity are given, ``coverage`` and ``novelty``."""
    cols = dict(col_user=col_user, col_item=col_item, col_rank=col_rank, col_score=col_score)
    out = {
        f"ndcg@{k}": ndcg_at_k(rating_true, rating_pred, k, **cols),
        f"precision@{k}": precision_at_k(rating_true, rating_pred, k, **cols),
        f"recall@{k}": recall_at_k(rating_true, rating_pred, k, **cols),
        f"map@{k}": map_at_k(rating_true, rating_pred, k, **cols),
        f"hit_rate@{k}": hit_rate_at_k(rating_true, rating_pred, k, **cols),
    }
    if catalog_size is not None:
        out["coverage"] = catalog_coverage(rating_pred, catalog_size, k, **cols)
    if item_popularity is not None:
        out["novelty"] = novelty(rating_pred, item_popularity, k, **cols)
    return out


def ndcg_of_scores(scores: np.ndarray, labels: np.ndarray, n_relevant: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row of a users × candidates score matrix, the ``ndcg@k`` of ranking the candidates by score.

    ``labels`` (same shape, 0/1): which candidates are relevant; ``n_relevant`` (one per row): the
    user's number of relevant items, candidates or not (the IDCG uses ``min(k, n_relevant)``, as in
    :func:`ndcg_at_k`, so relevant items the candidates miss count against the row). Candidates
    scored ``-inf`` are padding and never ranked; among equal scores the earlier column ranks first.
    ``DCG = Σ_{r ≤ k} label(r) / log2(r + 1)``, ``IDCG = Σ_{r ≤ min(k, n_relevant)} 1 / log2(r + 1)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape
    if n == 0 or c == 0:
        return np.zeros(n)
    kk = min(k, c)
    # equal scores keep column order: a tie-break far below any real score difference
    s = scores - np.arange(c) * 1e-12
    top = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < c else np.tile(np.arange(c), (n, 1))
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    gain = np.take_along_axis(np.asarray(labels, dtype=np.float64), top, 1)
    gain[~np.isfinite(np.take_along_axis(s, top, 1))] = 0.0
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = gain @ discount
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal[np.minimum(np.asarray(n_relevant, dtype=np.int64), k)]
    return np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)
