"""Recommendation data: interactions, the user × item matrix, market-basket rules and time splits.

Everything here is plain pandas / numpy / scipy and works on any user-item table, not only
on orders:

* :func:`interactions_from_events` turns the canonical ``events`` table into the generic
  interactions frame (``user_id, item_id, weight, timestamp, order_id``) with configurable
  event weights (view 1, cart 3, purchase 5, return negative, ...);
  :func:`load_interactions` reads a workspace's ``interactions`` table (ratings, clicks) when it
  has one, else its ``events``.
* :func:`build_interaction_matrix` aggregates the frame into an :class:`InteractionMatrix`: one
  CSR structure (users × items) carrying several aligned value arrays (summed weight,
  time-decayed weight, number of baskets, days since first and last interaction) plus the id maps.
* :func:`basket_matrix`, :func:`item_cooccurrence` and :func:`association_rules` give item
  co-occurrence within orders with support, confidence and lift.
* :func:`time_split`, :func:`random_split` and :func:`holdout_truth` build train/test splits
  and the relevance sets used by ``training.rec_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Default strength of each event type (the feature issue's example); returns count against an item.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"view": 1.0, "cart": 3.0, "purchase": 5.0, "return": -5.0}

#: Columns of the generic interactions frame; only user_id and item_id are required.
INTERACTION_COLUMNS = ("user_id", "item_id", "weight", "timestamp", "order_id", "quantity", "amount")
#: optional per-line quantities carried from events into interactions and summed per pair
QUANTITY_COLUMNS = ("quantity", "amount")

DAY = np.timedelta64(1, "D")
ITEM_RULES = "item_rules"  # features/item_rules.parquet: the market-basket rules write_interaction_tables writes


# -- the interactions frame ---------------------------------------------------------------------
def interactions_from_events(events: pd.DataFrame, event_weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Turn canonical ``events`` into the interactions frame.

    Each event becomes one row with ``weight = event_weights[event_type]``; event types absent from
    the mapping, or mapped to 0, are dropped, as are events without an item.
    """
    weights = DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights
    codes, kinds = pd.factorize(events["event_type"])
    lookup = np.array([float(weights.get(str(k), 0.0)) for k in kinds] + [0.0])
    w = lookup[codes]  # code -1 (missing type) picks the trailing 0
    keep = (w != 0.0) & events["item_id"].notna().to_numpy()
    ev = events[keep]
    out = pd.DataFrame(
        {
            "user_id": ev["customer_id"].astype(str).to_numpy(),
            "item_id": ev["item_id"].astype(str).to_numpy(),
            "weight": w[keep],
        }
    )
    if "timestamp" in ev.columns:
        out["timestamp"] = pd.to_datetime(ev["timestamp"]).astype("datetime64[us]").to_numpy()
    if "order_id" in ev.columns and ev["order_id"].notna().any():
        out["order_id"] = ev["order_id"].astype("string").fillna("").to_numpy()
    for col in QUANTITY_COLUMNS:  # units and money of purchase lines (wholesale pack sizes)
        if col in ev.columns and ev[col].notna().any():
            out[col] = pd.to_numeric(ev[col], errors="coerce").to_numpy(np.float64)
    return out


