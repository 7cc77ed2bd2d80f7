"""Personalised recommendations: candidate generators + a LightGBM LambdaRank re-ranker.

``Recommender`` is a scikit-learn style estimator (parameters in ``__init__``, learned state in
trailing-underscore attributes) that runs on any user-item table::

    rec = Recommender().fit(interactions, items=items, users=users)   # user_id, item_id[, weight, timestamp, order_id]
    rec.recommend(["12347"], k=10, exclude_seen=False)                 # user_id, item_id, score, rank, source
    rec.recommend_for_items(["85123A", "71053"])                       # anonymous basket / session
    rec.similar_items("85123A"); rec.bought_together("85123A")

How ``fit`` works
-----------------
1. Candidate generators (``training/candidates``) are fitted on the data before an inner cutoff
   (``now - rank_window_days``; a random per-user hold-out when there are no timestamps).
2. For the users active in the inner window (a random sample of at most ``rank_max_users``), the
   union of the generators' top lists is built and each candidate gets features (generator scores
   and ranks, item popularity and trend, price band, how often and how recently the user bought the
   item and its category, the user's segment). Two modes are chosen separately: ``all`` (labels:
   every item bought in the window, the user's own items included) and ``new`` (already-bought items
   excluded from candidates and labels).
3. **Selection** (``_select``): the labelled users are split 70/30 by a hash of their id. On the 70%,
   blend weights of the generators are searched (:func:`search_blend`: a weighted reciprocal-rank
   fusion ``sum_g w_g / (60 + rank_g)``, greedy over a few weights per generator, generators at 0
   dropped) and a LambdaRank model is trained; both are scored by nDCG@10 on the 30%. The re-ranker
   is used only if it beats the blend there (then refitted on every labelled user); otherwise the
   mode ranks by the blend, its weights searched again on every labelled user. The choice, each
   generator's nDCG@10 alone and both check scores are kept in ``selection_`` (logged to MLflow and
   the evaluation JSON). ``use_ranker=True`` forces the re-ranker, ``use_ranker=False`` skips the
   inner split and ranks by the equal-weight fusion.
4. The generators are refitted on all the data; ``recommend`` ranks with the ``all`` choice when
   ``exclude_seen=False`` and with the ``new`` one when ``exclude_seen=True``.

Fit time is bounded for large catalogues: EASE (a dense items × items inverse, cubic in items) is
fitted on the ``ease_max_items`` most popular items (5,000 by default; None for all), and the
ranker and the selection use at most ``rank_max_users`` labelled users per inner window (2,500 by
default, a random sample; None for all): on a large shop the ranker's training and the candidates'
features grow with the users and were most of the fit time, while a few thousand users suffice to
learn the ranking (docs/experiments.md). The full
search is ``Recommender(ease_max_items=None, rank_max_users=None)`` with ``fit(tune=True)``.

With ``fit(tune=True)`` the generators' hyperparameters (:data:`TUNING_GRID`) are first chosen
on an inner validation split; the chosen values are recorded in ``best_params_`` and used by that
fit, while the constructor's parameters stay as given (scikit-learn's contract: ``clone`` gives
the untuned model).

Every answer says which ``source`` produced each item: the generator that ranked it best
(``buy_again``, ``frequency``, ``als``, ``bm25``, ``ease``, ``cooc``, ``popular``, ``trending``,
``popular_segment``), or a cold-start fallback: ``popular_<segment column>`` (e.g.
``popular_country``) for a new customer, ``popular_category`` for a new item, ``popular`` /
``catalogue`` when filters leave too few candidates.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from features.interactions import (
    InteractionMatrix,
    build_interaction_matrix,
    holdout_truth,
    normalize_interactions,
    random_split,
    time_split,
)
from training.candidates import (
    ALSGenerator,
    BuyAgainGenerator,
    CandidateGenerator,
    CooccurrenceGenerator,
    EASEGenerator,
    GENERATOR_NAMES,
    OWN_ITEM_GENERATORS,
    FitData,
    FrequencyGenerator,
    ItemKNNGenerator,
    PopularityGenerator,
    Query,
    SeasonalGenerator,
    SegmentPopularityGenerator,
    TrendingGenerator,
)
from training.candidates.union import (
    ItemStats,
    UserHistory,
    candidate_features,
    feature_names,
    history_windows,
    user_candidates,
)
from training.rec_metrics import ndcg_of_scores, ranking_metrics

log = logging.getLogger(__name__)

DEFAULT_GENERATORS = ("buy_again", "frequency", "als", "bm25", "ease", "cooc", "popular", "trending", "popular_segment", "seasonal")
FILTER_KEYS = ("include_categories", "exclude_categories", "exclude_items", "allowed_items", "min_price", "max_price")
RRF_K = 60.0
CHUNK = 512
#: the hyperparameter grid of ``fit(tune=True)``: per generator, the settings tried (constructor names)
TUNING_GRID = {
    "als": [dict(als_factors=f, als_alpha=a) for f in (32, 64, 128) for a in (1.0, 3.0, 10.0)],
    "bm25": [dict(knn_neighbours=n) for n in (50, 100, 200)],
    "ease": [dict(ease_l2=l2) for l2 in (100.0, 500.0, 2000.0)],
    "buy_again": [dict(buy_again_half_life_days=h) for h in (30.0, 90.0, 180.0, 365.0)],
    "cooc": [dict(cooc_neighbours=n) for n in (20, 50, 100)],
}
EVALUATION_NAME = "recommender_evaluation"  # reports/recommender_evaluation.json: the backtest against each generator


def evaluation_json(reports_dir) -> "os.PathLike":
    """Where the recommender's backtest result (``evaluate_time_split``) is written as JSON."""
    from pathlib import Path

    return Path(reports_dir) / f"{EVALUATION_NAME}.json"


def check_filters(filters: dict | None) -> dict:
    """Validate a filters dict; an unknown key is a ValueError that names it."""
    if not filters:
        return {}
    if not isinstance(filters, dict):
        filters = {k: v for k, v in vars(filters).items() if v is not None}
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise ValueError(f"unknown filter key(s) {unknown}; allowed: {list(FILTER_KEYS)}")
    out = {}
    for key, value in filters.items():
        if value is None:
            continue
        if key in ("min_price", "max_price"):
            out[key] = float(value)
        else:
            out[key] = [str(v) for v in ([value] if isinstance(value, str) else value)]
    return out


@dataclass
class _State:
    """Everything fitted on one slice of data (the inner split, or all of it)."""

    matrix: InteractionMatrix
    generators: list[CandidateGenerator]
    items: ItemStats
    user_segment: np.ndarray
    user_baskets: np.ndarray
    segment_popularity: SegmentPopularityGenerator | None = None
    inactive: np.ndarray | None = None

    def __post_init__(self):
        never = self.items.users == 0
        self.inactive = never if never.any() else None

    def query(self, uidx: np.ndarray) -> Query:
        uidx = np.asarray(uidx, dtype=np.int64)
        return Query(uidx=uidx, history=self.matrix.take(uidx), segment=self.user_segment[uidx])

    def scores(self, query: Query) -> list[np.ndarray]:
        return [g.score(query) for g in self.generators]

    def history(self, query: Query, row: int) -> UserHistory:
        h = query.history
        lo, hi = h.indptr[row], h.indptr[row + 1]
        v = h.values
        u = int(query.uidx[row])
        n_baskets = float(self.user_baskets[u]) if u >= 0 else float(v["count"][lo:hi].max(initial=1.0))
        return UserHistory(
            items=h.indices[lo:hi], values={k: a[lo:hi] for k, a in v.items()},
            n_baskets=n_baskets, segment=int(query.segment[row]),
        )


