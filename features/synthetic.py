"""The embedded default shop: a synthetic CRM/e-commerce data set that behaves like a real one.

``generate()`` returns the canonical tables (``events``, ``customers``, ``items``, ``tickets``,
``campaigns``, each passed through :func:`features.contract.conform`) plus the hidden truth
(:data:`TRUTH_TABLES`): ``ground_truth``, the lapse moment and its planted driver for every
customer, and ``tastes``/``favourites``, the planted (category, style) tastes and favourite items
that the purchases are drawn from. ``write()`` stores them in a workspace. The generative story
and the planted drivers are described in ``docs/synthetic.md``.

Everything is vectorised with numpy: customers are processed in fixed-size chunks (one random
stream per chunk, so the output depends only on the arguments, never on the machine), and no
Python loop runs per event or per customer. Times are handled as float days since ``start``
and floored to whole seconds at the end.

Conventions of the generated data:

* every timestamp lies in ``[start, end]`` (``end`` itself is the last allowed instant: with the
  default ``end="2024-12-31"`` the shop closes at midnight starting that day);
* nothing happens before a customer's signup (``customers.first_seen``);
* no ``purchase`` (nor ``cart`` of an order) at or after a customer's ``lapse_at``; after the lapse
  a customer still browses, rarely (``POST_LAPSE_BROWSE`` of the former browsing rate, views and
  the odd abandoned cart, never an order), may return an item bought before the lapse, and still
  receives campaigns (responding far less often);
* tickets opened after the lapse are not kept (lapsed customers do not complain any more).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import contract
from features.workspace import Workspace, atomic_write

# ----------------------------------------------------------------------------------------------
# Parameters of the generative story (rates per 30 days unless said otherwise)
# ----------------------------------------------------------------------------------------------
CHUNK_CUSTOMERS = 10_000  # customers per chunk of event generation (fixed: part of determinism)
# Lighter histories for large shops: above this many customers only purchases and returns are kept
# (about 21 events per customer instead of about 107), like a shop that exports its orders only;
# views and carts are still drawn, so the purchases are the same as in the full shop.
LIGHT_ABOVE = 250_000

PRE_START_SHARE = 0.30  # customers who signed up before `start` (up to PRE_START_YEARS before)
PRE_START_YEARS = 3.0
COUNTRIES = ("United Kingdom", "Germany", "France", "Netherlands", "Ireland", "Spain", "Belgium")
COUNTRY_P = (0.68, 0.10, 0.07, 0.05, 0.04, 0.04, 0.02)
GENDERS = ("F", "M", "X")
GENDER_P = (0.54, 0.43, 0.03)
GENDER_MISSING = 0.05
BIRTH_YEAR_MISSING = 0.08
ACQUISITION = ("organic", "paid_search", "social", "referral", "email", "store")
ACQUISITION_P = (0.30, 0.22, 0.18, 0.10, 0.08, 0.12)
TIERS = ("none", "silver", "gold")
TIER_P = (0.70, 0.20, 0.10)  # ~30% members

# purchase behaviour
BASE_RATE_MEAN = 0.8  # orders per 30 days, mean of the gamma
BASE_RATE_SHAPE = 1.4  # many occasional buyers, a long tail of frequent ones
HEAVY_SHARE, HEAVY_MULT = 0.02, 4.0  # a few heavy buyers on top of the gamma tail
MEMBER_RATE_MULT = 1.2
BROWSE_PER_ORDER = 1.0  # median browse-only sessions per order session (log-normal per customer)
EXTRA_VIEWS_ORDER = 2.0  # items viewed besides those bought, per online order session (Poisson)
EXTRA_VIEWS_BROWSE = 1.5  # items viewed in a browse-only session: 1 + Poisson
ABANDON_CART_ORDER, ABANDON_CART_BROWSE = 0.15, 0.22  # a viewed item is carted, never bought
POST_LAPSE_BROWSE = 0.05  # browsing rate after the lapse, relative to before
WELCOME_ORDER_P = 0.5  # the signup session ends in an order
CHANNELS = ("web", "app", "store")
CHANNEL_P = (0.50, 0.35, 0.15)
MAIN_CHANNEL_P = 0.8  # a session uses the customer's main channel, else any

# the hidden lapse (exponential hazard, piecewise constant)
BASELINE_HAZARD = 1.0 / 1333.0  # per day
MEMBER_HAZARD_MULT = 0.5
COMPLAINT_HAZARD_MULT = 3.0  # per complaint open (unresolved) at the time
COMPLAINT_HAZARD_CAP = 3  # at most this many open complaints count
COMPLAINT_ACUTE_MULT, COMPLAINT_ACUTE_DAYS = 3.0, 45.0  # extra, in the first weeks of an open complaint
EARLY_DAYS, EARLY_HAZARD_MULT = 60.0, 2.5  # new customers: many buy once and go

# service tickets
COMPLAINT_RATE = 0.10  # per 30 days, scaled by (0.6 + 0.4 * sqrt(min(base_rate, 4)))
COMPLAINT_NEVER_RESOLVED = 0.35
COMPLAINT_RESOLVE_MEDIAN_DAYS = 1.5
INQUIRY_RATE = 0.08
OTHER_RATE = 0.02
SATISFACTION_ANSWERED = 0.6

# catalogue and tastes
N_STYLES = 3  # latent style (factor) of an item within its category
STYLE_BOOST = 6.0  # a customer prefers items of its style this many times
ZIPF_A = 1.05
EXPLORE_P = 0.10  # an order/session mission outside the customer's favourite categories
SAME_MISSION_P = 0.75  # a line of an order belongs to the order's mission category/style
N_FAVOURITES = 4
LINES_POISSON = 1.4  # lines per order: 1 + Poisson, capped at 8
MAX_LINES = 8
DISCOUNT_P = 0.12
RETURN_MEDIAN_DAYS = 9.0
CATEGORIES = (
    "Kitchen", "Garden", "Toys", "Books", "Electronics", "Beauty", "Fashion", "Shoes", "Sports",
    "Home Decor", "Pets", "Grocery", "Stationery", "Baby", "Health", "Music", "Outdoor", "Tools",
    "Jewellery", "Games",
)  # fmt: skip
ADJECTIVES = ("Classic", "Modern", "Vintage")  # one per latent style

# campaigns
CAMPAIGN_EVERY_DAYS = 14.0
CAMPAIGN_REACH = (0.10, 0.35)
CAMPAIGN_MEMBER_REACH_MULT = 1.5
CAMPAIGN_RESPONSE_P = 0.05  # alive customer, scaled by (0.5 + 0.5 * min(base_rate, 3))
CAMPAIGN_RESPONSE_LAPSED_P = 0.005
CAMPAIGN_ORDER_P = 0.3  # a response session of an alive customer ends in an order

# experiment campaigns (only with generate(experiments=N)): a random control group, planted effects
EXPERIMENT_ACTIONS = ("discount", "reminder", "discount", "service_call", "discount", "reminder")  # cycled
EXPERIMENT_FIRST_DAY = 150.0  # the first experiment; the last leaves EXPERIMENT_HORIZON_DAYS before `end`
EXPERIMENT_HORIZON_DAYS = 60.0  # the retention window the planted effect is defined on
EXPERIMENT_CONTROL_SHARE = 0.5
EXPERIMENT_AUDIENCE_DAYS = 365.0  # customers lapsed longer ago than this are not targeted
LAPSING_BEFORE_DAYS = 150.0  # "lapsing": lapsed at most this long before the send, or lapsing within the window
REGULAR_RATE, ONE_TIME_RATE = 0.6, 0.25  # orders per 30 days: regulars from, one-time buyers below
#: probability that a contact wins the customer back (an order soon after and a fresh start), by
#: action and latent segment at the send; a loyal customer only redeems a discount it did not need
EXPERIMENT_EFFECTS = {
    "discount": {"lapsing_regular": 0.60, "lapsing_occasional": 0.08, "lapsing_complaint": 0.10},
    "reminder": {"lapsing_regular": 0.25, "lapsing_occasional": 0.02, "lapsing_complaint": 0.02},
    "service_call": {"lapsing_regular": 0.10, "lapsing_occasional": 0.02, "lapsing_complaint": 0.60},
}
SEGMENTS = ("loyal", "lapsing_regular", "lapsing_occasional", "lapsing_complaint", "one_time", "gone")
LOYAL_REDEEM_P = 0.35  # a loyal customer uses the discount on an order it would have placed anyway
#: per contact, and per redeemed discount (the incentive's value)
ACTION_COSTS = {"reminder": (0.05, 0.0), "discount": (0.30, 6.0), "service_call": (4.0, 0.0)}

_HOUR = 1.0 / 24.0
_MINUTE = 1.0 / 1440.0
_SECOND_US = 1_000_000
_EVENT_TYPES = np.array(contract.EVENT_TYPES)  # view, cart, purchase, return
_VIEW, _CART, _PURCHASE, _RETURN = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def generate(
    n_customers: int = 5000,
    seed: int = 0,
    start="2023-01-01",
    end="2024-12-31",
    n_items: int | None = None,
    *,
    experiments: int = 0,
    progress: bool | None = None,
    light: bool | None = None,
) -> dict[str, pd.DataFrame]:
    """Generate a synthetic shop.

    Returns the canonical tables ``events``, ``customers``, ``items``, ``tickets`` and ``campaigns``
    (conformed to ``features.contract.TABLES``) and ``ground_truth`` (one row per customer:
    ``customer_id``, ``lapse_at``, ``lapse_driver``, ``base_rate``, ``is_member``,
    ``n_complaints_before_lapse``), ``tastes`` (``customer_id``, ``category``, ``style``, ``weight``)
    and ``favourites`` (``customer_id``, ``item_id``). Same arguments, same tables. ``progress``
    shows a progress bar (default: when more than one chunk of customers is generated). ``light``: keep purchases and
    returns only (default: above :data:`LIGHT_ABOVE` customers).

    ``experiments=N`` adds N experiment campaigns (``EXP01``...: the customers still around in the last year, half held
    out as a random control group, an action with a cost, effects planted by latent segment) and the
    table ``campaign_truth`` (both potential outcomes of every assigned customer, see
    ``docs/synthetic.md``). Their effects change the customers' histories, so ``experiments=0`` (the
    default) leaves every table as it was without them.
    """
    if n_customers < 1:
        raise ValueError("n_customers must be positive")
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    horizon = (end_ts - start_ts).total_seconds() / 86400.0
    if horizon < 30:
        raise ValueError("the period from start to end must cover at least 30 days")
    if n_items is None:
        n_items = int(min(3000, max(300, n_customers // 5)))
    n_items = max(int(n_items), 30)

    shop = _Shop(n_customers, seed, start_ts, horizon, n_items, experiments)
    shop.light = n_customers > LIGHT_ABOVE if light is None else bool(light)
    events = shop.events(progress)
    tables = {
        "events": events,
        "customers": shop.customers_table(),
        "items": shop.items_table(),
        "tickets": shop.tickets_table(),
        "campaigns": shop.campaigns_table(),
    }
    out = {name: contract.conform(name, df, source="synthetic") for name, df in tables.items()}
    out["ground_truth"] = shop.ground_truth_table()
    out["tastes"] = shop.tastes_table()
    out["favourites"] = shop.favourites_table()
    if experiments:
        out["campaign_truth"] = shop.campaign_truth_table()
    return out


def ground_truth_path(workspace: Workspace) -> Path:
    return workspace.root / "synthetic" / "ground_truth.parquet"


def campaign_truth_path(workspace: Workspace) -> Path:
    return workspace.root / "synthetic" / "campaign_truth.parquet"


def tastes_path(workspace: Workspace) -> Path:
    return workspace.root / "synthetic" / "tastes.parquet"


def favourites_path(workspace: Workspace) -> Path:
    return workspace.root / "synthetic" / "favourites.parquet"


#: the tables of ``generate()`` that are hidden truth, not shop data (never ingested as canonical tables)
TRUTH_TABLES = ("ground_truth", "tastes", "favourites", "campaign_truth")
_TRUTH_PATHS = {"ground_truth": ground_truth_path, "tastes": tastes_path, "favourites": favourites_path,
                "campaign_truth": campaign_truth_path}


def write(workspace: Workspace, tables: dict[str, pd.DataFrame], seed, n_customers) -> dict:
    """Write the canonical tables and the ground truth into ``workspace``; record the ingestion.

    Canonical tables absent from ``tables`` (e.g. ``interactions`` of an earlier ingestion) are
    removed so that the workspace holds one shop. Each table of the hidden truth (:data:`TRUTH_TABLES`)
    goes to ``<root>/synthetic/<name>.parquet``; one absent from ``tables`` is removed there (the truth
    of another shop). Returns the ingestion record.
    """
    from features.event_log import merge_log

    tables, logged = merge_log(workspace, tables)  # the events accepted online join the shop's
    counts: dict[str, int] = {}
    for name in contract.TABLES:
        if name in tables:
            df = contract.conform(name, tables[name], source="synthetic")
            workspace.write_table(name, df)
            counts[name] = int(len(df))
        else:
            workspace.remove_table(name)
    record: dict = {"source": "synthetic", "seed": seed, "n_customers": n_customers, "tables": counts}
    if logged is not None:
        record["events_log"] = logged
    for name in TRUTH_TABLES:
        path = _TRUTH_PATHS[name](workspace)
        if name in tables:
            truth = tables[name]
            atomic_write(path, lambda tmp, truth=truth: truth.to_parquet(tmp, index=False))
            record[name] = str(path)
        else:
            path.unlink(missing_ok=True)  # the truth of another shop
    return workspace.record_ingestion(record)


# ----------------------------------------------------------------------------------------------
# Implementation
# ----------------------------------------------------------------------------------------------
def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *tags]))


def _id_strings(prefix: str, n: int, width: int | None = None) -> pa.Array:
    """prefix + zero-padded 1..n, as an Arrow string array."""
    width = width or len(str(n))
    nums = pa.array(np.arange(1, n + 1, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(nums, width=width, padding="0"), "")


def _decode(dictionary: pa.Array, codes: np.ndarray) -> pd.Series:
    """Arrow-backed string Series of dictionary[codes] (negative codes are missing)."""
    codes = np.asarray(codes)
    indices = pa.array(codes, mask=codes < 0) if (codes < 0).any() else pa.array(codes)
    return pd.Series(pd.arrays.ArrowStringArray(pc.take(dictionary, indices)))


def _timestamps(start_us: int, days: np.ndarray) -> np.ndarray:
    """Float days since start -> datetime64[us], floored to whole seconds; NaN/inf -> NaT."""
    days = np.asarray(days, dtype=np.float64)
    ok = np.isfinite(days)
    secs = np.floor(np.where(ok, days, 0.0) * 86400.0).astype(np.int64)
    us = start_us + secs * _SECOND_US
    out = us.astype("datetime64[us]")
    out[~ok] = np.datetime64("NaT")
    return out


def _floor_seconds(days: np.ndarray) -> np.ndarray:
    return np.floor(days * 86400.0) / 86400.0


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _group_cumsum(values: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Cumulative sum restarting at each group start (groups are contiguous)."""
    cs = np.cumsum(values)
    offsets = cs[starts] - values[starts]
    sizes = np.diff(np.r_[starts, n])
    return cs - np.repeat(offsets, sizes)


