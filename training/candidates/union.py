"""The union of the generators' candidates for one user, and the re-ranker's features.

For one user, every generator's score vector (over all items) is masked (filters, already-seen
items when asked, non-positive scores of item-based generators), its ``rank_depth`` best items are
ranked and its ``n_candidates`` best join the union. Each candidate then gets these features
(H is the ranking horizon, ``horizon_days``, 90 by default):

* per generator g: ``g_score`` (raw score), ``g_rank`` (1-based rank in g's list, ``rank_depth + 1``
  when beyond it) and ``g_rel`` (score divided by g's best score for this user);
* item: ``item_users`` (log distinct users), ``item_users_7d`` / ``_30d`` / ``_h`` (the same over
  the last 7, 30 and H days), ``item_users_season`` (log distinct users in the H days that started
  one year ago, i.e. the coming window last year), ``item_season_lift`` (log ratio of that to the H
  days before it: is the item entering its season?), ``item_repeat_rate`` (share of its users who
  had it in 2+ baskets), ``item_quantity_per_basket`` (log units per basket: pack size, NaN without
  quantities), ``item_retention_h`` (of the users who had it in the H days before the last H,
  the share who had it again in the last H), ``item_days_since_last`` / ``item_days_since_first`` (stale items are often
  discontinued), ``item_price``, ``item_price_band`` (price quintile, -1 unknown);
* user × item: ``ui_count`` (baskets with the item), ``ui_decayed`` (time-decayed weight),
  ``ui_count_h`` / ``ui_count_prev_h`` (baskets in the last H days / the H days before),
  ``ui_season`` (baskets in the coming window last year), ``ui_days_since_last`` /
  ``ui_days_since_first`` (NaN if never), ``ui_share`` (``ui_count`` over the user's baskets),
  ``ui_cycle`` (days since last over the mean gap between baskets with the item; NaN below 2),
  ``ui_baskets_since_last`` (the user's baskets after the last one with the item) and ``ui_last5``
  (how many of the user's 5 latest baskets hold it), ``ui_count_rank`` / ``ui_recency_rank`` (the
  item's rank among the user's own items by baskets / by recency), ``ui_count_30d`` / ``_180d`` /
  ``_365d``, and when the data have quantities (purchase lines): ``ui_quantity`` (log units),
  ``ui_quantity_per_basket``, ``ui_quantity_last`` (units in the latest basket with the item),
  ``ui_quantity_last_ratio`` (latest over usual: a big last order lasts longer), ``ui_amount``,
  ``ui_unit_price_ratio`` (price paid over typical price: volume discounts);
* user × category: ``uc_count`` (baskets with items of the category), ``uc_days_since_last``;
* user: ``u_items``, ``u_baskets``, ``u_days_since_last``, ``u_tenure_days``, ``u_segment`` (code,
  -1 unknown), ``u_repeat_share`` (share of the user's items bought in 2+ baskets),
  ``u_retention_h`` (of the user's items of the H days before the last H, the share bought again in
  the last H; NaN without such items) and
  ``price_ratio`` (item price over the user's median item price).

The source of a candidate is the generator that ranked it best (ties: the earlier generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.candidates.base import FitData
from training.candidates.popularity import distinct_users

ITEM_FEATURES = (
    "item_users", "item_users_7d", "item_users_30d", "item_users_h", "item_users_season", "item_season_lift",
    "item_repeat_rate", "item_retention_h", "item_quantity_per_basket", "item_days_since_last", "item_days_since_first", "item_price", "item_price_band",
)
USER_ITEM_FEATURES = (
    "ui_count", "ui_decayed", "ui_count_h", "ui_count_prev_h", "ui_season", "ui_days_since_last",
    "ui_days_since_first", "ui_share", "ui_cycle", "ui_baskets_since_last", "ui_last5",
    "ui_count_rank", "ui_recency_rank", "ui_count_30d", "ui_count_180d", "ui_count_365d",
    "ui_quantity", "ui_quantity_per_basket", "ui_quantity_last", "ui_quantity_last_ratio", "ui_amount",
    "ui_unit_price_ratio",
    "uc_count", "uc_days_since_last",
)
USER_FEATURES = (
    "u_items", "u_baskets", "u_days_since_last", "u_tenure_days", "u_segment", "u_repeat_share", "u_retention_h",
    "price_ratio",
)
#: meaning and window of each non-generator feature ("H" is the horizon)
FEATURE_DOCS: dict[str, tuple[str, str]] = {
    "item_users": ("log1p distinct users who had the item", "all history"),
    "item_users_7d": ("log1p distinct users who had the item", "last 7 days"),
    "item_users_30d": ("log1p distinct users who had the item", "last 30 days"),
    "item_users_h": ("log1p distinct users who had the item", "last H days"),
    "item_users_season": ("log1p distinct users who had the item", "the H days that started one year ago"),
    "item_season_lift": ("log ratio of item users in the coming window last year to the H days before it", "one year ago"),
    "item_repeat_rate": ("share of the item's users who had it in 2+ baskets", "all history"),
    "item_retention_h": ("share of the item's users of the previous H days who had it again in the last H days", "last 2H days"),
    "item_quantity_per_basket": ("log1p units per basket of the item over all users (pack size)", "all history"),
    "item_days_since_last": ("days since anyone last had the item", "all history"),
    "item_days_since_first": ("days since anyone first had the item", "all history"),
    "item_price": ("typical unit price", "catalogue"),
    "item_price_band": ("price quintile (0-4, -1 unknown)", "catalogue"),
    "ui_count": ("baskets of the user with the item", "all history"),
    "ui_decayed": ("time-decayed interaction weight of the user with the item", "all history, half-life"),
    "ui_count_h": ("baskets of the user with the item", "last H days"),
    "ui_count_prev_h": ("baskets of the user with the item", "the H days before the last H"),
    "ui_season": ("baskets of the user with the item", "the H days that started one year ago"),
    "ui_days_since_last": ("days since the user last had the item (NaN: never)", "all history"),
    "ui_days_since_first": ("days since the user first had the item (NaN: never)", "all history"),
    "ui_share": ("share of the user's baskets holding the item", "all history"),
    "ui_cycle": ("days since last over the user's mean gap between baskets with the item", "all history"),
    "ui_baskets_since_last": ("the user's baskets after the last one with the item (NaN: never)", "all history"),
    "ui_last5": ("how many of the user's 5 latest baskets hold the item", "the user's last 5 baskets"),
    "ui_count_30d": ("baskets of the user with the item", "last 30 days"),
    "ui_count_180d": ("baskets of the user with the item", "last 180 days"),
    "ui_count_365d": ("baskets of the user with the item", "last 365 days"),
    "ui_quantity": ("log1p units of the item the user bought (NaN without quantities)", "all history"),
    "ui_quantity_per_basket": ("log1p units per basket of the item for the user", "all history"),
    "ui_quantity_last": ("log1p units of the item in the user's latest basket with it", "latest basket"),
    "ui_quantity_last_ratio": ("units in the latest basket over the user's units per basket of the item", "all history"),
    "ui_amount": ("log1p money the user spent on the item", "all history"),
    "ui_unit_price_ratio": ("unit price the user paid for the item over its typical price (volume discounts)", "all history"),
    "ui_count_rank": ("rank of the item among the user's items by baskets (1 = most; NaN: not the user's)", "all history"),
    "ui_recency_rank": ("rank of the item among the user's items by recency (1 = latest; NaN: not the user's)", "all history"),
    "uc_count": ("baskets of the user with items of the item's category", "all history"),
    "uc_days_since_last": ("days since the user last had an item of the category", "all history"),
    "u_items": ("distinct items of the user", "all history"),
    "u_baskets": ("baskets (orders) of the user", "all history"),
    "u_days_since_last": ("days since the user's last interaction", "all history"),
    "u_tenure_days": ("days since the user's first interaction", "all history"),
    "u_segment": ("segment / country code of the user (-1 unknown)", "customer table"),
    "u_repeat_share": ("share of the user's items bought in 2+ baskets", "all history"),
    "u_retention_h": ("share of the user's items of the previous H days bought again in the last H days", "last 2H days"),
    "price_ratio": ("item price over the median price of the user's items", "all history"),
}


def feature_docs(generators: list[str], horizon_days: float) -> list[dict]:
    """``[{name, meaning, window}]`` for every feature (for model documentation and MLflow)."""
    h = f"{horizon_days:g}"
    gen_docs = {
        "score": ("score of the {g} generator", "history before now"),
        "rank": ("rank in the {g} generator's list (rank_depth + 1 beyond it)", "history before now"),
        "rel": ("{g} score over its best score for this user", "history before now"),
    }
    out = []
    for name in feature_names(generators):
        if name in FEATURE_DOCS:
            meaning, window = FEATURE_DOCS[name]
        else:
            g, _, kind = name.rpartition("_")
            meaning, window = (x.format(g=g) for x in gen_docs[kind])
        window = window.replace("2H", f"{2 * horizon_days:g}").replace("H", h)
        out.append({"name": name, "meaning": meaning.replace("2H", f"{2 * horizon_days:g}").replace(" H ", f" {h} "),
                    "window": window})
    return out


#: per-pair values the interaction matrix must carry for these features (name: age window in days)
def history_windows(horizon_days: float) -> dict[str, tuple[float, float]]:
    h = float(horizon_days)
    return {
        "count_h": (0.0, h), "count_prev_h": (h, 2 * h), "season": (365.0 - h, 365.0),
        "count_30d": (0.0, 30.0), "count_180d": (0.0, 180.0), "count_365d": (0.0, 365.0),
    }


def feature_names(generators: list[str]) -> list[str]:
    per_gen = [f"{g}_{s}" for g in generators for s in ("score", "rank", "rel")]
    return per_gen + list(ITEM_FEATURES) + list(USER_ITEM_FEATURES) + list(USER_FEATURES)


@dataclass
class ItemStats:
    """Per item (aligned with the matrix columns) features, computed once per fit."""

    columns: dict[str, np.ndarray]
    category: np.ndarray
    price: np.ndarray
    users: np.ndarray
    n_categories: int

    @classmethod
    def from_data(cls, data: FitData, price: np.ndarray, horizon_days: float) -> ItemStats:
        m = data.matrix
        n = data.n_items
        h = float(horizon_days)
        users = distinct_users(data)
        season = distinct_users(data, 365.0, min_age_days=365.0 - h)
        before_season = distinct_users(data, 365.0 + h, min_age_days=365.0)
        repeat = np.bincount(m.indices[m.values["count"] >= 2], minlength=n) / np.maximum(users, 1.0)
        before = m.values["count_prev_h"] > 0
        again = before & (m.values["count_h"] > 0)
        retention = (np.bincount(m.indices[again], minlength=n) + 0.5) / (np.bincount(m.indices[before], minlength=n) + 2.0)
        last = np.full(n, np.nan)
        first = np.full(n, np.nan)
        if len(m.indices):
            agg = pd.DataFrame({"i": m.indices, "l": m.values["last_days"], "f": m.values["first_days"]}).groupby("i")
            agg = agg.agg(l=("l", "min"), f=("f", "max"))
            last[agg.index.to_numpy()] = agg["l"].to_numpy()
            first[agg.index.to_numpy()] = agg["f"].to_numpy()
        price = np.asarray(price, dtype=np.float64)
        band = np.full(n, -1.0)
        known = np.isfinite(price)
        if known.sum() >= 5:
            edges = np.quantile(price[known], [0.2, 0.4, 0.6, 0.8])
            band[known] = np.searchsorted(edges, price[known], side="right")
        if "quantity" in m.values:
            units = np.bincount(m.indices, weights=m.values["quantity"], minlength=n)
            baskets = np.bincount(m.indices, weights=m.values["count"], minlength=n)
            per_basket = np.where(baskets > 0, np.log1p(units / np.maximum(baskets, 1.0)), np.nan)
        else:
            per_basket = np.full(n, np.nan)
        columns = {
            "item_users": np.log1p(users),
            "item_users_7d": np.log1p(distinct_users(data, 7.0)),
            "item_users_30d": np.log1p(distinct_users(data, 30.0)),
            "item_users_h": np.log1p(distinct_users(data, h)),
            "item_users_season": np.log1p(season),
            "item_season_lift": np.log((season + 1.0) / (before_season + 1.0)),
            "item_repeat_rate": repeat,
            "item_retention_h": retention,
            "item_quantity_per_basket": per_basket,
            "item_days_since_last": last,
            "item_days_since_first": first,
            "item_price": price,
            "item_price_band": band,
        }
        return cls(
            columns={k: v.astype(np.float32) for k, v in columns.items()},
            category=data.item_category.astype(np.int64),
            price=price,
            users=users,
            n_categories=max(int(data.n_categories), 1),
        )


@dataclass
class UserHistory:
    """One user's history: sorted item columns with their aggregates (the interaction matrix's
    values, sliced), the user's basket count and segment code."""

    items: np.ndarray
    values: dict[str, np.ndarray]
    n_baskets: float
    segment: int