class Recommender(BaseEstimator):
    """Top-N recommendations from implicit ALS, item-kNN, EASE, co-occurrence, buy-again and
    popularity candidates, re-ranked by LightGBM LambdaRank. See the module docstring.

    Learned: ``state_`` (the generators fitted on all the data), ``rankers_`` and ``ranker_info_``
    (the re-rankers of the modes that use one), ``blend_weights_`` (per mode, the generators' weights
    when ranking without a re-ranker), ``selection_`` (what was chosen and why),
    the catalogue (``item_ids_``, ``item_index_``, ``item_price_``, ``item_category_``,
    ``category_names_``, ``segment_names_``), ``best_params_`` (the hyperparameters chosen by
    ``fit(tune=True)``, ``{}`` without tuning), ``tuning_`` (the tuning grid with its scores),
    ``fit_seconds_`` (wall) and ``fit_cpu_`` (CPU seconds per phase of the fit, and ``total``).
    """

    def __init__(
        self,
        generators: tuple[str, ...] = DEFAULT_GENERATORS,
        n_candidates: int = 50,
        rank_depth: int = 200,
        history_half_life_days: float | None = 90.0,
        buy_again_half_life_days: float | None = 180.0,
        als_factors: int = 64,
        als_regularization: float = 0.05,
        als_alpha: float = 3.0,
        als_iterations: int = 15,
        knn_neighbours: int = 100,
        ease_l2: float = 500.0,
        ease_max_items: int | None = 5000,
        cooc_neighbours: int = 50,
        cooc_min_count: int = 2,
        popularity_window_days: float | None = None,
        trending_days: float = 30.0,
        use_ranker: bool | str = "auto",
        rank_window_days: float = 90.0,
        rank_windows: int = 1,
        rank_season_window: bool = True,
        ranker_n_estimators: int = 150,
        ranker_learning_rate: float = 0.05,
        ranker_num_leaves: int = 31,
        ranker_negatives: int = 60,
        ranker_bags: int = 1,
        rank_max_users: int | None = 2500,
        segment_col: str | None = None,
        random_state: int = 0,
        num_threads: int = 0,
        show_progress: bool = True,
    ):
        self.generators = generators
        self.n_candidates = n_candidates
        self.rank_depth = rank_depth
        self.history_half_life_days = history_half_life_days
        self.buy_again_half_life_days = buy_again_half_life_days
        self.als_factors = als_factors
        self.als_regularization = als_regularization
        self.als_alpha = als_alpha
        self.als_iterations = als_iterations
        self.knn_neighbours = knn_neighbours
        self.ease_l2 = ease_l2
        self.ease_max_items = ease_max_items
        self.cooc_neighbours = cooc_neighbours
        self.cooc_min_count = cooc_min_count
        self.popularity_window_days = popularity_window_days
        self.trending_days = trending_days
        self.use_ranker = use_ranker
        self.rank_window_days = rank_window_days
        self.rank_windows = rank_windows
        self.rank_season_window = rank_season_window
        self.ranker_n_estimators = ranker_n_estimators
        self.ranker_learning_rate = ranker_learning_rate
        self.ranker_num_leaves = ranker_num_leaves
        self.ranker_negatives = ranker_negatives
        self.ranker_bags = ranker_bags
        self.rank_max_users = rank_max_users
        self.segment_col = segment_col
        self.random_state = random_state
        self.num_threads = num_threads
        self.show_progress = show_progress

    # ------------------------------------------------------------------ generators
    def _make_generator(self, name: str, params: dict) -> CandidateGenerator:
        """A fresh generator ``name`` configured from ``params`` (this fit's hyperparameters)."""
        p = params
        if name == "buy_again":
            return BuyAgainGenerator(value="buy_again")
        if name == "frequency":
            return FrequencyGenerator()
        if name in ("als", "bpr"):
            return ALSGenerator(
                kind=name, factors=p["als_factors"], regularization=p["als_regularization"], alpha=p["als_alpha"],
                iterations=p["als_iterations"], random_state=p["random_state"],
            )
        if name in ("bm25", "cosine"):
            return ItemKNNGenerator(similarity=name, neighbours=p["knn_neighbours"])
        if name == "ease":
            return EASEGenerator(l2=p["ease_l2"], max_items=p["ease_max_items"] or 10**9)
        if name == "cooc":
            return CooccurrenceGenerator(neighbours=p["cooc_neighbours"], min_count=p["cooc_min_count"])
        if name == "popular":
            return PopularityGenerator(window_days=p["popularity_window_days"])
        if name == "trending":
            return TrendingGenerator(recent_days=p["trending_days"])
        if name == "popular_segment":
            return SegmentPopularityGenerator(window_days=p["popularity_window_days"])
        if name == "seasonal":
            return SeasonalGenerator(value="season")
        raise ValueError(f"unknown generator {name!r}")

    @staticmethod
    def _half_lives(params: dict) -> dict[str, float | None]:
        return {"decayed": params["history_half_life_days"], "buy_again": params["buy_again_half_life_days"]}

    def _fit_state(self, df: pd.DataFrame, now, params: dict, progress=None) -> _State:
        """Fit every generator on ``df`` (anchored at ``now``) over the model's user and item maps.

        ``params``: the hyperparameters of this fit (the constructor's, with ``best_params_`` over
        them after tuning), passed explicitly so that ``fit`` never rewrites the constructor's."""
        c = time.process_time()
        users = np.asarray(sorted(df["user_id"].unique()), dtype=object)
        matrix = build_interaction_matrix(
            df, now=now, half_life_days=self._half_lives(params), user_ids=users, item_ids=self.item_ids_,
            age_windows=history_windows(self.rank_window_days),
        )
        user_segment = np.array([self._segment_of(u) for u in users], dtype=np.int64)
        data = FitData(
            matrix=matrix, interactions=df, user_segment=user_segment, n_segments=len(self.segment_names_),
            item_category=self.item_category_, n_categories=len(self.category_names_), num_threads=self.num_threads,
        )
        self._spent("matrix", c)
        gens = []
        for name in self.generators:
            t, c = time.perf_counter(), time.process_time()
            gens.append(self._make_generator(name, params).fit(data))
            self._spent(name, c)
            log.debug("fitted %s in %.1fs", name, time.perf_counter() - t)
            if progress is not None:
                progress.advance()
        u, _ = data.interaction_codes()
        pairs = np.unique(u[u >= 0] * (int(df["basket"].max()) + 1) + df["basket"].to_numpy()[u >= 0])
        user_baskets = np.maximum(np.bincount(pairs // (int(df["basket"].max()) + 1), minlength=len(users)), 1)
        user_baskets = user_baskets.astype(np.float64)
        segment_pop = next((g for g in gens if g.name == "popular_segment"), None)
        if segment_pop is None:  # always there for cold-start answers
            segment_pop = SegmentPopularityGenerator(window_days=params["popularity_window_days"]).fit(data)
        return _State(
            matrix=matrix, generators=gens, items=ItemStats.from_data(data, self.item_price_, self.rank_window_days),
            user_segment=user_segment, user_baskets=user_baskets, segment_popularity=segment_pop,
        )

    def _segment_of(self, user_id: str) -> int:
        return self.user_segment_map_.get(user_id, -1)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        tune: bool = False,
    ) -> Recommender:
        """Fit on ``interactions`` (user_id, item_id, optional weight, timestamp, order_id).

        ``items`` (item_id, optional category, price) feeds filters and the new-item fallback;
        ``users`` (user_id or customer_id, and a segment column: ``segment_col``, else
        ``segment``, else ``country``) feeds the new-customer fallback. ``tune=True`` first
        searches the generators' hyperparameters on an inner time-based (or random) validation
        split (:meth:`tune`); the chosen values are kept in ``best_params_`` and used for this fit
        only, so ``get_params()`` is the same after ``fit`` as before and ``clone`` gives the
        untuned model (``clone(rec).set_params(**rec.best_params_)`` the tuned one).
        """
        t0, c0 = time.perf_counter(), time.process_time()
        self.fit_cpu_ = {}
        unknown = [g for g in self.generators if g not in GENERATOR_NAMES]
        if unknown:
            raise ValueError(f"unknown generator(s) {unknown}")
        df = normalize_interactions(interactions)
        if df.empty:
            raise ValueError("no interactions to fit on")
        # ids are strings inside; item ids come back in the type they were given (ints in, ints out)
        self.item_id_type_ = int if pd.api.types.is_integer_dtype(interactions["item_id"]) else str
        self._set_catalogue(df, items, users)
        self.has_time_ = "timestamp" in df.columns
        self.now_ = df["timestamp"].max() if self.has_time_ else None
        self.best_params_ = {}
        if tune:
            self.tuning_, self.best_params_ = self.tune(df)
        params = {**self.get_params(), **self.best_params_}
        splits = self._ranker_splits(df) if self.use_ranker else []
        self.rankers_ = {}
        self.ranker_info_ = {}
        from rich.progress import Progress

        n_steps = len(self.generators) * (1 + len(splits)) + (len(splits) + 2 if splits else 0)
        with Progress(disable=not self.show_progress, transient=True) as bar:
            task = bar.add_task("fitting recommender", total=n_steps)
            adv = _Advance(bar, task)
            self.blend_weights_ = {}
            self.selection_ = {"split": "none", "reason": "no inner split (use_ranker=False or too little history)"}
            if splits:
                rows = {"all": [], "new": []}
                for inner_train, labels, inner_now in splits:
                    inner = self._fit_state(inner_train, inner_now, params, adv)
                    c = time.process_time()
                    for mode, found in self._training_rows(inner, inner_train, labels).items():
                        rows[mode].extend(found)
                    self._spent("ranker_rows", c)
                    adv.advance()
                windows = [str(n) if n is not None else "random" for *_, n in splits]
                self.selection_ = {"split": "time" if self.has_time_ else "random", "windows": windows}
                for mode in ("all", "new"):
                    c = time.process_time()
                    booster, weights, info, chosen = self._select(rows[mode], mode == "new")
                    self._spent("selection", c)
                    if booster is not None:
                        self.rankers_[mode] = booster
                    self.blend_weights_[mode] = weights
                    self.ranker_info_[mode] = {**info, "windows": windows}
                    self.selection_[mode] = chosen
                    adv.advance()
            self.state_ = self._fit_state(df, self.now_, params, adv)
        self.feature_names_ = feature_names(list(self.generators))
        pop = self._generator("popular")
        self.popular_order_ = pop.order_ if pop is not None else np.argsort(-self.state_.items.users, kind="stable")
        self.fit_seconds_ = time.perf_counter() - t0
        self._spent("total", c0)
        return self

    def _spent(self, phase: str, cpu_start: float) -> None:
        """Add the CPU seconds since ``cpu_start`` to ``fit_cpu_[phase]`` (where a fit's time goes,
        summed over the inner and final fits; CPU rather than wall time because shared machines
        make wall time meaningless)."""
        self.fit_cpu_[phase] = round(self.fit_cpu_.get(phase, 0.0) + time.process_time() - cpu_start, 2)

    def _set_catalogue(self, df: pd.DataFrame, items: pd.DataFrame | None, users: pd.DataFrame | None) -> None:
        ids = set(df["item_id"].unique())
        price = {}
        category = {}
        if items is not None and len(items):
            it = items.copy()
            it["item_id"] = it["item_id"].astype(str)
            ids |= set(it["item_id"])
            if "price" in it.columns:
                price = dict(zip(it["item_id"], pd.to_numeric(it["price"], errors="coerce")))
            if "category" in it.columns:
                category = {i: str(c) for i, c in zip(it["item_id"], it["category"]) if pd.notna(c) and str(c) != ""}
        self.item_ids_ = np.asarray(sorted(ids), dtype=object)
        self.item_index_ = {x: i for i, x in enumerate(self.item_ids_)}
        self.item_price_ = np.array([price.get(x, np.nan) for x in self.item_ids_], dtype=np.float64)
        self.category_names_ = sorted(set(category.values()))
        cat_index = {c: i for i, c in enumerate(self.category_names_)}
        self.item_category_ = np.array([cat_index.get(category.get(x), -1) for x in self.item_ids_], dtype=np.int64)
        self.category_items_ = {c: np.flatnonzero(self.item_category_ == i) for c, i in cat_index.items()}
        self.segment_col_ = None
        self.segment_names_ = []
        self.user_segment_map_ = {}
        if users is not None and len(users):
            us = users.rename(columns={"customer_id": "user_id"}) if "user_id" not in users.columns else users
            col = self.segment_col or next(  # the shop's own groups when it has any (customers.segment)
                (c for c in ("segment", "country") if c in us.columns and us[c].notna().any()), None)
            if col is not None and col in us.columns:
                us = us[us[col].notna()]
                self.segment_col_ = col
                self.segment_names_ = sorted(us[col].astype(str).unique())
                seg_index = {s: i for i, s in enumerate(self.segment_names_)}
                self.user_segment_map_ = dict(zip(us["user_id"].astype(str), us[col].astype(str).map(seg_index)))

    def _ranker_splits(self, df: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp | None]]:
        """The ranker's training windows: ``(data before, labels, cutoff)`` each.

        With timestamps: the last ``rank_windows`` windows of ``rank_window_days`` before the end of
        the data and, with ``rank_season_window`` and a year of history, the window that started one
        year before the end (the coming season, last year). Without timestamps: a random per-user
        hold-out of 20% of the items.
        """
        if not self.has_time_:
            train, test = random_split(df, test_fraction=0.2, seed=self.random_state)
            return [(train, test[test["weight"] > 0], None)]
        start = df["timestamp"].min()
        end = self.now_ + pd.Timedelta(seconds=1)  # the last window ends just after the last event
        span_days = (end - start) / pd.Timedelta(days=1)
        window = pd.Timedelta(days=min(float(self.rank_window_days), span_days / 3.0))
        cutoffs = [end - window * (i + 1) for i in range(max(int(self.rank_windows), 1))]
        if self.rank_season_window and (end - pd.Timedelta(days=365) - start) >= window:
            cutoffs.append(end - pd.Timedelta(days=365))
        out = []
        for cutoff in cutoffs:
            if cutoff - start < window:  # too little history before it
                continue
            train, test = time_split(df, cutoff, window / pd.Timedelta(days=1))
            test = test[test["weight"] > 0]
            if len(test):
                out.append((train, test, cutoff))
        return out

    # ------------------------------------------------------------------ ranker
    def _training_rows(self, inner: _State, inner_train: pd.DataFrame, labels: pd.DataFrame) -> dict:
        """Per mode, one :class:`_Labelled` per user with history and labels whose candidates hold
        at least one of them (at most ``rank_max_users`` users, a random sample: the ranker and the
        selection need thousands of users, not all of a large shop's)."""
        truth_all, truth_new = holdout_truth(inner_train, labels)
        m = inner.matrix
        sets = {}
        for mode, truth in (("all", truth_all), ("new", truth_new)):
            t = truth.assign(u=truth["user_id"].map(m.user_index), i=truth["item_id"].map(self.item_index_)).dropna()
            u, i = t["u"].to_numpy(np.int64), t["i"].to_numpy(np.int64)
            order = np.lexsort((i, u))  # one array split per user, not a groupby with a Python lambda (slow at scale)
            u, i = u[order], i[order]
            starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.empty(0, np.int64)
            sets[mode] = {int(k): set(v.tolist()) for k, v in zip(u[starts], np.split(i, starts[1:]))}
        users = np.asarray(sorted(sets["all"]), dtype=np.int64)
        if self.rank_max_users and len(users) > self.rank_max_users:
            rng = np.random.default_rng(self.random_state)
            users = np.sort(rng.choice(users, size=int(self.rank_max_users), replace=False))
        out = {mode: [] for mode in sets}
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            q = inner.query(chunk)
            scores = inner.scores(q)
            for r, u in enumerate(chunk):
                hist = inner.history(q, r)
                for mode in ("all", "new"):
                    positives = sets[mode].get(u)
                    if not positives:
                        continue
                    union, x, ranks, _ = self._user_rows(inner, [s[r] for s in scores], hist, exclude_seen=mode == "new", blocked=None)
                    y = np.fromiter((i in positives for i in union), dtype=bool, count=len(union))
                    if y.any():
                        out[mode].append(_Labelled(str(m.user_ids[u]), x, y.astype(np.int32), ranks, len(positives)))
        return out

    def _select(self, rows: list, exclude_seen: bool) -> tuple:
        """Choose how one mode ranks: the re-ranker, or a weighted blend of the generators.

        The labelled users of the inner split(s) are divided (by a hash of their id) into a fitting
        part (70%) and a check part (30%). On the fitting part, blend weights are searched
        (:func:`search_blend`) and a LambdaRank model is trained; both are scored by nDCG@10 on the
        check part. The re-ranker is kept only when it beats the blend there (it is then refitted on
        every labelled user); otherwise the blend's weights are searched again on every labelled user
        and the mode ranks by the blend. Returns ``(boosters or None, weights, ranker info, choice)``,
        the choice recording each generator's nDCG@10 alone, the blend and the ranker.
        """
        names = list(self.generators)
        if exclude_seen:  # own-item generators have nothing to offer among new items
            active = np.array([n not in OWN_ITEM_GENERATORS for n in names])
        else:
            active = np.ones(len(names), dtype=bool)
        base = {"users": len(rows)}
        if len(rows) < 10:
            weights = active.astype(np.float64)
            info = {"queries": len(rows), "used": False, "reason": "fewer than 10 labelled users"}
            return None, weights, info, {**base, "method": "blend", "reason": info["reason"], "weights": _named(names, weights)}
        import zlib

        check = np.array([zlib.crc32(r.user.encode()) % 10 < 3 for r in rows])
        if check.all() or not check.any():
            check = np.arange(len(rows)) % 10 < 3
        fit_rows = [r for r, c in zip(rows, check) if not c]
        check_rows = [r for r, c in zip(rows, check) if c]
        pack_all = _Pack.of(rows, len(names), self.random_state)
        alone = {n: float(pack_all.ndcg(np.eye(len(names))[g])) for g, n in enumerate(names) if active[g]}
        choice = {**base, "check_users": len(check_rows), "generators_alone": alone}
        if self.use_ranker is True:  # forced: no comparison with the blend
            boosters, info = self._fit_ranker(rows)
            weights = active.astype(np.float64)
            method = "ranker" if boosters is not None else "blend"
            return boosters, weights, info, {**choice, "method": method, "reason": "use_ranker=True",
                                             "weights": _named(names, weights)}
        pack_fit = _Pack.of(fit_rows, len(names), self.random_state)
        pack_check = _Pack.of(check_rows, len(names), sample=False)  # the users the ranker is checked on
        w_fit = search_blend(pack_fit, active)
        blend_check = float(pack_check.ndcg(w_fit))
        boosters, info = self._fit_ranker(fit_rows)
        ranker_check = None
        if boosters is not None:
            x = np.vstack([r.x for r in check_rows])
            s = sum(b.predict(x, num_threads=self.num_threads or 0) for b in boosters)
            ranker_check = float(np.mean(_split_ndcg(s, check_rows)))
        choice.update({"blend_check_ndcg@10": round(blend_check, 5),
                       "ranker_check_ndcg@10": None if ranker_check is None else round(ranker_check, 5)})
        if ranker_check is not None and ranker_check > blend_check:
            boosters, info = self._fit_ranker(rows)
            weights = active.astype(np.float64)  # the RRF of the candidates when the ranker cannot answer
            choice.update({"method": "ranker", "weights": _named(names, weights)})
            return boosters, weights, info, choice
        weights = search_blend(pack_all, active)
        info = {**info, "used": False, "reason": "the blend of generators did as well on the check users"
                if ranker_check is not None else info.get("reason", "no ranker")}
        choice.update({"method": "blend", "weights": _named(names, weights),
                       "blend_ndcg@10": round(float(pack_all.ndcg(weights)), 5)})
        return None, weights, info, choice

    def _fit_ranker(self, rows: list):
        """LambdaRank boosters (``ranker_bags`` of them, each on its own sample of negatives and
        seed; their scores are averaged), or None with the reason when there is too little data.
        Users whose candidates are all relevant teach a ranker nothing and are left out."""
        rows = [r for r in rows if not r.y.all()]
        xs, ys, groups = [r.x for r in rows], [r.y for r in rows], [len(r.y) for r in rows]
        info = {"queries": len(groups), "rows": int(sum(groups)), "positives": int(sum(int(y.sum()) for y in ys))}
        if len(groups) < 10:
            return None, {**info, "used": False, "reason": "fewer than 10 labelled users"}
        import lightgbm as lgb

        boosters, train_rows = [], 0
        for bag in range(max(int(self.ranker_bags), 1)):
            seed = self.random_state + bag
            rng = np.random.default_rng(seed)
            X, Y, G = [], [], []
            for x, y in zip(xs, ys):
                n_neg = len(y) - int(y.sum())
                if self.ranker_negatives and n_neg > self.ranker_negatives:  # every positive, a sample of negatives
                    sel = y.astype(bool) | (rng.random(len(y)) < self.ranker_negatives / n_neg)
                    x, y = x[sel], y[sel]
                X.append(x)
                Y.append(y)
                G.append(len(y))
            ranker = lgb.LGBMRanker(
                objective="lambdarank", n_estimators=self.ranker_n_estimators, learning_rate=self.ranker_learning_rate,
                num_leaves=self.ranker_num_leaves, min_child_samples=50, subsample=0.8, subsample_freq=1,
                colsample_bytree=0.8, max_bin=63, lambdarank_truncation_level=20, random_state=seed,
                n_jobs=self.num_threads or -1, verbose=-1,  # 0: every core, as for implicit
            )
            ranker.fit(np.vstack(X), np.concatenate(Y), group=G, feature_name=feature_names(list(self.generators)))
            boosters.append(ranker.booster_)
            train_rows += int(sum(G))
        return boosters, {**info, "used": True, "train_rows": train_rows, "bags": len(boosters)}

    def _user_rows(self, state: _State, scores: list[np.ndarray], hist: UserHistory, exclude_seen: bool, blocked):
        """Candidates of one user and their features (``blocked``: boolean item mask or None)."""
        inactive = state.inactive
        if inactive is not None:  # items nobody had (e.g. only in the items table) are no candidates
            blocked = inactive if blocked is None else (blocked | inactive)
        if exclude_seen and len(hist.items):
            blocked = np.zeros(len(self.item_ids_), dtype=bool) if blocked is None else blocked.copy()
            blocked[hist.items] = True
        positive = [g.positive_only for g in state.generators]
        orders = [g.candidate_order(hist.segment) for g in state.generators]
        union, sc, ranks, best = user_candidates(scores, positive, blocked, self.n_candidates, self.rank_depth, orders)
        x = candidate_features(union, sc, ranks, hist, state.items)
        return union, x, ranks, best

    # ------------------------------------------------------------------ recommend
    def _check_fitted(self) -> None:
        if not hasattr(self, "state_"):
            raise RuntimeError("Recommender is not fitted yet: call fit() first")

    def _generator(self, name: str):
        for g in getattr(self, "state_", None).generators if hasattr(self, "state_") else []:
            if g.name == name:
                return g
        return None

    def _blocked(self, filters: dict) -> np.ndarray | None:
        """Boolean mask of items the filters rule out (None when nothing is ruled out)."""
        if not filters:
            return None
        allowed = np.ones(len(self.item_ids_), dtype=bool)
        idx = self.item_index_
        if "include_categories" in filters:
            keep = np.zeros(len(allowed), dtype=bool)
            for c in filters["include_categories"]:
                keep[self.category_items_.get(c, [])] = True
            allowed &= keep
        for c in filters.get("exclude_categories", []):
            allowed[self.category_items_.get(c, [])] = False
        for i in filters.get("exclude_items", []):
            if i in idx:
                allowed[idx[i]] = False
        if "allowed_items" in filters:
            keep = np.zeros(len(allowed), dtype=bool)
            keep[[idx[i] for i in filters["allowed_items"] if i in idx]] = True
            allowed &= keep
        with np.errstate(invalid="ignore"):
            if "min_price" in filters:
                allowed &= self.item_price_ >= filters["min_price"]
            if "max_price" in filters:
                allowed &= self.item_price_ <= filters["max_price"]
        return ~allowed

    def _rank(self, state: _State, scores: list[np.ndarray], hist: UserHistory, k: int, exclude_seen: bool, blocked) -> tuple:
        union, x, ranks, best = self._user_rows(state, scores, hist, exclude_seen, blocked)
        boosters = self.rankers_.get("new" if exclude_seen else "all")
        if boosters is not None and len(union):
            boosters = boosters if isinstance(boosters, list) else [boosters]  # models saved before bagging
            s = boosters[0].predict(x, num_threads=1)
            for b in boosters[1:]:
                s = s + b.predict(x, num_threads=1)
        else:
            weights = getattr(self, "blend_weights_", {}).get("new" if exclude_seen else "all")
            s = (1.0 / (RRF_K + ranks)).sum(axis=0) if weights is None else weights @ (1.0 / (RRF_K + ranks))
        order = np.argsort(-s, kind="stable")[:k]
        names = [g.name for g in state.generators]
        return union[order], s[order], [names[b] for b in best[order]]

    def _fill(self, items: list, scores: list, sources: list, k: int, blocked, exclude, order: np.ndarray, source: str):
        """Append items from ``order`` (best first) not blocked, excluded or already there."""
        if len(items) >= k:
            return
        taken = set(int(i) for i in items) | set(int(i) for i in exclude)
        last = float(min(scores)) if len(scores) else 0.0
        for i in order:
            i = int(i)
            if i in taken or (blocked is not None and blocked[i]):
                continue
            items.append(i)
            last -= 1.0
            scores.append(last)
            sources.append(source)
            taken.add(i)
            if len(items) >= k:
                return

    def _fallbacks(self, items, scores, sources, k, blocked, exclude, segment: int = -1, categories=()):
        """Cold start and thin answers: popular in segment, category, overall, then the catalogue."""
        state = self.state_
        seg = state.segment_popularity
        if segment >= 0 and seg is not None and len(items) < k:
            s = seg.segment_scores(segment)
            order = np.argsort(-s, kind="stable")
            self._fill(items, scores, sources, k, blocked, exclude, order[s[order] > 0], f"popular_{self.segment_col_}")
        for c in categories:
            if len(items) >= k:
                break
            members = self.category_items_.get(c, np.empty(0, np.int64))
            order = members[np.argsort(-state.items.users[members], kind="stable")]
            self._fill(items, scores, sources, k, blocked, exclude, order, "popular_category")
        pop = state.items.users
        order = self.popular_order_
        self._fill(items, scores, sources, k, blocked, exclude, order[pop[order] > 0], "popular")
        self._fill(items, scores, sources, k, blocked, exclude, np.arange(len(self.item_ids_)), "catalogue")

    def _answer(self, items, scores, sources) -> list[dict]:
        ids = self.item_ids_
        return [
            {"item_id": getattr(self, "item_id_type_", str)(ids[i]), "score": float(s), "rank": r + 1, "source": src}
            for r, (i, s, src) in enumerate(zip(items, scores, sources))
        ]

    @property
    def user_index_(self) -> dict:
        """Customer id -> row of the fitted interaction matrix: the customers with a history here."""
        return self.state_.matrix.user_index

    def recommend_one(
        self, user_id: str, k: int = 10, exclude_seen: bool = True, filters: dict | None = None, segment: str | None = None
    ) -> list[dict]:
        """Top-``k`` for one customer: a list of ``{item_id, score, rank, source}`` (the fast path).

        An unknown customer gets popular items of their segment (``segment``, else the one in the
        ``users`` table given to fit), else popular overall.
        """
        self._check_fitted()
        filters = check_filters(filters)
        blocked = self._blocked(filters)
        state = self.state_
        user_id = str(user_id)
        u = state.matrix.user_index.get(user_id)
        items, scores, sources = [], [], []
        exclude = ()
        if u is not None:
            q = state.query(np.array([u]))
            hist = state.history(q, 0)
            it, sc, src = self._rank(state, [s[0] for s in state.scores(q)], hist, k, exclude_seen, blocked)
            items, scores, sources = list(it), list(sc), src
            exclude = hist.items if exclude_seen else ()
            seg = -1  # a known customer's thin list is filled with popular items overall
        else:
            seg = self.segment_names_.index(segment) if segment in self.segment_names_ else self._segment_of(user_id)
        self._fallbacks(items, scores, sources, k, blocked, exclude, segment=seg)
        return self._answer(items, scores, sources)

    def recommend_folded(
        self, user_id: str, item_ids, k: int = 10, exclude_seen: bool = True, filters: dict | None = None
    ) -> list[dict]:
        """Top-``k`` for a customer whose history gained ``item_ids`` (bought after the fit): like
        :meth:`recommend_one` on their history plus one basket of these items just now.

        The history is folded in as for a basket (:meth:`recommend_for_items`): ALS recomputes the
        user vector from it, item-based generators and buy-again read it, ``exclude_seen`` drops it.
        A customer the model never saw gets personalised answers from these items alone.
        """
        self._check_fitted()
        blocked = self._blocked(check_filters(filters))
        state = self.state_
        user_id = str(user_id)
        u = state.matrix.user_index.get(user_id)
        idx = [self.item_index_[str(i)] for i in item_ids if str(i) in self.item_index_]
        if not idx:
            return self.recommend_one(user_id, k=k, exclude_seen=exclude_seen, filters=filters)
        history = state.matrix.fold_in(u, idx, user_id)
        seg = int(state.user_segment[u]) if u is not None else self._segment_of(user_id)
        q = Query(uidx=np.array([-1]), history=history, segment=np.array([seg]))
        hist = state.history(q, 0)
        it, sc, src = self._rank(state, [s[0] for s in state.scores(q)], hist, k, exclude_seen, blocked)
        items, scores, sources = list(it), list(sc), src
        self._fallbacks(items, scores, sources, k, blocked, hist.items if exclude_seen else (), segment=-1)
        return self._answer(items, scores, sources)

    def recommend(
        self, user_ids, k: int = 10, exclude_seen: bool = True, filters: dict | None = None
    ) -> pd.DataFrame:
        """Top-``k`` per customer as a DataFrame: user_id, item_id, score, rank, source."""
        if isinstance(user_ids, str):
            user_ids = [user_ids]
        rows = []
        for u in user_ids:
            for rec in self.recommend_one(u, k=k, exclude_seen=exclude_seen, filters=filters):
                rows.append({"user_id": u, **rec})  # as given: ints in, ints out
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank", "source"])

    def _known_items(self, item_ids) -> tuple[np.ndarray, list[str]]:
        """Model columns of the given ids that have interactions, and the categories of the others."""
        if isinstance(item_ids, str):
            item_ids = [item_ids]
        idx, cats = [], []
        users = self.state_.items.users
        for i in map(str, item_ids):
            j = self.item_index_.get(i)
            if j is not None and users[j] > 0:
                idx.append(j)
            elif j is not None and self.item_category_[j] >= 0:
                cats.append(self.category_names_[self.item_category_[j]])
        return np.asarray(sorted(set(idx)), dtype=np.int64), cats

    def recommend_for_items(
        self, item_ids, k: int = 10, exclude_items: bool = True, filters: dict | None = None
    ) -> pd.DataFrame:
        """Top-``k`` for an anonymous basket or session given item ids.

        The basket is folded in as a one-basket history (ALS recomputes a user vector; item-based
        generators sum their item rows) and ranked like a customer's. Items new to the model bring
        popular items of their category.
        """
        self._check_fitted()
        blocked = self._blocked(check_filters(filters))
        state = self.state_
        idx, cats = self._known_items(item_ids)
        basket = [self.item_index_[str(i)] for i in ([item_ids] if isinstance(item_ids, str) else item_ids) if str(i) in self.item_index_]
        items, scores, sources = [], [], []
        if len(idx):
            history = InteractionMatrix.from_items(idx, state.matrix)
            q = Query(uidx=np.array([-1]), history=history, segment=np.array([-1]))
            hist = state.history(q, 0)
            it, sc, src = self._rank(state, [s[0] for s in state.scores(q)], hist, k, exclude_items, blocked)
            items, scores, sources = list(it), list(sc), src
        self._fallbacks(items, scores, sources, k, blocked, basket if exclude_items else (), categories=cats)
        out = pd.DataFrame(self._answer(items, scores, sources), columns=["item_id", "score", "rank", "source"])
        return out

    def similar_items(self, item_id: str, k: int = 10, filters: dict | None = None, source: str | None = None) -> pd.DataFrame:
        """Items most similar to ``item_id`` (item-kNN by default, else EASE, ALS or co-occurrence).

        An item without interactions but with a category in ``items`` gets popular items of that
        category (source ``popular_category``).
        """
        self._check_fitted()
        blocked = self._blocked(check_filters(filters))
        idx, cats = self._known_items([item_id])
        items, scores, sources = [], [], []
        if len(idx):
            names = [source] if source else ["bm25", "cosine", "ease", "als", "bpr", "cooc"]
            gen = next((g for g in (self._generator(n) for n in names) if g is not None), None)
            if gen is not None:
                s = np.asarray(gen.item_scores(idx), dtype=np.float64).copy()
                s[idx] = -np.inf
                if blocked is not None:
                    s[blocked] = -np.inf
                if gen.positive_only:
                    s[s <= 0] = -np.inf
                order = np.argsort(-s, kind="stable")[:k]
                order = order[np.isfinite(s[order])]
                items, scores, sources = list(order), list(s[order]), [gen.name] * len(order)
            j = int(idx[0])
            if self.item_category_[j] >= 0:
                cats = [self.category_names_[self.item_category_[j]]]
        itself = [self.item_index_[str(item_id)]] if str(item_id) in self.item_index_ else []
        self._fallbacks(items, scores, sources, k, blocked, list(idx) + itself, categories=cats)
        return pd.DataFrame(self._answer(items, scores, sources), columns=["item_id", "score", "rank", "source"])

    def bought_together(self, item_id: str, k: int = 10, filters: dict | None = None) -> pd.DataFrame:
        """Items bought with ``item_id`` more often than chance: item_id, score (the association,
        ``n(A,B) / (E + 1)``), support, confidence, lift, count, rank, source ``cooc``; only positively
        associated items (lift above 1, ``min_count`` baskets, a significant one-sided exact test;
        see ``training.candidates.cooccurrence``), so the answer may be shorter than ``k``.

        An item with no such partner (new, rarely bought, or a generator set without ``cooc``) gets
        the cold-start fallback instead: popular items of its category, then overall, with source
        ``popular_category`` / ``popular``, no support, confidence or lift, and count 0. An id the
        model does not know at all gives an empty frame.
        """
        self._check_fitted()
        cols = ["item_id", "score", "support", "confidence", "lift", "count", "rank", "source"]
        blocked = self._blocked(check_filters(filters))
        gen = self._generator("cooc")
        j = self.item_index_.get(str(item_id))
        if j is None:
            return pd.DataFrame(columns=cols)
        out = pd.DataFrame(columns=cols[:-2])
        if gen is not None and hasattr(gen, "together_"):
            r = gen.together_for(j)
            keep = np.ones(len(r["consequent"]), dtype=bool) if blocked is None else ~blocked[r["consequent"]]
            order = np.lexsort((r["consequent"][keep], -r["association"][keep]))[:k]
            out = pd.DataFrame({
                "item_id": self.item_ids_[r["consequent"][keep][order]],
                "score": r["association"][keep][order],
                "support": r["support"][keep][order],
                "confidence": r["confidence"][keep][order],
                "lift": r["lift"][keep][order],
                "count": r["count"][keep][order].astype(np.int64),
            })
        if len(out):
            out["rank"] = np.arange(1, len(out) + 1)
            out["source"] = "cooc"
            return out[cols]
        cats = [self.category_names_[self.item_category_[j]]] if self.item_category_[j] >= 0 else []
        items, scores, sources = [], [], []
        self._fallbacks(items, scores, sources, k, blocked, [j], categories=cats)
        fallback = pd.DataFrame(self._answer(items, scores, sources))
        if fallback.empty:
            return pd.DataFrame(columns=cols)
        fallback = fallback.assign(support=np.nan, confidence=np.nan, lift=np.nan, count=0)
        return fallback[cols]

    # ------------------------------------------------------------------ baselines and batch scoring
    def recommend_baseline(self, user_ids, source: str, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` of one generator alone (its own score), for evaluation against the model."""
        self._check_fitted()
        state = self.state_
        g = next((i for i, x in enumerate(state.generators) if x.name == source), None)
        if g is None:
            raise ValueError(f"no generator {source!r} in this model; have {[x.name for x in state.generators]}")
        gen = state.generators[g]
        uidx = np.array([state.matrix.user_index[u] for u in map(str, user_ids) if u in state.matrix.user_index])
        rows = []
        for start in range(0, len(uidx), CHUNK):
            chunk = uidx[start : start + CHUNK]
            q = state.query(chunk)
            s = np.array(gen.score(q), dtype=np.float32, copy=True)
            if exclude_seen:
                h = q.history
                s[np.repeat(np.arange(len(chunk)), np.diff(h.indptr)), h.indices] = -np.inf
            if gen.positive_only:
                s[s <= 0] = -np.inf
            kk = min(k, s.shape[1] - 1)
            top = np.argpartition(-s, kk, axis=1)[:, :kk] if kk < s.shape[1] else np.tile(np.arange(s.shape[1]), (len(s), 1))
            top_s = np.take_along_axis(s, top, 1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
            for r, u in enumerate(chunk):
                ok = np.isfinite(top_s[r])
                for rank, (i, sc) in enumerate(zip(top[r][ok][:k], top_s[r][ok][:k])):
                    rows.append((state.matrix.user_ids[u], self.item_ids_[i], float(sc), rank + 1, source))
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank", "source"])

    def feature_docs(self) -> list[dict]:
        """The re-ranker's features with their meaning and window (for the MLflow run)."""
        from training.candidates.union import feature_docs

        return feature_docs(list(self.generators), self.rank_window_days)

    # ------------------------------------------------------------------ tuning
    def tune(self, df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        """Pick generator hyperparameters on an inner validation split (time-based, else random per user).

        For each tuned generator (in :data:`TUNING_GRID` order) and each setting of its grid, a
        one-generator probe ``Recommender`` (no ranker; the settings already chosen for earlier
        generators included) is fitted on the training part over this model's catalogue, and
        scored by its own nDCG@10 on the validation window (the all-purchases view plus the
        new-items view, except for ``buy_again``); the best setting of each generator is kept.
        Needs the catalogue of a fit in progress (``fit(tune=True)`` calls it). Does not change
        this model's parameters: returns the grid with its scores and the chosen values.
        """
        train, test = self._inner_split_for_tuning(df)
        truth_all, truth_new = holdout_truth(train, test)
        users = truth_all["user_id"].unique()
        catalogue = self._catalogue_frame()
        results, chosen = [], {}
        for name, settings in TUNING_GRID.items():
            if name not in self.generators:
                continue
            best = None
            for setting in settings:
                probe = type(self)(**{**self.get_params(), **chosen, **setting, "generators": (name,),
                                   "use_ranker": False, "show_progress": False})
                probe.fit(train, items=catalogue)
                score = 0.0
                for view, truth, excl in (("all", truth_all, False), ("new", truth_new, True)):
                    if name in OWN_ITEM_GENERATORS and view == "new":
                        continue
                    pred = probe.recommend_baseline(truth["user_id"].unique() if view == "new" else users, name, 10, excl)
                    score += ranking_metrics(truth, pred, k=10)["ndcg@10"]
                results.append({"generator": name, **setting, "score": score})
                if best is None or score > best[1]:
                    best = (setting, score)
            chosen.update(best[0])
        return pd.DataFrame(results), chosen

    def _catalogue_frame(self) -> pd.DataFrame:
        """The fitted catalogue as an ``items`` table (item_id, price, category): fitting another
        model with it gives that model the same item columns, prices and categories."""
        names = np.asarray(self.category_names_ + [None], dtype=object)
        return pd.DataFrame({"item_id": self.item_ids_, "price": self.item_price_, "category": names[self.item_category_]})

    def _inner_split_for_tuning(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        if "timestamp" in df.columns:
            span_days = (df["timestamp"].max() - df["timestamp"].min()) / pd.Timedelta(days=1)
            window = min(float(self.rank_window_days), span_days / 3.0)
            cutoff = df["timestamp"].max() + pd.Timedelta(seconds=1) - pd.Timedelta(days=window)
            return time_split(df, cutoff)
        return random_split(df, test_fraction=0.2, seed=self.random_state)


@dataclass
class _Labelled:
    """One labelled user of the inner split: candidates' features ``x``, relevance ``y``, the
    generators' ranks of the candidates (generators × candidates) and the user's number of
    relevant items (candidates or not)."""

    user: str
    x: np.ndarray
    y: np.ndarray
    ranks: np.ndarray
    n_relevant: int


@dataclass
class _Pack:
    """Labelled users padded into arrays, to score many blends at once: ``rrf`` (users × generators
    × candidates) holds ``1 / (RRF_K + rank)``, padding candidates are marked in ``pad``."""

    rrf: np.ndarray
    labels: np.ndarray
    pad: np.ndarray
    n_relevant: np.ndarray

    #: at most this many users are packed (a random sample): the search is about weights, not users
    MAX_USERS = 3000

    @classmethod
    def of(cls, rows: list, n_gen: int, seed: int = 0, sample: bool = True) -> _Pack:
        if sample and len(rows) > cls.MAX_USERS:
            pick = np.sort(np.random.default_rng(seed).choice(len(rows), cls.MAX_USERS, replace=False))
            rows = [rows[i] for i in pick]
        width = max((len(r.y) for r in rows), default=0)
        rrf = np.zeros((len(rows), n_gen, width), dtype=np.float32)
        labels = np.zeros((len(rows), width), dtype=np.int8)
        pad = np.ones((len(rows), width), dtype=bool)
        for j, r in enumerate(rows):
            c = len(r.y)
            rrf[j, :, :c] = 1.0 / (RRF_K + r.ranks)
            labels[j, :c] = r.y
            pad[j, :c] = False
        return cls(rrf, labels, pad, np.array([r.n_relevant for r in rows], dtype=np.int64))

    def ndcg(self, weights: np.ndarray, k: int = 10) -> float:
        """Mean nDCG@k of ranking each user's candidates by the blend ``Σ_g w_g / (RRF_K + rank_g)``."""
        if not len(self.labels):
            return 0.0
        s = np.einsum("g,ugc->uc", np.asarray(weights, dtype=np.float32), self.rrf).astype(np.float64)
        s[self.pad] = -np.inf
        return float(ndcg_of_scores(s, self.labels, self.n_relevant, k).mean())


#: the weights tried for each generator by :func:`search_blend`
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def search_blend(pack: _Pack, active: np.ndarray, rounds: int = 4, min_gain: float = 1e-4) -> np.ndarray:
    """Blend weights by greedy coordinate search: start from the best single generator, then in
    each round make the one change of one generator's weight (among :data:`BLEND_WEIGHTS`) that
    raises the blend's nDCG@10 most, while it gains more than ``min_gain``. Inactive generators
    keep weight 0. A generator left at 0 is dropped from the blend."""
    n = len(active)
    eye = np.eye(n)
    singles = [pack.ndcg(eye[g]) if active[g] else -1.0 for g in range(n)]
    w = eye[int(np.argmax(singles))].copy()
    best = max(singles)
    for _ in range(rounds):
        move = None
        for g in np.flatnonzero(active):
            for v in BLEND_WEIGHTS:
                if v == w[g]:
                    continue
                trial = w.copy()
                trial[g] = v
                if trial.sum() <= 0:
                    continue
                score = pack.ndcg(trial)
                if score > best + min_gain and (move is None or score > move[1]):
                    move = (trial, score)
        if move is None:
            break
        w, best = move
    return w


def _named(names: list[str], weights: np.ndarray) -> dict[str, float]:
    return {n: float(w) for n, w in zip(names, weights) if w > 0}


def _split_ndcg(scores: np.ndarray, rows: list, k: int = 10) -> np.ndarray:
    """nDCG@k of each row of ``rows`` ranked by its slice of ``scores`` (rows stacked in order)."""
    out = np.empty(len(rows))
    at = 0
    for j, r in enumerate(rows):
        c = len(r.y)
        out[j] = ndcg_of_scores(scores[None, at : at + c], r.y[None, :], np.array([r.n_relevant]), k)[0]
        at += c
    return out


def selection_params(selection: dict | None) -> dict[str, str]:
    """The choice of ``Recommender.fit`` as flat MLflow parameters: per mode (``all``: every purchase,
    ``new``: items new to the customer) the method (``ranker`` or ``blend``) and the blend's weights."""
    out = {}
    for mode in ("all", "new"):
        chosen = (selection or {}).get(mode)
        if chosen:
            out[f"selection.{mode}"] = chosen.get("method", "")
            out[f"selection.{mode}.weights"] = ",".join(f"{g}:{w:g}" for g, w in chosen.get("weights", {}).items())
    return out


def selection_lines(selection: dict | None) -> list[str]:
    """The choice of ``Recommender.fit`` in plain words, one line per mode (for the CLI)."""
    if not selection or not any(m in selection for m in ("all", "new")):
        return [f"selection: {(selection or {}).get('reason', 'none')}"]
    lines = []
    for mode, what in (("all", "all purchases"), ("new", "new items")):
        c = selection.get(mode)
        if not c:
            continue
        blend = " + ".join(f"{w:g}×{g}" for g, w in c.get("weights", {}).items())
        ranker, mixed = c.get("ranker_check_ndcg@10"), c.get("blend_check_ndcg@10")
        checked = f" (check users: ranker {ranker}, blend {mixed})" if ranker is not None else ""
        how = "LambdaRank re-ranker" if c.get("method") == "ranker" else f"blend {blend}"
        lines.append(f"{what}: {how}{checked}")
    return lines


class _Advance:
    """Adapter so fitting code can call ``progress.advance()`` on a rich task."""

    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def advance(self) -> None:
        self.bar.advance(self.task)


# ---------------------------------------------------------------------- evaluation
BASELINES = ("popular", "trending", "popular_segment", "seasonal", "buy_again", "frequency", "als", "bpr", "bm25", "cosine", "ease", "cooc")
#: names of the generators as baselines in evaluation results
BASELINE_NAMES = {
    "popular": "popularity", "popular_segment": "popularity_segment", "trending": "trending", "seasonal": "seasonal",
    "buy_again": "buy_again", "frequency": "frequency", "als": "als", "bpr": "bpr", "bm25": "bm25", "cosine": "cosine", "ease": "ease",
    "cooc": "cooccurrence",
}


def evaluate_time_split(
    interactions: pd.DataFrame,
    cutoff,
    window_days: float = 90.0,
    k: int = 10,
    items: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    params: dict | None = None,
    baselines: tuple[str, ...] = BASELINES,
    tune: bool = False,
) -> dict:
    """The evaluation protocol: fit on everything before ``cutoff``; test users are those with an
    interaction in ``[cutoff, cutoff + window_days)`` and history before ``cutoff``.

    * ``all`` view: relevant = distinct items they had in the window (repeats included); the model
      and baselines may recommend already-bought items (``exclude_seen=False``);
    * ``new`` view: relevant = those items they never had before ``cutoff`` (users with none are
      dropped); model and baselines exclude already-bought items (``buy_again`` has nothing to say).

    Baselines are the model's own generators used alone (names in ``BASELINE_NAMES``: popularity,
    popularity_segment, trending, seasonal, buy_again, als, bm25, ease, cooccurrence, ...), so
    they are evaluated in the same run on the same users.

    Returns ``{"all": {name: metrics}, "new": {...}, "n_users": .., "n_users_new": .., "fit_seconds": ..}``.
    """
    df = normalize_interactions(interactions)
    train, test = time_split(df, cutoff, window_days)
    test = test[test["weight"] > 0]
    truth_all, truth_new = holdout_truth(train, test)
    if train.empty or test.empty:
        raise ValueError(f"no interactions before {cutoff} or none in the {window_days} days after it")
    model = Recommender(**(params or {})).fit(train, items=items, users=users, tune=tune)
    users_all = truth_all["user_id"].unique()
    users_new = truth_new["user_id"].unique()
    catalogue = model.state_.matrix.shape[1]
    n_train_users = model.state_.matrix.shape[0]
    popularity = pd.Series(model.state_.items.users / max(n_train_users, 1), index=model.item_ids_)
    out: dict = {"all": {}, "new": {}}
    for view, truth, users_v, excl in (("all", truth_all, users_all, False), ("new", truth_new, users_new, True)):
        preds = {"model": model.recommend(users_v, k=k, exclude_seen=excl)}
        for b in baselines:
            if model._generator(b) is None or (b in OWN_ITEM_GENERATORS and view == "new"):
                continue
            preds[BASELINE_NAMES.get(b, b)] = model.recommend_baseline(users_v, b, k=k, exclude_seen=excl)
        for name, pred in preds.items():
            out[view][name] = ranking_metrics(truth, pred, k=k, catalog_size=catalogue, item_popularity=popularity)
    out["n_users"] = int(len(users_all))
    out["n_users_new"] = int(len(users_new))
    out["selection"] = model.selection_
    out["fit_seconds"] = round(model.fit_seconds_, 1)
    out["fit_cpu"] = model.fit_cpu_
    out["cutoff"] = str(pd.Timestamp(cutoff).date())
    out["window_days"] = window_days
    out["k"] = k
    return out


def gate_evaluator(workspace) -> Callable[[str], dict]:
    """For ``crmml models promote``: evaluate a registered recommender on the newest window.

    A recommender fitted on all the data has seen that window, so its configuration is what gets
    evaluated: the model's parameters are refitted on the interactions before ``last day - 90
    days`` and scored on the 90 days after (the protocol of :func:`evaluate_time_split`, baselines
    left out). Champion and challenger go through the same window. Returns the ``all`` view's
    metrics (``ndcg@10``, ``coverage``, ...), ``new.ndcg@10`` and ``window``.
    """
    from training.recommender_inputs import load_inputs, newest_window_cutoff
    from training.recommender_pyfunc import load_recommender

    cache: dict = {}

    def evaluate(model_uri: str) -> dict:
        model = load_recommender(model_uri)
        if "inputs" not in cache:
            cache["inputs"] = load_inputs(workspace)
        interactions, items, users = cache["inputs"]
        window = int(getattr(model, "rank_window_days", 90))
        cutoff = newest_window_cutoff(interactions, window)
        if cutoff is None:
            raise ValueError("the interactions have no timestamps: no time window to evaluate on")
        params = {**model.get_params(), **getattr(model, "best_params_", {}), "show_progress": False}
        result = evaluate_time_split(interactions, cutoff, window_days=window, k=10, items=items, users=users,
                                     params=params, baselines=())
        out = dict(result["all"]["model"])
        out.update({f"new.{k}": v for k, v in result["new"].get("model", {}).items() if k.startswith("ndcg")})
        out["window"] = str(pd.Timestamp(cutoff).date())
        return out

    return evaluate