class _Shop:
    """Holds the customer-level latent state; events are generated chunk by chunk."""

    def __init__(self, n: int, seed: int, start: pd.Timestamp, horizon: float, n_items: int, experiments: int = 0):
        self.n, self.seed, self.start, self.H = n, int(seed), start, float(horizon)
        self.start_us = int(np.datetime64(start.to_datetime64(), "us").astype(np.int64))
        self._calendar()
        self._catalogue(n_items)
        self._customers()
        self._tickets_and_lapse()
        self._experiments(int(experiments))  # before the regular campaigns: they see the final lapse
        self._campaign_schedule()
        self.order_ts: list[np.ndarray] = []  # purchase time of each order, by order code
        self.light = False  # keep purchases and returns only (see LIGHT_ABOVE)
        self.campaign_parts: list[tuple[np.ndarray, ...]] = []
        self.exp_outcomes: list[tuple[np.ndarray, ...]] = []  # (row index, observed y, y without effect)

    # -- calendar: weekly and yearly seasonality, time of day -----------------------------------
    def _calendar(self) -> None:
        n_days = int(math.ceil(self.H)) + 1
        dates = pd.date_range(self.start.normalize(), periods=n_days, freq="D")
        weekday = np.array([0.92, 0.90, 0.94, 0.98, 1.05, 1.13, 1.08])[dates.day_of_week]
        doy = dates.day_of_year.to_numpy().astype(float)
        yearly = (
            1.0
            + 0.55 * np.exp(-0.5 * ((doy - 335) / 12.0) ** 2)  # Black Friday to Christmas
            + 0.20 * np.exp(-0.5 * ((np.minimum(doy, 365 - doy) - 4) / 6.0) ** 2)  # January sales
            - 0.12 * np.exp(-0.5 * ((doy - 205) / 25.0) ** 2)  # summer lull
        )
        season = weekday * yearly
        self.season = season / season.mean()
        self.season_max = float(self.season.max())
        hours = np.array(
            [0.3, 0.15, 0.1, 0.08, 0.08, 0.15, 0.4, 0.8, 1.1, 1.2, 1.3, 1.4,
             1.6, 1.5, 1.3, 1.3, 1.3, 1.4, 1.7, 2.0, 2.1, 1.8, 1.2, 0.6]
        )  # fmt: skip
        self.hour_cdf = np.cumsum(hours) / hours.sum()
        # the day offset of the start instant (start may carry a time of day)
        self.start_frac = (self.start - self.start.normalize()).total_seconds() / 86400.0

    def _time_of_day(self, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
        """Move each time to a realistic time of day on the same calendar day."""
        hour = np.searchsorted(self.hour_cdf, rng.random(len(t)), side="right").astype(float)
        hour = np.minimum(hour, 23.0)
        day0 = np.floor(t + self.start_frac) - self.start_frac
        return day0 + (hour + rng.random(len(t))) * _HOUR

    def _poisson_times(self, rng, cust, lo, hi, rate_per_day) -> tuple[np.ndarray, np.ndarray]:
        """Seasonal Poisson process per customer on [lo, hi]: returns (customer, time) pairs."""
        length = np.maximum(hi - lo, 0.0)
        counts = rng.poisson(rate_per_day * self.season_max * length)
        c = np.repeat(cust, counts)
        t = np.repeat(lo, counts) + rng.random(len(c)) * np.repeat(length, counts)
        day = np.clip(np.floor(t + self.start_frac).astype(np.int64), 0, len(self.season) - 1)
        keep = rng.random(len(c)) * self.season_max < self.season[day]
        c, t = c[keep], t[keep]
        t = self._time_of_day(rng, t)
        inside = (t >= np.repeat(lo, counts)[keep]) & (t <= np.repeat(hi, counts)[keep])
        return c[inside], t[inside]

    # -- catalogue -------------------------------------------------------------------------------
    def _catalogue(self, n_items: int) -> None:
        rng = _rng(self.seed, 1)
        n_cat = int(np.clip(n_items // 60, 10, 20))
        self.n_cat, self.n_items = n_cat, n_items
        cat_names = np.array(CATEGORIES[:n_cat])
        # category sizes: skewed, at least 5 items each
        share = rng.dirichlet(np.full(n_cat, 2.0))
        sizes = 5 + rng.multinomial(n_items - 5 * n_cat, share)
        item_cat = np.repeat(np.arange(n_cat), sizes)
        item_style = rng.integers(0, N_STYLES, n_items)
        # log-normal prices around a category median
        cat_median = np.exp(rng.normal(math.log(18.0), 0.8, n_cat))
        price = cat_median[item_cat] * np.exp(rng.normal(0.0, 0.45, n_items))
        price = np.maximum(np.round(price, 0) - 0.01, 0.49)
        # Zipf-like long tail of popularity, ranks shuffled over the catalogue
        rank = rng.permutation(n_items)
        pop = 1.0 / (rank + 1.0) ** ZIPF_A
        cat_pop = np.bincount(item_cat, weights=pop, minlength=n_cat)
        self.cat_pop = cat_pop / cat_pop.sum()
        self.item_cat, self.item_style, self.item_price = item_cat, item_style, price
        self.item_names = np.char.add(
            np.char.add(np.array(ADJECTIVES)[item_style], " "),
            np.char.add(np.char.add(cat_names[item_cat], " item "), (np.arange(n_items) + 1).astype(str)),
        )
        self.cat_names = cat_names
        self.cat_return_p = rng.uniform(0.01, 0.07, n_cat)
        if "Fashion" in cat_names:
            self.cat_return_p[list(cat_names).index("Fashion")] = 0.12
        if "Shoes" in cat_names:
            self.cat_return_p[list(cat_names).index("Shoes")] = 0.10
        # one sampler for every (category, style) "combo": a global CDF where combo g spans [g, g+1]
        seg_items, seg_cdf = [], []
        for c in range(n_cat):  # loop over categories, not events
            members = np.flatnonzero(item_cat == c)
            for s in range(N_STYLES):
                w = pop[members] * np.where(item_style[members] == s, STYLE_BOOST, 1.0)
                cdf = np.cumsum(w) / w.sum()
                cdf[-1] = 1.0
                seg_items.append(members)
                seg_cdf.append(c * N_STYLES + s + cdf)
        self.seg_items = np.concatenate(seg_items).astype(np.int32)
        self.seg_cdf = np.concatenate(seg_cdf)

    def _sample_items(self, rng, combo: np.ndarray) -> np.ndarray:
        u = rng.random(len(combo))
        idx = np.searchsorted(self.seg_cdf, combo + u, side="right")
        return self.seg_items[np.minimum(idx, len(self.seg_items) - 1)]

    def _pick_combo(self, rng, cust: np.ndarray, explore_p: float = EXPLORE_P) -> np.ndarray:
        """A (category, style) combo from each customer's tastes, sometimes exploring."""
        m = len(cust)
        u = rng.random(m)
        slot = (u[:, None] > self.taste_cumw[cust, :2]).sum(1)
        slot = np.minimum(slot, self.n_fav_cats[cust] - 1)
        combo = self.fav_cat[cust, slot] * N_STYLES + self.fav_style[cust, slot]
        explore = rng.random(m) < explore_p
        k = int(explore.sum())
        if k:
            cats = rng.choice(self.n_cat, size=k, p=self.cat_pop)
            combo[explore] = cats * N_STYLES + rng.integers(0, N_STYLES, k)
        return combo

    # -- customers -------------------------------------------------------------------------------
    def _customers(self) -> None:
        rng = _rng(self.seed, 2)
        n, H = self.n, self.H
        pre = rng.random(n) < PRE_START_SHARE
        signup = np.where(pre, -rng.random(n) * PRE_START_YEARS * 365.0, rng.random(n) * (H - 3.0))
        signup = self._time_of_day(rng, signup)
        signup = np.where(pre, np.minimum(signup, -_MINUTE), np.clip(signup, 0.0, H - 2.0))
        self.signup = _floor_seconds(signup)
        self.t0 = np.maximum(self.signup, 0.0)
        self.country = rng.choice(len(COUNTRIES), n, p=COUNTRY_P)
        g = rng.choice(len(GENDERS), n, p=GENDER_P)
        self.gender = np.where(rng.random(n) < GENDER_MISSING, -1, g)
        by = np.clip(np.round(rng.normal(1983, 13, n)), 1940, 2007)
        self.birth_year = np.where(rng.random(n) < BIRTH_YEAR_MISSING, np.nan, by)
        self.acquisition = rng.choice(len(ACQUISITION), n, p=ACQUISITION_P)
        self.acquisition[(~pre) & (rng.random(n) < 0.02)] = ACQUISITION.index("referral")
        self.tier = rng.choice(len(TIERS), n, p=TIER_P)
        self.is_member = self.tier > 0
        rate = rng.gamma(BASE_RATE_SHAPE, BASE_RATE_MEAN / BASE_RATE_SHAPE, n)
        rate = rate * np.where(rng.random(n) < HEAVY_SHARE, HEAVY_MULT, 1.0)
        rate = rate * np.where(self.is_member, MEMBER_RATE_MULT, 1.0)
        self.base_rate = np.maximum(rate, 0.02)  # orders per 30 days
        self.browse_mult = BROWSE_PER_ORDER * np.exp(rng.normal(0.0, 0.5, n))
        self.main_channel = rng.choice(len(CHANNELS), n, p=CHANNEL_P)
        # points: members only, from their (observable) buying level and tenure at start,
        # not from anything that happens in the period (no leakage of the future)
        tenure_months = np.maximum(-self.signup, 0.0) / 30.0 + 3.0
        pts = rng.gamma(2.0, 0.5, n) * self.base_rate * tenure_months * 40.0
        self.points = np.where(self.is_member, np.round(pts), 0.0)
        # tastes: 1-3 favourite categories (Gumbel top-k by category popularity), a style in each
        self.n_fav_cats = rng.choice([1, 2, 3], n, p=[0.4, 0.4, 0.2])
        keys = np.log(self.cat_pop)[None, :] + rng.gumbel(size=(n, self.n_cat))
        self.fav_cat = np.argsort(-keys, axis=1)[:, :3].astype(np.int64)
        self.fav_style = rng.integers(0, N_STYLES, (n, 3))
        w = rng.gamma(1.5, 1.0, (n, 3)) * (np.arange(3)[None, :] < self.n_fav_cats[:, None])
        w = w / w.sum(1, keepdims=True)
        self.taste_w = w  # kept for the ground truth (``tastes_table``); draws nothing
        self.taste_cumw = np.cumsum(w, axis=1)
        # favourites, rebought again and again
        cust = np.repeat(np.arange(n), N_FAVOURITES)
        self.favourites = self._sample_items(rng, self._pick_combo(rng, cust, 0.0)).reshape(n, N_FAVOURITES)
        self.repeat_p = rng.beta(1.5, 5.0, n)

    # -- tickets and the hidden lapse ------------------------------------------------------------
    def _tickets_and_lapse(self) -> None:
        rng = _rng(self.seed, 3)
        n, H = self.n, self.H
        idx = np.arange(n)
        # complaints: Poisson over [t0, H] (those after the lapse are dropped below; the lapse only
        # depends on complaints before it, so this thinning is exact)
        c_rate = COMPLAINT_RATE / 30.0 * (0.6 + 0.4 * np.sqrt(np.minimum(self.base_rate, 4.0)))
        cc, c_open = self._poisson_times(rng, idx, self.t0, np.full(n, H), c_rate)
        c_open = _floor_seconds(c_open)
        never = rng.random(len(cc)) < COMPLAINT_NEVER_RESOLVED
        delay = COMPLAINT_RESOLVE_MEDIAN_DAYS * np.exp(rng.normal(0.0, 1.1, len(cc)))
        c_close = np.where(never, np.inf, _floor_seconds(c_open + delay))
        c_close = np.where(c_close > H, np.inf, c_close)  # still open at the end of the period

        # piecewise-constant hazard: breakpoints at t0, end of the early phase, complaint open/close
        early_end = self.signup + EARLY_DAYS
        early0 = (early_end > self.t0).astype(np.int64)
        e_mask = (early_end > self.t0) & (early_end < H)
        closes = np.isfinite(c_close)
        acute_end = np.minimum(c_open + COMPLAINT_ACUTE_DAYS, c_close)
        a_ends = acute_end < H

        def rec(cust, t, order, d_open=0.0, d_acute=0.0, d_early=0.0):
            k = len(cust)
            deltas = (np.broadcast_to(np.asarray(v, dtype=float), (k,)) for v in (order, d_open, d_acute, d_early))
            return (cust, t, *deltas)

        parts = [  # each: customer, time, order at equal times (start, change, end), d_open, d_acute, d_early
            rec(idx, self.t0, 0.0, d_early=early0.astype(float)),
            rec(idx[e_mask], early_end[e_mask], 1.0, d_early=-1.0),
            rec(cc, c_open, 1.0, d_open=1.0, d_acute=1.0),
            rec(cc[closes], c_close[closes], 1.0, d_open=-1.0),
            rec(cc[a_ends], acute_end[a_ends], 1.0, d_acute=-1.0),
            rec(idx, np.full(n, H), 2.0),
        ]
        r_c, r_t, r_o, r_dopen, r_dacute, r_dearly = (np.concatenate([p[k] for p in parts]) for k in range(6))
        order = np.lexsort((r_o, r_t, r_c))
        r_c, r_t = r_c[order].astype(np.int64), r_t[order]
        m = len(r_c)
        starts = _group_starts(r_c)
        n_open = np.rint(_group_cumsum(r_dopen[order], starts, m)).astype(np.int64)
        acute = np.rint(_group_cumsum(r_dacute[order], starts, m)).astype(np.int64)
        early = np.rint(_group_cumsum(r_dearly[order], starts, m)).astype(np.int64)
        h = BASELINE_HAZARD * np.where(self.is_member, MEMBER_HAZARD_MULT, 1.0)
        rate = (
            h[r_c]
            * np.where(early > 0, EARLY_HAZARD_MULT, 1.0)
            * COMPLAINT_HAZARD_MULT ** np.minimum(n_open, COMPLAINT_HAZARD_CAP)
            * np.where(acute > 0, COMPLAINT_ACUTE_MULT, 1.0)
        )
        valid = np.r_[r_c[1:] == r_c[:-1], False]
        seg_len = np.where(valid, np.r_[np.diff(r_t), 0.0], 0.0)
        seg_haz = rate * seg_len
        cum_end = _group_cumsum(seg_haz, starts, m)
        need = rng.exponential(1.0, n)  # each customer's hazard budget
        hits = np.flatnonzero(valid & (cum_end >= need[r_c]) & (seg_len > 0))
        first_c, first_pos = np.unique(r_c[hits], return_index=True)
        j = hits[first_pos]
        lapse = np.full(n, np.inf)
        lapse[first_c] = r_t[j] + (need[first_c] - (cum_end[j] - seg_haz[j])) / rate[j]
        lapse[first_c] = np.minimum(lapse[first_c], r_t[j + 1])
        lapse = np.where(lapse > H, np.inf, _floor_seconds(lapse))
        driver = np.full(n, "none", dtype=object)
        lapsed_c = first_c[np.isfinite(lapse[first_c])]
        jj = j[np.isfinite(lapse[first_c])]
        driver[lapsed_c] = np.where(n_open[jj] > 0, "complaints", np.where(early[jj] > 0, "early", "baseline"))
        self.lapse, self.driver = lapse, driver

        keep = c_open < lapse[cc]
        cc, c_open, c_close, never = cc[keep], c_open[keep], c_close[keep], never[keep]
        self.n_complaints_before_lapse = np.bincount(cc, minlength=n)
        unresolved = ~np.isfinite(c_close)
        quick = np.isfinite(c_close) & (c_close - c_open < 2.0)
        sat = np.where(
            unresolved,
            rng.choice([1.0, 2.0, 3.0], len(cc), p=[0.6, 0.3, 0.1]),
            np.where(
                quick,
                rng.choice([2.0, 3.0, 4.0, 5.0], len(cc), p=[0.1, 0.3, 0.4, 0.2]),
                rng.choice([1.0, 2.0, 3.0, 4.0], len(cc), p=[0.2, 0.35, 0.3, 0.15]),
            ),
        )
        sat = np.where(rng.random(len(cc)) < SATISFACTION_ANSWERED, sat, np.nan)

        # inquiries and other contacts: only while the customer is around, resolved quickly
        alive_end = np.minimum(lapse, H)
        scale = 0.5 + 0.5 * np.sqrt(np.minimum(self.base_rate, 4.0))
        ic, i_open = self._poisson_times(rng, idx, self.t0, alive_end, INQUIRY_RATE / 30.0 * scale)
        oc, o_open = self._poisson_times(rng, idx, self.t0, alive_end, OTHER_RATE / 30.0 * scale)
        i_open, o_open = _floor_seconds(i_open), _floor_seconds(o_open)
        k_i, k_o = len(ic), len(oc)
        i_close = np.where(rng.random(k_i) < 0.97, i_open + 0.5 * np.exp(rng.normal(0, 0.8, k_i)), np.inf)
        o_close = np.where(rng.random(k_o) < 0.90, o_open + 1.0 * np.exp(rng.normal(0, 0.8, k_o)), np.inf)
        i_sat = np.where(rng.random(k_i) < 0.4, rng.choice([3.0, 4.0, 5.0], k_i, p=[0.2, 0.4, 0.4]), np.nan)
        o_sat = np.where(rng.random(k_o) < 0.3, rng.choice([2.0, 3.0, 4.0, 5.0], k_o, p=[0.1, 0.3, 0.4, 0.2]), np.nan)

        t_c = np.concatenate([cc, ic, oc])
        t_open = np.concatenate([c_open, i_open, o_open])
        t_close = np.concatenate([c_close, _floor_seconds(i_close), _floor_seconds(o_close)])
        t_close = np.where(t_close > H, np.inf, t_close)
        t_kind = np.concatenate([np.zeros(len(cc), np.int64), np.ones(k_i, np.int64), np.full(k_o, 2, np.int64)])
        t_sat = np.concatenate([sat, i_sat, o_sat])
        o = np.lexsort((t_c, t_open))
        self.tickets = (t_c[o], t_open[o], t_close[o], t_kind[o], t_sat[o])

    # -- campaigns -------------------------------------------------------------------------------
    def _campaign_schedule(self) -> None:
        rng = _rng(self.seed, 4)
        days = np.arange(7.0, self.H - 3.0, CAMPAIGN_EVERY_DAYS)
        days = days + rng.integers(-2, 3, len(days))
        days = np.floor(days + self.start_frac) - self.start_frac + (9.0 + rng.random(len(days)) * 3.0) * _HOUR
        self.camp_day = _floor_seconds(np.clip(days, 0.0, self.H - 1.0))
        self.camp_reach = rng.uniform(*CAMPAIGN_REACH, len(days))

    def _campaigns_for(self, rng, cust: np.ndarray) -> tuple[np.ndarray, ...]:
        """Contacts and responses of the customers ``cust`` (a chunk)."""
        n_c = len(self.camp_day)
        if n_c == 0:
            e = np.zeros(0)
            return e.astype(np.int64), e.astype(np.int64), e, e
        reach = self.camp_reach[None, :] * np.where(self.is_member[cust], CAMPAIGN_MEMBER_REACH_MULT, 1.0)[:, None]
        sent_mask = (rng.random((len(cust), n_c)) < reach) & (self.signup[cust][:, None] < self.camp_day[None, :])
        ci, ki = np.nonzero(sent_mask)
        c = cust[ci]
        sent = _floor_seconds(self.camp_day[ki] + rng.random(len(c)) * 20.0 * _MINUTE)
        alive = sent < self.lapse[c]
        p = np.where(
            alive,
            CAMPAIGN_RESPONSE_P * (0.5 + 0.5 * np.minimum(self.base_rate[c], 3.0)),
            CAMPAIGN_RESPONSE_LAPSED_P,
        )
        responded = rng.random(len(c)) < p
        resp = np.where(responded, _floor_seconds(sent + rng.exponential(1.5, len(c)) + _MINUTE), np.inf)
        resp = np.where(resp > self.H - _HOUR, np.inf, resp)
        return c, ki, sent, resp

    # -- experiment campaigns --------------------------------------------------------------------
    def _experiments(self, n_exp: int) -> None:
        """Plant ``n_exp`` randomised campaigns: assignment, latent segment, effect, new lapse.

        Processed in time order (a loop over campaigns, not customers), each seeing the lapse left by
        the earlier ones. A treated customer who is won back gets an order within days (``ind_t``) and a
        fresh start: its lapse moves to after the window; one already lapsed is absent in between (a
        gap, from which sessions are dropped). Tickets keep the original lapse (a simplification).
        """
        self.exp_n = n_exp
        self.gaps = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        if n_exp <= 0:
            return
        rng = _rng(self.seed, 5)
        h = EXPERIMENT_HORIZON_DAYS
        last = self.H - h - 2.0
        first = min(EXPERIMENT_FIRST_DAY, max(last, 0.0))
        days = np.linspace(first, last, n_exp) if n_exp > 1 else np.array([first])
        days = np.floor(days + self.start_frac) - self.start_frac + 10.0 * _HOUR
        self.exp_day = _floor_seconds(np.clip(days, 0.0, self.H - 1.0))
        self.exp_action = np.array([EXPERIMENT_ACTIONS[k % len(EXPERIMENT_ACTIONS)] for k in range(n_exp)])
        hazard = BASELINE_HAZARD * np.where(self.is_member, MEMBER_HAZARD_MULT, 1.0)
        lapse = self.lapse.copy()
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("k", "c", "treated", "seg", "tau", "won", "lapse_before",
                                                              "sent", "resp", "ind_t")}
        g_c, g_lo, g_hi = [], [], []
        seg_index = {name: i for i, name in enumerate(SEGMENTS)}
        for k, s in enumerate(self.exp_day):  # loop over campaigns
            # the target: customers signed up and still around in the last year (a retention audience)
            c = np.flatnonzero((self.signup < s) & (lapse > s - EXPERIMENT_AUDIENCE_DAYS))
            m = len(c)
            treated = rng.random(m) >= EXPERIMENT_CONTROL_SHARE
            before = lapse[c]
            rate = self.base_rate[c]
            lapsing = (before > s - LAPSING_BEFORE_DAYS) & (before <= s + h)
            seg = np.full(m, seg_index["loyal"])
            seg = np.where(lapsing & (rate >= REGULAR_RATE), seg_index["lapsing_regular"], seg)
            seg = np.where(lapsing & (rate < REGULAR_RATE), seg_index["lapsing_occasional"], seg)
            # a complaint-driven lapse is answered by a call (the driver is that of the original lapse)
            complaint = lapsing & (self.driver[c] == "complaints") & (before == self.lapse[c])
            seg = np.where(complaint & (rate >= ONE_TIME_RATE), seg_index["lapsing_complaint"], seg)
            seg = np.where(before <= s - LAPSING_BEFORE_DAYS, seg_index["gone"], seg)
            seg = np.where(rate < ONE_TIME_RATE, seg_index["one_time"], seg)
            effects = EXPERIMENT_EFFECTS[self.exp_action[k]]
            tau = np.array([effects.get(name, 0.0) for name in SEGMENTS])[seg]
            won = rng.random(m) < tau  # latent for everyone: the control group's y1 uses it
            sent = _floor_seconds(s + rng.random(m) * 20.0 * _MINUTE)
            ind_t = _floor_seconds(np.minimum(sent + _MINUTE + rng.exponential(2.0, m), sent + 14.0))
            redeem = (self.exp_action[k] == "discount") & (seg == seg_index["loyal"]) & (rng.random(m) < LOYAL_REDEEM_P)
            resp = np.where(treated & won, ind_t, np.where(treated & redeem, _floor_seconds(sent + rng.exponential(5.0, m)), np.inf))
            resp = np.where(resp > self.H - _HOUR, np.inf, resp)
            effective = treated & won
            new_lapse = ind_t + h + rng.exponential(1.0, m) / hazard[c]
            new_lapse = np.where(new_lapse > self.H, np.inf, _floor_seconds(new_lapse))
            gap = effective & (before < ind_t)
            g_c.append(c[gap]), g_lo.append(before[gap]), g_hi.append(ind_t[gap])
            lapse[c[effective]] = new_lapse[effective]
            for key, value in (("k", np.full(m, k)), ("c", c), ("treated", treated), ("seg", seg), ("tau", tau),
                               ("won", won), ("lapse_before", before), ("sent", sent), ("resp", resp),
                               ("ind_t", np.where(effective, ind_t, np.inf))):
                rows[key].append(value)
        self.exp = {key: np.concatenate(v) for key, v in rows.items()}
        g_c, g_lo, g_hi = np.concatenate(g_c).astype(np.int64), np.concatenate(g_lo), np.concatenate(g_hi)
        o = np.argsort(g_c, kind="stable")
        self.gaps = (g_c[o], g_lo[o], g_hi[o])
        moved = lapse != self.lapse
        self.driver = np.where(moved & ~np.isfinite(lapse), "none", self.driver)
        self.lapse = lapse

    def _drop_gaps(self, cust: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Mask of the sessions (cust, t) outside every gap (a lapsed customer not yet won back)."""
        keep = np.ones(len(cust), bool)
        g_c, g_lo, g_hi = self.gaps  # sorted by customer
        if not len(g_c):
            return keep
        first = np.searchsorted(g_c, cust, "left")
        last = np.searchsorted(g_c, cust, "right")
        for j in range(int((last - first).max())):  # the j-th gap of each customer (at most one per campaign)
            i = np.minimum(first + j, len(g_c) - 1)
            keep &= ~((first + j < last) & (t > g_lo[i]) & (t < g_hi[i]))
        return keep

    def _experiment_rows_for(self, cust: np.ndarray) -> np.ndarray:
        """Indices of the experiment rows of the customers ``cust`` (a contiguous chunk)."""
        if not self.exp_n:
            return np.zeros(0, np.int64)
        c = self.exp["c"]
        return np.flatnonzero((c >= cust[0]) & (c <= cust[-1]))

    # -- events ----------------------------------------------------------------------------------
    def events(self, progress: bool | None) -> pd.DataFrame:
        n_chunks = -(-self.n // CHUNK_CUSTOMERS)
        show = progress if progress is not None else n_chunks > 1
        parts = []
        order_offset = 0
        bar = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("synthetic shop"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            bar.start()
            task = bar.add_task("chunks", total=n_chunks)
        try:
            for k in range(n_chunks):  # loop over chunks of customers, everything inside is vectorised
                lo, hi = k * CHUNK_CUSTOMERS, min(self.n, (k + 1) * CHUNK_CUSTOMERS)
                part, n_orders = self._chunk(_rng(self.seed, 10, k), np.arange(lo, hi), order_offset)
                order_offset += n_orders
                parts.append(part)
                if bar is not None:
                    bar.update(task, advance=1)
        finally:
            if bar is not None:
                bar.stop()
        cols = [np.concatenate([p[i] for p in parts]) for i in range(8)]
        del parts
        cust, item, etype, secs, qty, amount, order, chan = cols
        # time order (ties: view < cart < purchase < return)
        o = np.argsort(secs * 4 + etype, kind="stable")
        cust, item, etype, secs, qty, amount, order, chan = (a[o] for a in cols)
        del cols, o
        # order ids numbered by purchase time, like invoice numbers
        order_ts = np.concatenate(self.order_ts) if self.order_ts else np.zeros(0)
        rank = np.empty(len(order_ts), dtype=np.int64)
        rank[np.argsort(order_ts, kind="stable")] = np.arange(len(order_ts))
        order = np.where(order >= 0, rank[np.maximum(order, 0)], -1)
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, cust),
                "item_id": _decode(self.item_ids, item),
                "event_type": _decode(pa.array(_EVENT_TYPES), etype),
                "timestamp": (self.start_us + secs * _SECOND_US).astype("datetime64[us]"),
                "quantity": qty,
                "amount": amount,
                "order_id": _decode(_id_strings("O", max(len(order_ts), 1), 7), order),
                "channel": _decode(pa.array(CHANNELS), chan),
            }
        )

    @property
    def customer_ids(self) -> pa.Array:
        if not hasattr(self, "_customer_ids"):
            self._customer_ids = _id_strings("C", self.n, max(5, len(str(self.n))))
        return self._customer_ids

    @property
    def item_ids(self) -> pa.Array:
        if not hasattr(self, "_item_ids"):
            self._item_ids = _id_strings("I", self.n_items, max(4, len(str(self.n_items))))
        return self._item_ids

    def _chunk(self, rng: np.random.Generator, cust: np.ndarray, order_offset: int):
        H = self.H
        lapse = self.lapse
        t0 = self.t0[cust]
        alive_end = np.minimum(lapse[cust], H) - _HOUR  # sessions end before the lapse / end
        rate_day = self.base_rate[cust] / 30.0

        # 1. sessions: (customer, start, is_order)
        oc, ot = self._poisson_times(rng, cust, t0, alive_end, rate_day)
        bc, bt = self._poisson_times(rng, cust, t0, alive_end, rate_day * self.browse_mult[cust])
        after_lo = np.minimum(lapse[cust], H)
        pc_, pt = self._poisson_times(
            rng, cust, after_lo, np.full(len(cust), H - _HOUR), rate_day * self.browse_mult[cust] * POST_LAPSE_BROWSE
        )
        # the signup session (customers who sign up within the period)
        new = cust[(self.signup[cust] >= 0) & (self.signup[cust] < H - _HOUR)]
        wt = self.signup[new] + rng.random(len(new)) * 10 * _MINUTE
        w_order = (rng.random(len(new)) < WELCOME_ORDER_P) & (wt < np.minimum(lapse[new], H) - _HOUR)
        # campaign contacts; a response brings the customer to the shop
        cc, ck, csent, cresp = self._campaigns_for(rng, cust)
        self.campaign_parts.append((cc, ck, csent, cresp))
        rsp = np.isfinite(cresp)
        rc, rt = cc[rsp], cresp[rsp]
        r_alive = rt < np.minimum(lapse[rc], H) - _HOUR
        r_order = r_alive & (rng.random(len(rc)) < CAMPAIGN_ORDER_P)
        # experiment campaigns: no session while a won-back customer was away, its win-back order
        exp_rows = self._experiment_rows_for(cust)
        ind = exp_rows[np.isfinite(self.exp["ind_t"][exp_rows])] if self.exp_n else exp_rows
        ec = self.exp["c"][ind] if self.exp_n else np.zeros(0, np.int64)
        et = self.exp["ind_t"][ind] if self.exp_n else np.zeros(0)
        if self.exp_n:
            keep = self._drop_gaps(oc, ot)
            oc, ot = oc[keep], ot[keep]
            keep = self._drop_gaps(bc, bt)
            bc, bt = bc[keep], bt[keep]
            r_order &= self._drop_gaps(rc, rt)

        s_cust = np.concatenate([oc, bc, pc_, new, rc, ec]).astype(np.int64)
        s_t = np.concatenate([ot, bt, pt, wt, rt, et])
        s_order = np.concatenate(
            [np.ones(len(oc), bool), np.zeros(len(bc) + len(pc_), bool), w_order, r_order, np.ones(len(ec), bool)]
        )
        ns = len(s_cust)
        s_dur = np.minimum(np.exp(rng.normal(math.log(12 * _MINUTE), 0.6, ns)), 45 * _MINUTE)
        s_chan = np.where(rng.random(ns) < MAIN_CHANNEL_P, self.main_channel[s_cust], rng.choice(3, ns, p=CHANNEL_P))
        s_chan = np.where(~s_order & (s_chan == 2), rng.integers(0, 2, ns), s_chan)  # no browsing in store
        s_combo = self._pick_combo(rng, s_cust)

        # 2. order lines
        o_idx = np.flatnonzero(s_order)
        n_orders = len(o_idx)
        n_lines = 1 + np.minimum(rng.poisson(LINES_POISSON, n_orders), MAX_LINES - 1)
        l_sess = np.repeat(o_idx, n_lines)
        l_cust = s_cust[l_sess]
        m = len(l_sess)
        combo = np.where(rng.random(m) < SAME_MISSION_P, s_combo[l_sess], self._pick_combo(rng, l_cust))
        l_item = self._sample_items(rng, combo)
        rep = rng.random(m) < self.repeat_p[l_cust]
        l_item = np.where(rep, self.favourites[l_cust, rng.integers(0, N_FAVOURITES, m)], l_item)
        # one line per item and order
        _, first = np.unique(l_sess * self.n_items + l_item, return_index=True)
        first = np.sort(first)
        l_sess, l_cust, l_item = l_sess[first], l_cust[first], l_item[first]
        m = len(l_sess)
        l_order = order_offset + np.searchsorted(o_idx, l_sess)  # order code of each line
        qty = np.minimum(rng.geometric(0.72, m), 12).astype(np.float64)
        disc = np.where(rng.random(m) < DISCOUNT_P, rng.choice([0.1, 0.2, 0.3], m), 0.0)
        amount = np.round(qty * self.item_price[l_item] * (1.0 - disc), 2)
        p_time = s_t[l_sess] + s_dur[l_sess]
        self.order_ts.append(s_t[o_idx] + s_dur[o_idx])
        if len(exp_rows):
            induced = np.zeros(ns, bool)
            induced[ns - len(ec):] = True
            self._experiment_outcomes(exp_rows, s_cust[o_idx], s_t[o_idx] + s_dur[o_idx], induced[o_idx])
        online = s_chan[l_sess] != 2
        v_off = rng.random(m) * 0.6 * s_dur[l_sess]
        v_time = s_t[l_sess] + v_off
        c_time = v_time + rng.random(m) * (0.9 * s_dur[l_sess] - v_off)

        # 3. extra views (browsing around) and abandoned carts
        n_extra = np.where(s_order, rng.poisson(EXTRA_VIEWS_ORDER, ns), 1 + rng.poisson(EXTRA_VIEWS_BROWSE, ns))
        n_extra = np.where(s_chan == 2, 0, n_extra)
        x_sess = np.repeat(np.arange(ns), n_extra)
        mx = len(x_sess)
        x_combo = np.where(rng.random(mx) < 0.7, s_combo[x_sess], self._pick_combo(rng, s_cust[x_sess]))
        x_item = self._sample_items(rng, x_combo)
        x_time = s_t[x_sess] + rng.random(mx) * s_dur[x_sess]
        x_cart = rng.random(mx) < np.where(s_order[x_sess], ABANDON_CART_ORDER, ABANDON_CART_BROWSE)
        xc_end = s_t[x_sess][x_cart] + s_dur[x_sess][x_cart]
        xc_time = x_time[x_cart] + rng.random(int(x_cart.sum())) * (xc_end - x_time[x_cart])

        # 4. returns
        ret = rng.random(m) < self.cat_return_p[self.item_cat[l_item]]
        r_time = p_time[ret] + RETURN_MEDIAN_DAYS * np.exp(rng.normal(0.0, 0.5, int(ret.sum())))
        r_ok = r_time <= H
        r_line = np.flatnonzero(ret)[r_ok]
        r_time = r_time[r_ok]
        r_qty = np.where(qty[r_line] > 1, rng.integers(1, qty[r_line].astype(np.int64) + 1), 1).astype(np.float64)
        r_amount = np.round(amount[r_line] * r_qty / qty[r_line], 2)
        r_amount = np.maximum(r_amount, 0.01)

        nan_m = np.full(m, np.nan)
        on = np.flatnonzero(online)
        ev = [
            # customer, item, type, time, quantity, amount, order, channel
            (l_cust[on], l_item[on], _VIEW, v_time[on], nan_m[on], nan_m[on], np.full(len(on), -1), s_chan[l_sess][on]),
            (l_cust[on], l_item[on], _CART, c_time[on], qty[on], nan_m[on], np.full(len(on), -1), s_chan[l_sess][on]),
            (l_cust, l_item, _PURCHASE, p_time, qty, amount, l_order, s_chan[l_sess]),
            (l_cust[r_line], l_item[r_line], _RETURN, r_time, r_qty, r_amount, l_order[r_line], s_chan[l_sess][r_line]),
            (s_cust[x_sess], x_item, _VIEW, x_time, np.full(mx, np.nan), np.full(mx, np.nan), np.full(mx, -1), s_chan[x_sess]),
            (
                s_cust[x_sess][x_cart], x_item[x_cart], _CART, xc_time, np.ones(int(x_cart.sum())),
                np.full(int(x_cart.sum()), np.nan), np.full(int(x_cart.sum()), -1), s_chan[x_sess][x_cart],
            ),
        ]  # fmt: skip
        if self.light:
            ev = [e for e in ev if e[2] in (_PURCHASE, _RETURN)]
        out = []
        for i, dtype in enumerate((np.int32, np.int32, np.int8, np.int64, np.float64, np.float64, np.int64, np.int8)):
            if i == 2:
                arr = np.concatenate([np.full(len(e[0]), e[2], dtype=np.int8) for e in ev])
            elif i == 3:
                arr = np.floor(np.concatenate([e[3] for e in ev]) * 86400.0).astype(np.int64)
            else:
                arr = np.concatenate([np.asarray(e[i]) for e in ev]).astype(dtype)
            out.append(arr)
        return out, n_orders

    def _experiment_outcomes(self, rows: np.ndarray, o_c: np.ndarray, o_t: np.ndarray, o_ind: np.ndarray) -> None:
        """Retention (an order within the window) of experiment rows, observed and without the effect.

        For a treated customer won back, "without the effect" counts its other orders before its
        lapse as it stood at the send: the same process as in a world without the contact.
        """
        span = math.ceil(self.H) + 100.0
        e = self.exp
        c, sent = e["c"][rows], e["sent"][rows]
        hi = sent + EXPERIMENT_HORIZON_DAYS

        def count(mask, lo_, hi_):
            keys = np.sort(o_c[mask] * span + o_t[mask])
            return np.searchsorted(keys, c * span + hi_, "right") - np.searchsorted(keys, c * span + lo_, "right")

        y_obs = count(np.ones(len(o_c), bool), sent, hi) > 0
        y_wo = count(~o_ind, sent, np.minimum(hi, e["lapse_before"][rows])) > 0
        self.exp_outcomes.append((rows, y_obs, y_wo))

    # -- tables ----------------------------------------------------------------------------------
    def customers_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, np.arange(self.n)),
                "first_seen": _timestamps(self.start_us, self.signup),
                "country": _decode(pa.array(COUNTRIES), self.country),
                "gender": _decode(pa.array(GENDERS), self.gender),
                "birth_year": self.birth_year,
                "acquisition_channel": _decode(pa.array(ACQUISITION), self.acquisition),
                "membership_tier": _decode(pa.array(TIERS), self.tier),
                "points": self.points,
            }
        )

    def items_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "item_id": _decode(self.item_ids, np.arange(self.n_items)),
                "name": pd.Series(self.item_names, dtype="string"),
                "category": _decode(pa.array(self.cat_names), self.item_cat),
                "price": self.item_price,
            }
        )

    def tickets_table(self) -> pd.DataFrame:
        c, t_open, t_close, kind, sat = self.tickets
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, c),
                "opened_at": _timestamps(self.start_us, t_open),
                "kind": _decode(pa.array(contract.TICKET_KINDS), kind),
                "resolved_at": _timestamps(self.start_us, t_close),
                "satisfaction": sat,
            }
        )

    def campaigns_table(self) -> pd.DataFrame:
        parts = self.campaign_parts
        c = np.concatenate([p[0] for p in parts])
        k = np.concatenate([p[1] for p in parts])
        sent = np.concatenate([p[2] for p in parts])
        resp = np.concatenate([p[3] for p in parts])
        o = np.lexsort((c, sent))
        n_c = max(len(self.camp_day), 1)
        out = pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, c[o]),
                "campaign_id": _decode(_id_strings("CMP", n_c, 3), k[o]),
                "sent_at": _timestamps(self.start_us, sent[o]),
                "responded_at": _timestamps(self.start_us, resp[o]),
            }
        )
        if not self.exp_n:
            return out
        e = self.exp
        action = self.exp_action[e["k"]]
        contact, redeemed = (np.array([ACTION_COSTS[a][i] for a in self.exp_action])[e["k"]] for i in (0, 1))
        cost = np.where(e["treated"], contact + np.where(np.isfinite(e["resp"]), redeemed, 0.0), 0.0)
        exp = pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, e["c"]),
                "campaign_id": _decode(_id_strings("EXP", max(self.exp_n, 1), 2), e["k"]),
                "sent_at": _timestamps(self.start_us, e["sent"]),
                "responded_at": _timestamps(self.start_us, e["resp"]),
                "group": np.where(e["treated"], "treatment", "control"),
                "action": action,
                "cost": cost,
            }
        )
        both = pd.concat([out, exp], ignore_index=True)
        return both.sort_values(["sent_at", "customer_id"], kind="stable", ignore_index=True)

    def campaign_truth_table(self) -> pd.DataFrame:
        """Both potential outcomes of every customer assigned to an experiment campaign.

        ``y1``/``y0``: an order within ``EXPERIMENT_HORIZON_DAYS`` after the send with/without the
        contact (one of them observed, the other known from the planted effect); ``tau``: the planted
        probability of a win-back; ``segment``: the latent state that set it.
        """
        e = self.exp
        idx = np.concatenate([p[0] for p in self.exp_outcomes])
        y_obs = np.zeros(len(e["c"]), bool)
        y_wo = np.zeros(len(e["c"]), bool)
        y_obs[idx] = np.concatenate([p[1] for p in self.exp_outcomes])
        y_wo[idx] = np.concatenate([p[2] for p in self.exp_outcomes])
        treated, won = e["treated"], e["won"]
        y1 = np.where(treated, y_obs, y_obs | won)
        y0 = np.where(treated & won, y_wo, y_obs)
        return pd.DataFrame(
            {
                "campaign_id": _decode(_id_strings("EXP", max(self.exp_n, 1), 2), e["k"]),
                "customer_id": _decode(self.customer_ids, e["c"]),
                "action": self.exp_action[e["k"]],
                "group": np.where(treated, "treatment", "control"),
                "segment": np.array(SEGMENTS)[e["seg"]],
                "tau": e["tau"],
                "won_back": won,
                "y0": y0.astype(np.int8),
                "y1": y1.astype(np.int8),
                "horizon_days": np.full(len(e["c"]), EXPERIMENT_HORIZON_DAYS),
            }
        )

    def tastes_table(self) -> pd.DataFrame:
        """The planted tastes: one row per (customer, liked category and style), heaviest first.

        ``weight`` is the share of the customer's orders whose mission is this taste before exploring
        (``EXPLORE_P`` of the missions take any category); ``style`` is the first word of an item's name.
        """
        n, k = self.n, self.n_fav_cats
        cust = np.repeat(np.arange(n), k)
        slot = np.arange(len(cust)) - np.repeat(np.cumsum(k) - k, k)
        order = np.lexsort((-self.taste_w[cust, slot], cust))  # heaviest taste first within a customer
        cust, slot = cust[order], slot[order]
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, cust),
                "category": _decode(pa.array(self.cat_names), self.fav_cat[cust, slot]),
                "style": _decode(pa.array(ADJECTIVES), self.fav_style[cust, slot]),
                "weight": self.taste_w[cust, slot],
            }
        )

    def favourites_table(self) -> pd.DataFrame:
        """The planted favourite items, rebought again and again (``N_FAVOURITES`` draws per customer;
        a draw may repeat an item)."""
        cust = np.repeat(np.arange(self.n), N_FAVOURITES)
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, cust),
                "item_id": _decode(self.item_ids, self.favourites.reshape(-1)),
            }
        )

    def ground_truth_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": _decode(self.customer_ids, np.arange(self.n)),
                "lapse_at": _timestamps(self.start_us, self.lapse),
                "lapse_driver": pd.Series(self.driver, dtype="string"),
                "base_rate": self.base_rate,
                "is_member": self.is_member,
                "n_complaints_before_lapse": self.n_complaints_before_lapse.astype(np.int64),
            }
        )