def top_items(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` best finite scores, best first (stable on ties)."""
    n = len(scores)
    if depth < n:
        top = np.argpartition(-scores, depth)[:depth]
    else:
        top = np.arange(n)
    top = top[np.isfinite(scores[top])]
    return top[np.argsort(-scores[top], kind="stable")]


def user_candidates(
    scores: list[np.ndarray],
    positive_only: list[bool],
    blocked: np.ndarray | None,
    n_candidates: int,
    rank_depth: int,
    orders: list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Union of the generators' lists for one user.

    ``orders`` (per generator, optional): all items best first, for generators whose scores do
    not depend on the user; their list is then a prefix of it rather than a sort.
    Returns ``(candidates, score_matrix, rank_matrix, best_source)`` where the matrices are
    ``(n_generators, n_candidates_in_union)``.
    """
    n_gen = len(scores)
    tops = []
    for g, (s, pos) in enumerate(zip(scores, positive_only)):
        order = orders[g] if orders is not None else None
        if order is not None:
            t = order if blocked is None else order[~blocked[order]]
            t = t[: rank_depth * 2]
            if pos:
                t = t[s[t] > 0]
            tops.append(t[:rank_depth])
            continue
        if blocked is not None or pos:
            s = s.copy()
            if blocked is not None:
                s[blocked] = -np.inf
            if pos:
                s[s <= 0] = -np.inf
        tops.append(top_items(s, rank_depth))
    union = np.unique(np.concatenate([t[:n_candidates] for t in tops])) if tops else np.empty(0, np.int64)
    ranks = np.full((n_gen, len(union)), rank_depth + 1, dtype=np.float32)
    sc = np.empty((n_gen, len(union)), dtype=np.float32)
    for g, (s, t) in enumerate(zip(scores, tops)):
        sc[g] = s[union]
        if len(t):
            pos = np.searchsorted(union, t)
            pos_ok = pos < len(union)
            hit = np.zeros(len(t), dtype=bool)
            hit[pos_ok] = union[pos[pos_ok]] == t[pos_ok]
            ranks[g, pos[hit]] = np.flatnonzero(hit) + 1
    best = np.argmin(ranks, axis=0) if n_gen else np.zeros(len(union), dtype=np.int64)
    return union, sc, ranks, best


def _retention(before: np.ndarray, after: np.ndarray) -> float:
    had = before > 0
    return float((after[had] > 0).mean()) if had.any() else np.nan


def candidate_features(
    union: np.ndarray,
    sc: np.ndarray,
    ranks: np.ndarray,
    hist: UserHistory,
    items: ItemStats,
) -> np.ndarray:
    """The feature matrix (rows: candidates, columns: :func:`feature_names`)."""
    n_gen, n = sc.shape
    nan = np.float32(np.nan)
    cols: list[np.ndarray] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for g in range(n_gen):
            s = sc[g]
            first = ranks[g] == 1
            top = s[first][0] if first.any() else nan
            cols += [s, ranks[g], s / top if np.isfinite(top) and top > 0 else np.full(n, nan, dtype=np.float32)]
        cols += [items.columns[name][union] for name in ITEM_FEATURES]
        # user × item
        h = hist.items
        v = hist.values
        if len(h):
            pos = np.minimum(np.searchsorted(h, union), len(h) - 1)
            found = h[pos] == union

            def pair(name, missing=0.0):
                return np.where(found, v[name][pos], missing)
        else:
            def pair(name, missing=0.0):
                return np.full(n, missing)
        count = pair("count")
        last = pair("last_days", nan)
        first_days = pair("first_days", nan)
        gap = (first_days - last) / (count - 1.0)
        cols += [
            count, pair("decayed"), pair("count_h"), pair("count_prev_h"), pair("season"), last, first_days,
            count / max(hist.n_baskets, 1.0), np.where(count >= 2, last / np.maximum(gap, 1.0), nan),
            pair("baskets_since_last", nan), pair("count_last5"),
        ]
        if len(h):
            by_count = np.empty(len(h))
            by_count[np.lexsort((v["last_days"], -v["count"]))] = np.arange(1, len(h) + 1)
            by_recency = np.empty(len(h))
            by_recency[np.lexsort((-v["count"], v["last_days"]))] = np.arange(1, len(h) + 1)
            cols += [np.where(found, by_count[pos], nan), np.where(found, by_recency[pos], nan)]
        else:
            cols += [np.full(n, nan), np.full(n, nan)]
        cols += [pair("count_30d"), pair("count_180d"), pair("count_365d")]
        if "quantity" in v:
            qty, q_last = pair("quantity", nan), pair("quantity_last", nan)
            per_basket = qty / np.maximum(count, 1.0)
            cols += [np.log1p(qty), np.log1p(per_basket), np.log1p(q_last), q_last / per_basket]
        else:
            cols += [np.full(n, nan)] * 4
        if "amount" in v:
            amount = pair("amount", nan)
            cols.append(np.log1p(amount))
            paid = amount / pair("quantity", nan) if "quantity" in v else np.full(n, nan)
            cols.append(paid / items.price[union])
        else:
            cols += [np.full(n, nan)] * 2
        # user × category
        cats = items.category[union]
        hcat = items.category[h] if len(h) else np.empty(0, np.int64)
        known = hcat >= 0
        if known.any():
            uc_count = np.bincount(hcat[known], weights=v["count"][known], minlength=items.n_categories)
            uc_last = np.full(items.n_categories, np.nan)
            order = np.argsort(-v["last_days"][known])  # later assignment wins: the most recent
            uc_last[hcat[known][order]] = v["last_days"][known][order]
            ok = cats >= 0
            cols += [np.where(ok, uc_count[np.maximum(cats, 0)], 0.0), np.where(ok, uc_last[np.maximum(cats, 0)], nan)]
        else:
            cols += [np.zeros(n), np.full(n, nan)]
        # user
        hp = items.price[h] if len(h) else np.empty(0)
        hp = hp[np.isfinite(hp)]
        user = [
            len(h),
            hist.n_baskets,
            v["last_days"].min() if len(h) else nan,
            v["first_days"].max() if len(h) else nan,
            hist.segment,
            float((v["count"] >= 2).mean()) if len(h) else nan,
            _retention(v["count_prev_h"], v["count_h"]) if len(h) else nan,
        ]
        cols += [np.full(n, x, dtype=np.float32) for x in user]
        cols.append(items.price[union] / np.median(hp) if len(hp) else np.full(n, nan))
    return np.column_stack(cols).astype(np.float32, copy=False)