def normalize_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` as a clean interactions frame: string ids, float weight (1 if absent),
    ``datetime64[us]`` timestamp and string order_id when present, plus ``basket``: an integer
    code per basket (order, else user-day, else row; see :func:`basket_keys`). ``customer_id``
    is accepted for ``user_id``. Rows without ids (or with an unparseable timestamp) are dropped.
    A frame that already has an integer ``basket`` column is returned unchanged."""
    if "basket" in df.columns and df["basket"].dtype.kind == "i" and "weight" in df.columns:
        return df
    if "user_id" not in df.columns and "customer_id" in df.columns:
        df = df.rename(columns={"customer_id": "user_id"})
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise ValueError(f"interactions need column(s) {missing}; got {list(df.columns)}")
    keep = (df["user_id"].notna() & df["item_id"].notna()).to_numpy().copy()
    out = {"user_id": df["user_id"].astype(str).to_numpy(), "item_id": df["item_id"].astype(str).to_numpy()}
    if "weight" in df.columns:
        out["weight"] = pd.to_numeric(df["weight"], errors="coerce").fillna(1.0).to_numpy(np.float64)
    else:
        out["weight"] = np.ones(len(df))
    if "timestamp" in df.columns and df["timestamp"].notna().any():
        ts = pd.to_datetime(df["timestamp"], errors="coerce").astype("datetime64[us]").to_numpy()
        out["timestamp"] = ts
        keep &= ~np.isnat(ts)
    if "order_id" in df.columns:
        out["order_id"] = df["order_id"].astype("string").fillna("").astype(str).to_numpy()
    for col in QUANTITY_COLUMNS:
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    out = pd.DataFrame(out)[keep].reset_index(drop=True)
    out["basket"] = pd.factorize(basket_keys(out))[0].astype(np.int64)
    return out


def load_interactions(workspace, event_weights: dict[str, float] | None = None) -> pd.DataFrame:
    """The workspace's ``interactions`` table (generic ratings/clicks) if it has one, else its
    ``events`` turned into interactions with ``event_weights``."""
    if workspace.has_table("interactions"):
        return normalize_interactions(workspace.read_table("interactions"))
    return interactions_from_events(workspace.read_table("events"), event_weights)


def time_decay(timestamps: np.ndarray, now: np.datetime64, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age_days / half_life_days)``; all ones when ``half_life_days`` is None."""
    if half_life_days is None:
        return np.ones(len(timestamps))
    age = np.maximum((now - timestamps) / DAY, 0.0)
    return np.power(0.5, age / float(half_life_days))


# -- the matrix -----------------------------------------------------------------------------------
@dataclass
class InteractionMatrix:
    """A users × items CSR structure with aligned value arrays and the id maps.

    ``values`` holds one array per aggregate, aligned with ``indices``:

    * ``weight``: sum of interaction weights of the pair;
    * ``decayed``: the same sum with each interaction weighted by ``time_decay``;
    * ``count``: number of distinct baskets (orders, else days, else rows) with the pair;
    * ``last_days`` / ``first_days``: days from the last / first interaction to ``now``
      (0 when the data have no timestamps).

    Only pairs whose summed weight is positive are kept (returns can cancel purchases).
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: dict[str, np.ndarray]
    user_ids: np.ndarray
    item_ids: np.ndarray
    now: np.datetime64 | None = None
    user_index: dict[str, int] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)
    window_names: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.user_index:
            self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        if not self.item_index:
            self.item_index = {u: i for i, u in enumerate(self.item_ids)}

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    def csr(self, value: str = "weight") -> sp.csr_matrix:
        """The users × items matrix of one value (float32)."""
        return sp.csr_matrix(
            (self.values[value].astype(np.float32), self.indices, self.indptr), shape=self.shape, copy=False
        )

    def take(self, rows: np.ndarray) -> InteractionMatrix:
        """The sub-matrix of the given user rows (in that order), sharing the item map."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if len(rows) == 1:
            sel = slice(int(starts[0]), int(ends[0]))
        else:
            sel = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return InteractionMatrix(
            indptr=indptr, indices=self.indices[sel], values={k: v[sel] for k, v in self.values.items()},
            user_ids=self.user_ids[rows], item_ids=self.item_ids, now=self.now,
            user_index={u: j for j, u in enumerate(self.user_ids[rows])}, item_index=self.item_index,
            window_names=self.window_names,
        )

    @classmethod
    def from_items(cls, item_idx, like: InteractionMatrix, user_id: str = "") -> InteractionMatrix:
        """A one-row matrix for an anonymous basket: each item once, just now."""
        idx = np.unique(np.asarray(item_idx, dtype=np.int32))
        ones = np.ones(len(idx))
        zero = lambda k: k.endswith("_days") or k in like.window_names or k == "baskets_since_last"  # noqa: E731
        values = {k: (np.zeros(len(idx)) if zero(k) else ones) for k in like.values}
        return cls(
            indptr=np.array([0, len(idx)], dtype=np.int64), indices=idx, values=values,
            user_ids=np.array([user_id], dtype=object), item_ids=like.item_ids, now=like.now,
            user_index={user_id: 0}, item_index=like.item_index, window_names=like.window_names,
        )

    def fold_in(self, u: int | None, item_idx, user_id: str = "") -> InteractionMatrix:
        """A one-row matrix: row ``u`` of this matrix (none for a new customer) plus one basket of
        ``item_idx`` just now, each item once (counts and weights +1, last-seen days 0; see :meth:`from_items`)."""
        new = InteractionMatrix.from_items(item_idx, self, user_id)
        if u is None or self.indptr[u] == self.indptr[u + 1]:
            return new
        old_idx, old_vals = self.user_items(u)
        idx = np.union1d(old_idx, new.indices).astype(np.int32)
        at_old, at_new = np.searchsorted(idx, old_idx), np.searchsorted(idx, new.indices)
        values = {}
        for k, v in old_vals.items():
            out = np.zeros(len(idx))
            out[at_old] = v
            if k == "first_days":
                out[at_new] = np.where(np.isin(new.indices, old_idx), out[at_new], 0.0)
            elif k.endswith("_days") or k == "baskets_since_last":
                out[at_new] = 0.0
            else:
                out[at_new] += new.values[k]
            values[k] = out
        return InteractionMatrix(
            indptr=np.array([0, len(idx)], dtype=np.int64), indices=idx, values=values,
            user_ids=np.array([user_id], dtype=object), item_ids=self.item_ids, now=self.now,
            user_index={user_id: 0}, item_index=self.item_index, window_names=self.window_names,
        )

    def user_items(self, u: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        lo, hi = self.indptr[u], self.indptr[u + 1]
        return self.indices[lo:hi], {k: v[lo:hi] for k, v in self.values.items()}

    def to_frame(self) -> pd.DataFrame:
        """Long format: user_id, item_id and one column per value."""
        rows = np.repeat(np.arange(len(self.user_ids)), np.diff(self.indptr))
        return pd.DataFrame(
            {"user_id": self.user_ids[rows], "item_id": self.item_ids[self.indices], **self.values}
        )


def basket_keys(df: pd.DataFrame) -> np.ndarray:
    """One key per basket: the order id, else user and day, else the row itself."""
    if "basket" in df.columns:
        return df["basket"].to_numpy()
    if "order_id" in df.columns:
        oid = df["order_id"].astype(str).to_numpy()
        if (oid != "").any():
            return np.where(oid != "", oid, df["user_id"].to_numpy() + "|row" + np.arange(len(df)).astype(str))
    if "timestamp" in df.columns:
        day = df["timestamp"].to_numpy().astype("datetime64[D]").astype(str)
        return df["user_id"].to_numpy() + "|" + day
    return np.arange(len(df)).astype(str)


def build_interaction_matrix(
    interactions: pd.DataFrame,
    now: pd.Timestamp | np.datetime64 | None = None,
    half_life_days: float | None | dict[str, float | None] = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    age_windows: dict[str, tuple[float, float]] | None = None,
    recent_baskets: int = 5,
) -> InteractionMatrix:
    """Aggregate an interactions frame into an :class:`InteractionMatrix`.

    ``now`` (default: the latest timestamp) anchors the time decay and the ``*_days`` values.
    ``half_life_days`` is the half-life of the ``decayed`` value, or a dict ``{value name:
    half-life}`` to get several decayed sums at once (e.g. ``{"decayed": 90, "recent": 30}``).
    ``age_windows`` adds counts of baskets whose age in days lies in ``[lo, hi)``, e.g.
    ``{"season": (275, 365)}`` for the same 90 days one year back. With the user's baskets numbered
    from the most recent one (0) back, ``baskets_since_last`` is the number of the user's baskets
    after the last one holding the item, and ``count_last{recent_baskets}`` (``count_last5``) how
    many of the user's ``recent_baskets`` latest baskets hold it. When the frame has ``quantity`` /
    ``amount`` columns (purchase lines), their sums per pair are values too, with ``quantity_last``
    / ``amount_last`` for the pair's latest basket.
    ``user_ids`` / ``item_ids`` fix the row / column order (ids outside them are dropped);
    by default they are the sorted ids present.
    """
    df = normalize_interactions(interactions)
    has_time = "timestamp" in df.columns
    if has_time:
        ts = df["timestamp"].to_numpy()
        now64 = np.datetime64(pd.Timestamp(now).to_datetime64(), "us") if now is not None else (
            ts.max() if len(ts) else np.datetime64("1970-01-01", "us")
        )
    else:
        now64 = None
    uids = np.asarray(sorted(df["user_id"].unique()) if user_ids is None else user_ids, dtype=object)
    iids = np.asarray(sorted(df["item_id"].unique()) if item_ids is None else item_ids, dtype=object)
    u = pd.Index(uids).get_indexer(df["user_id"])
    i = pd.Index(iids).get_indexer(df["item_id"])
    ok = (u >= 0) & (i >= 0)
    df = df[ok]
    u, i = u[ok].astype(np.int64), i[ok].astype(np.int64)
    w = df["weight"].to_numpy(dtype=np.float64)
    half_lives = half_life_days if isinstance(half_life_days, dict) else {"decayed": half_life_days}
    if has_time:
        ts = df["timestamp"].to_numpy()
        age = np.maximum((now64 - ts) / DAY, 0.0)
    else:
        age = np.zeros(len(df))
    pair = u * len(iids) + i
    g = pd.DataFrame({"pair": pair, "w": w, "age": age})
    for name, hl in half_lives.items():
        g["d_" + name] = w * (time_decay(ts, now64, hl) if has_time else 1.0)
    agg = g.groupby("pair", sort=True).agg(
        weight=("w", "sum"),
        last_days=("age", "min"),
        first_days=("age", "max"),
        **{name: ("d_" + name, "sum") for name in half_lives},
    )
    pos = w > 0
    basket = df["basket"].to_numpy()
    counts = {"count": pos}
    for name, (lo, hi) in (age_windows or {}).items():
        counts[name] = pos & (age >= lo) & (age < hi) if has_time else np.zeros(len(df), dtype=bool)
    # the user's baskets numbered from the most recent (0) back: "baskets since" and "in the last n"
    b_rank = _basket_recency(u, basket, age)
    counts[f"count_last{recent_baskets}"] = pos & (b_rank < recent_baskets)
    where = np.searchsorted(agg.index.to_numpy(), pair)
    for name, mask in counts.items():
        distinct = pd.DataFrame({"pair": pair[mask], "b": basket[mask]}).drop_duplicates()
        n = np.bincount(np.searchsorted(agg.index.to_numpy(), distinct["pair"].to_numpy()), minlength=len(agg))
        agg[name] = n.astype(np.float64)
    since = np.full(len(agg), np.inf)
    np.minimum.at(since, where[pos], b_rank[pos])
    agg["baskets_since_last"] = since
    quantities = [c for c in QUANTITY_COLUMNS if c in df.columns]
    for col in quantities:  # totals, and the quantity of the pair's latest basket
        q = np.where(pos, np.nan_to_num(df[col].to_numpy(np.float64)), 0.0)
        agg[col] = np.bincount(where, weights=q, minlength=len(agg))
        latest = pos & (b_rank == since[where])
        agg[col + "_last"] = np.bincount(where[latest], weights=q[latest], minlength=len(agg))
    agg = agg[agg["weight"] > 0]
    pairs = agg.index.to_numpy()
    rows, cols = pairs // len(iids), pairs % len(iids)
    indptr = np.zeros(len(uids) + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    indptr = np.cumsum(indptr)
    values = {
        "weight": agg["weight"].to_numpy(np.float64),
        "count": np.maximum(agg["count"].to_numpy(np.float64), 1.0),
        "last_days": agg["last_days"].to_numpy(np.float64),
        "first_days": agg["first_days"].to_numpy(np.float64),
        **{name: np.maximum(agg[name].to_numpy(np.float64), 0.0) for name in half_lives},
        **{name: agg[name].to_numpy(np.float64) for name in (age_windows or {})},
        f"count_last{recent_baskets}": agg[f"count_last{recent_baskets}"].to_numpy(np.float64),
        "baskets_since_last": agg["baskets_since_last"].to_numpy(np.float64),
        **{c: agg[c].to_numpy(np.float64) for q in quantities for c in (q, q + "_last")},
    }
    return InteractionMatrix(
        indptr=indptr, indices=cols.astype(np.int32), values=values, user_ids=uids, item_ids=iids, now=now64,
        user_index={x: j for j, x in enumerate(uids)}, item_index={x: j for j, x in enumerate(iids)},
        window_names=tuple(age_windows or ()),
    )


def _basket_recency(user: np.ndarray, basket: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Per row, the rank of its basket among the user's baskets, newest first (0 = the latest)."""
    b = pd.DataFrame({"u": user, "b": basket, "age": age}).groupby(["u", "b"], sort=False)["age"].min()
    b = b.reset_index().sort_values(["u", "age", "b"], kind="stable")
    b["r"] = b.groupby("u").cumcount()
    lookup = pd.Series(b["r"].to_numpy(), index=pd.MultiIndex.from_arrays([b["u"].to_numpy(), b["b"].to_numpy()]))
    return lookup.reindex(pd.MultiIndex.from_arrays([user, basket])).to_numpy(np.float64)


# -- baskets and market-basket rules --------------------------------------------------------------
def basket_matrix(interactions: pd.DataFrame, item_index: dict[str, int] | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary baskets × items matrix (a basket is an order, else a user-day) and the item ids of
    its columns. Only positive-weight rows are baskets' contents."""
    df = normalize_interactions(interactions)
    df = df[df["weight"].to_numpy() > 0]
    if item_index is None:
        item_ids = np.asarray(sorted(df["item_id"].unique()), dtype=object)
    else:
        item_ids = np.empty(len(item_index), dtype=object)
        for k, v in item_index.items():
            item_ids[v] = k
    cols = pd.Index(item_ids).get_indexer(df["item_id"])
    ok = cols >= 0
    codes = pd.factorize(df["basket"].to_numpy()[ok])[0]
    cols = cols[ok]
    m = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (codes, cols)),
        shape=(int(codes.max()) + 1 if len(codes) else 0, len(item_ids)),
    )
    m.sum_duplicates()
    m.data[:] = 1.0  # an item twice in a basket counts once
    return m, item_ids


def item_cooccurrence(baskets: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Items × items count of baskets holding both items (diagonal removed) and the basket count
    of each item."""
    b = baskets.astype(np.float32)
    co = (b.T @ b).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    return co, np.asarray(b.sum(axis=0)).ravel()


def pair_rules(baskets: sp.csr_matrix) -> dict[str, sp.csr_matrix | np.ndarray | int]:
    """All pairwise rules of a baskets × items matrix as aligned items × items sparse matrices:
    ``count`` n(A,B), ``support``, ``confidence`` (row A → column B) and ``lift``; plus the
    basket count of each item (``item_count``) and the number of baskets (``n_baskets``)."""
    n = baskets.shape[0]
    co, item_n = item_cooccurrence(baskets)
    co = co.tocsr()
    co.sort_indices()
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    count = co.data.astype(np.float64)
    conf = count / np.maximum(item_n[rows], 1.0)
    lift = conf / np.maximum(item_n[co.indices] / max(n, 1), 1e-12)

    def like(data):
        return sp.csr_matrix((data, co.indices, co.indptr), shape=co.shape)

    return {
        "count": like(count), "support": like(count / max(n, 1)), "confidence": like(conf), "lift": like(lift),
        "item_count": item_n, "n_baskets": n,
    }


def association_rules(
    events: pd.DataFrame,
    min_support: float = 0.001,
    min_confidence: float = 0.0,
    min_lift: float = 0.0,
    min_count: int = 2,
    max_rules: int | None = None,
) -> pd.DataFrame:
    """Pairwise market-basket rules ``antecedent → consequent`` over baskets (orders).

    ``events`` is the canonical events table (purchases are used) or an interactions frame.
    With N baskets, n(A) baskets holding A and n(A,B) holding both:

    * ``support = n(A,B) / N``
    * ``confidence = n(A,B) / n(A)`` (how often B is in a basket that has A)
    * ``lift = confidence / (n(B) / N)`` (>1: bought together more often than by chance)

    Rules with ``support >= min_support``, ``count >= min_count``, ``confidence >= min_confidence``
    and ``lift >= min_lift`` are returned, sorted by lift then confidence, descending.
    """
    if "customer_id" in events.columns and "event_type" in events.columns:
        events = interactions_from_events(events, {"purchase": 1.0})
    baskets, item_ids = basket_matrix(events)
    cols = ["antecedent", "consequent", "support", "confidence", "lift", "count"]
    if baskets.shape[0] == 0:
        return pd.DataFrame(columns=cols)
    rules = pair_rules(baskets)
    co = rules["count"].tocoo()
    keep = (
        (rules["support"].data >= min_support)
        & (co.data >= min_count)
        & (rules["confidence"].data >= min_confidence)
        & (rules["lift"].data >= min_lift)
    )
    out = pd.DataFrame(
        {
            "antecedent": item_ids[co.row[keep]],
            "consequent": item_ids[co.col[keep]],
            "support": rules["support"].data[keep],
            "confidence": rules["confidence"].data[keep],
            "lift": rules["lift"].data[keep],
            "count": co.data[keep].astype(np.int64),
        }
    ).sort_values(["lift", "confidence", "antecedent", "consequent"], ascending=[False, False, True, True])
    if max_rules is not None:
        out = out.head(max_rules)
    return out.reset_index(drop=True)


# -- splits ----------------------------------------------------------------------------------------
def time_split(
    interactions: pd.DataFrame, cutoff, window_days: float | None = None, time_col: str = "timestamp"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train: rows with ``timestamp < cutoff``; test: rows in ``[cutoff, cutoff + window_days)``
    (everything from ``cutoff`` on when ``window_days`` is None)."""
    cutoff = pd.Timestamp(cutoff)
    ts = pd.to_datetime(interactions[time_col])
    train = interactions[(ts < cutoff).to_numpy()]
    later = ts >= cutoff
    if window_days is not None:
        later &= ts < cutoff + pd.Timedelta(days=float(window_days))
    return train, interactions[later.to_numpy()]


def random_split(
    interactions: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0, user_col: str = "user_id", item_col: str = "item_id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``test_fraction`` of each user's distinct items (at least one item is kept in
    train), for data without timestamps. Deterministic for a given seed."""
    pairs = interactions[[user_col, item_col]].drop_duplicates()
    rng = np.random.default_rng(seed)
    r = pd.Series(rng.random(len(pairs)), index=pairs.index)
    rank = r.groupby(pairs[user_col].to_numpy()).rank(method="first")
    size = pairs.groupby(user_col)[item_col].transform("size")
    test_pairs = pairs[(rank <= np.floor(size * test_fraction)).to_numpy() & (size > 1).to_numpy()]
    key = interactions[user_col].astype(str) + "\x1f" + interactions[item_col].astype(str)
    test_keys = set(test_pairs[user_col].astype(str) + "\x1f" + test_pairs[item_col].astype(str))
    is_test = key.isin(test_keys).to_numpy()
    return interactions[~is_test], interactions[is_test]


def holdout_truth(
    train: pd.DataFrame, test: pd.DataFrame, user_col: str = "user_id", item_col: str = "item_id"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Relevance sets of the evaluation protocol, as (user_id, item_id) frames.

    * all: distinct items each test user interacted with in ``test``, for users who also have
      history in ``train``;
    * new: of those, the items the user never had in ``train`` (users left with none are dropped).
    """
    test = test[test["weight"] > 0] if "weight" in test.columns else test
    known = set(train[user_col].astype(str).unique())
    rel = test[[user_col, item_col]].astype(str).drop_duplicates()
    rel = rel[rel[user_col].isin(known)].rename(columns={user_col: "user_id", item_col: "item_id"})
    seen = train[[user_col, item_col]].astype(str).drop_duplicates().rename(columns={user_col: "user_id", item_col: "item_id"})
    merged = rel.merge(seen.assign(_seen=True), on=["user_id", "item_id"], how="left")
    new = merged[merged["_seen"].isna()][["user_id", "item_id"]]
    return rel.reset_index(drop=True), new.reset_index(drop=True)


# -- workspace output ----------------------------------------------------------------------------
def write_interaction_tables(workspace, event_weights: dict[str, float] | None = None, min_support: float = 0.001) -> dict:
    """Write ``features/interactions.parquet`` (aggregated user × item pairs) and
    ``features/item_rules.parquet`` (market-basket rules) into the workspace."""
    inter = load_interactions(workspace, event_weights)
    mat = build_interaction_matrix(inter)
    workspace.write_table("interactions", mat.to_frame(), kind="features")
    rules = association_rules(inter, min_support=min_support)
    workspace.write_table(ITEM_RULES, rules, kind="features")
    return {"pairs": int(len(mat.indices)), "users": len(mat.user_ids), "items": len(mat.item_ids), "rules": len(rules)}
