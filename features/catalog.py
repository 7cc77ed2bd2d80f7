"""The feature catalog: every customer feature, what it means, its window, unit and reason sentence.

This is the single documented list of the columns that ``features.snapshots.build_snapshots``
produces for a customer at a cutoff date (:data:`FEATURES`), and of the churn model's further
features computed by ``features.churn_features`` (:data:`EXTRAS`): the one place where a feature's
meaning, direction and reason sentence are looked up (:func:`lookup`). The churn model turns its strongest drivers into
sentences a CRM agent can read with :func:`reason` (``"no purchase for 143 days"``).

Point-in-time conventions (the same for every feature):

* the **cutoff** ``c`` is a date at 00:00; a feature at ``c`` uses only rows with a time
  strictly before ``c`` (``timestamp < c``, ``opened_at < c``, ``sent_at < c``);
  a state that changes later (a ticket resolved, a campaign answered) counts only when the
  change happened before ``c`` too (``resolved_at < c``, ``responded_at < c``);
* a window "last N days" is ``[c - N days, c)``; "the 90 days before" is ``[c - 180d, c - 90d)``;
* an **order** is a distinct ``order_id`` among purchase lines (a purchase line without order id
  counts as one order per customer and timestamp);
* **purchase days** are the distinct calendar days with a purchase (several invoices on one day
  are one purchase day for the gap features);
* amounts are in the shop's currency, as recorded in ``events.amount``; spend is gross (returns
  are reported separately by the return features);
* a feature whose source table is absent (no tickets, no campaigns, no views) is NULL, as is a
  ratio whose denominator is zero.

Labels (not features; see ``LABELS``): ``churned`` is 1 when the customer makes no purchase in
``[c, c + horizon)``, i.e. in the ``horizon`` days after the cutoff (day terms: "(cutoff,
cutoff + horizon]" counting the cutoff day as day 1); it is NULL where ``c + horizon`` lies after
the last event of the data.

Names are stable: other modules (the churn model's reasons, serving, reports) refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOWS = (7, 30, 90, 180, 365)

# direction hints: what a higher value means for churn risk
MORE_RISK = 1
LESS_RISK = -1
NEUTRAL = 0


@dataclass(frozen=True)
class Feature:
    name: str
    meaning: str
    window: str
    unit: str
    template: str  # formatted with value=...; read by a CRM agent as a churn reason
    direction: int  # MORE_RISK (+1): higher means more churn risk; LESS_RISK (-1); NEUTRAL (0)
    group: str
    source: str = "events"  # the canonical table it comes from
    dtype: str = "float"  # "float" or "category" (string values)

    @property
    def higher_means(self) -> str:
        return {MORE_RISK: "more risk", LESS_RISK: "less risk"}.get(self.direction, "no clear direction")

    def sentence(self, value) -> str:
        return reason(self.name, value)


def _f(*args, **kwargs) -> Feature:
    return Feature(*args, **kwargs)


_LIST: list[Feature] = [
    # -- recency, frequency, monetary, tenure --------------------------------------------------
    _f("recency_days", "Days from the last purchase to the cutoff.", "all history", "days",
       "no purchase for {value:.0f} days", MORE_RISK, "rfm"),
    _f("frequency", "Number of orders (distinct order ids of purchase lines).", "all history", "orders",
       "{value:.0f} orders in total", LESS_RISK, "rfm"),
    _f("monetary", "Total purchase amount (gross, before returns).", "all history", "currency",
       "{value:,.0f} spent in total", LESS_RISK, "rfm"),
    _f("avg_order_value", "Mean purchase amount per order (monetary / frequency).", "all history", "currency",
       "average order of {value:,.2f}", LESS_RISK, "rfm"),
    _f("tenure_days", "Days from the first event or signup (customers.first_seen) to the cutoff.",
       "all history", "days", "customer for {value:.0f} days", LESS_RISK, "rfm"),
    _f("purchase_days", "Number of distinct calendar days with a purchase.", "all history", "days",
       "bought on {value:.0f} different days", LESS_RISK, "rfm"),
]

_WINDOW_WORDS = {7: "week", 30: "30 days", 90: "90 days", 180: "180 days", 365: "year"}
for _w in WINDOWS:
    _words = f"last {_WINDOW_WORDS[_w]}"
    _LIST.append(_f(f"orders_{_w}d", f"Number of orders in the last {_w} days.", f"{_w} days", "orders",
                    "{value:.0f} orders in the " + _words, LESS_RISK, "windows"))
for _w in WINDOWS:
    _words = f"last {_WINDOW_WORDS[_w]}"
    _LIST.append(_f(f"spend_{_w}d", f"Purchase amount in the last {_w} days.", f"{_w} days", "currency",
                    "{value:,.0f} spent in the " + _words, LESS_RISK, "windows"))

_LIST += [
    # -- trends ---------------------------------------------------------------------------------
    _f("orders_trend_90d", "Orders in the last 90 days divided by orders in the 90 days before "
       "(NULL when there were none before).", "90 days vs the 90 before", "ratio",
       "orders at {value:.0%} of the previous 90 days", LESS_RISK, "trend"),
    _f("spend_trend_90d", "Spend in the last 90 days divided by spend in the 90 days before "
       "(NULL when there was none before).", "90 days vs the 90 before", "ratio",
       "spend at {value:.0%} of the previous 90 days", LESS_RISK, "trend"),
    # -- purchase rhythm ------------------------------------------------------------------------
    _f("gap_mean_days", "Mean number of days between consecutive purchase days (NULL with one purchase day).",
       "all history", "days", "usually buys every {value:.0f} days", NEUTRAL, "rhythm"),
    _f("gap_std_days", "Standard deviation (n-1) of the days between consecutive purchase days "
       "(NULL with fewer than three purchase days).", "all history", "days",
       "purchase rhythm varies by {value:.0f} days", NEUTRAL, "rhythm"),
    _f("recency_gap_ratio", "recency_days divided by gap_mean_days: how many usual gaps have passed "
       "since the last purchase.", "all history", "ratio",
       "{value:.1f}x the usual gap between purchases", MORE_RISK, "rhythm"),
    # -- baskets and assortment -----------------------------------------------------------------
    _f("basket_size", "Mean units (quantity) per order.", "all history", "units",
       "{value:.1f} units per order on average", LESS_RISK, "basket"),
    _f("basket_lines", "Mean purchase lines (products) per order.", "all history", "lines",
       "{value:.1f} products per order on average", LESS_RISK, "basket"),
    _f("distinct_items", "Number of distinct items purchased.", "all history", "items",
       "bought {value:.0f} different products", LESS_RISK, "basket"),
    _f("distinct_categories", "Number of distinct item categories purchased (needs items.category).",
       "all history", "categories", "bought from {value:.0f} categories", LESS_RISK, "basket", "items"),
    _f("top_category_share", "Share of spend in the customer's most-bought category (needs items.category).",
       "all history", "share", "{value:.0%} of spend in one category", NEUTRAL, "basket", "items"),
    # -- returns and cancellations --------------------------------------------------------------
    _f("return_rate", "Return lines divided by purchase lines (UCI: lines of cancelled invoices).",
       "all history", "ratio", "{value:.0%} of purchased lines returned", MORE_RISK, "returns"),
    _f("return_amount_rate", "Returned amount divided by purchased amount.", "all history", "ratio",
       "{value:.0%} of spend returned", MORE_RISK, "returns"),
    _f("cancellation_rate", "Return or cancellation documents (distinct order ids of return lines) divided "
       "by orders.", "all history", "ratio", "{value:.0%} of orders cancelled or returned", MORE_RISK,
       "returns"),
    _f("returns_90d", "Number of return lines in the last 90 days.", "90 days", "lines",
       "{value:.0f} returned products in the last 90 days", MORE_RISK, "returns"),
    # -- service tickets ------------------------------------------------------------------------
    _f("tickets_365d", "Service tickets of any kind opened in the last 365 days.", "365 days", "tickets",
       "{value:.0f} service tickets in the last year", MORE_RISK, "service", "tickets"),
    _f("complaints_90d", "Complaints opened in the last 90 days.", "90 days", "complaints",
       "{value:.0f} complaints in the last 90 days", MORE_RISK, "service", "tickets"),
    _f("complaints_365d", "Complaints opened in the last 365 days.", "365 days", "complaints",
       "{value:.0f} complaints in the last year", MORE_RISK, "service", "tickets"),
    _f("complaints_unresolved", "Complaints opened before the cutoff and not resolved before it.",
       "all history", "complaints", "{value:.0f} unresolved complaints", MORE_RISK, "service", "tickets"),
    _f("days_since_complaint", "Days from the last complaint to the cutoff (NULL: never complained).",
       "all history", "days", "last complaint {value:.0f} days ago", LESS_RISK, "service", "tickets"),
    _f("satisfaction_mean", "Mean satisfaction (1-5) of tickets resolved in the last 365 days.",
       "365 days", "score 1-5", "service satisfaction {value:.1f} out of 5", LESS_RISK, "service", "tickets"),
    # -- marketing ------------------------------------------------------------------------------
    _f("campaigns_90d", "Campaign contacts sent in the last 90 days.", "90 days", "contacts",
       "contacted by {value:.0f} campaigns in the last 90 days", NEUTRAL, "marketing", "campaigns"),
    _f("campaigns_365d", "Campaign contacts sent in the last 365 days.", "365 days", "contacts",
       "contacted by {value:.0f} campaigns in the last year", NEUTRAL, "marketing", "campaigns"),
    _f("campaign_response_rate", "Share of the campaign contacts of the last 365 days answered before the "
       "cutoff (NULL: no contact).", "365 days", "share",
       "answered {value:.0%} of campaigns in the last year", LESS_RISK, "marketing", "campaigns"),
    # -- browsing -------------------------------------------------------------------------------
    _f("views_30d", "Product views in the last 30 days (NULL when the data has no view events).", "30 days",
       "views", "{value:.0f} product views in the last 30 days", LESS_RISK, "browsing"),
    _f("views_90d", "Product views in the last 90 days (NULL when the data has no view events).", "90 days",
       "views", "{value:.0f} product views in the last 90 days", LESS_RISK, "browsing"),
    _f("carts_90d", "Add-to-cart events in the last 90 days (NULL when the data has no cart events).",
       "90 days", "carts", "{value:.0f} add-to-carts in the last 90 days", LESS_RISK, "browsing"),
    _f("view_conversion_90d", "Purchase lines divided by product views in the last 90 days (NULL: no views).",
       "90 days", "ratio", "{value:.0%} of product views turned into purchases", LESS_RISK, "browsing"),
    _f("cart_conversion_90d", "Purchase lines divided by add-to-carts in the last 90 days (NULL: no carts).",
       "90 days", "ratio", "{value:.0%} of add-to-carts purchased", LESS_RISK, "browsing"),
    _f("days_since_view", "Days from the last product view to the cutoff (NULL: no views).", "all history",
       "days", "no product view for {value:.0f} days", MORE_RISK, "browsing"),
    # -- seasonality ----------------------------------------------------------------------------
    _f("orders_same_weeks_last_year", "Orders in the 90 days that started one year before the cutoff "
       "([c - 365d, c - 275d)): did the customer buy in the coming weeks last year.",
       "[c-365d, c-275d)", "orders", "{value:.0f} orders in the same weeks last year", LESS_RISK, "season"),
    # -- membership and attributes (customers table: current values, no history) ---------------
    _f("membership_tier", "Loyalty tier as recorded in the customers table.", "current", "tier",
       "membership tier {value}", NEUTRAL, "membership", "customers", "category"),
    _f("points", "Loyalty points balance as recorded in the customers table.", "current", "points",
       "{value:,.0f} loyalty points", LESS_RISK, "membership", "customers"),
    _f("country", "Country of residence.", "current", "country", "lives in {value}", NEUTRAL, "attributes",
       "customers", "category"),
    _f("gender", "Gender as recorded by the shop.", "current", "gender", "gender {value}", NEUTRAL,
       "attributes", "customers", "category"),
    _f("age", "Age in years at the cutoff (cutoff year - birth_year).", "current", "years",
       "{value:.0f} years old", NEUTRAL, "attributes", "customers"),
    _f("acquisition_channel", "How the customer was acquired.", "current", "channel",
       "acquired through {value}", NEUTRAL, "attributes", "customers", "category"),
]

FEATURES: dict[str, Feature] = {f.name: f for f in _LIST}
if len(FEATURES) != len(_LIST):  # not an assert: checked under python -O too
    raise ValueError("duplicate feature name in the catalog")

# The churn model's features beyond the snapshot columns, computed by ``features.churn_features``
# (the BG/NBD ones by ``features.bgnbd``, fitted per cutoff on the history before it), in the order
# the model uses them. Same conventions as above: purchase rows strictly before the cutoff only.
_EXTRA_LIST: list[Feature] = [
    _f("ewm_orders_30", "Purchase days weighted by exp(-age ln2 / 30 days): recent activity.", "all history",
       "purchase days", "little recent buying ({value:.1f} purchase days, weighted to the last month)",
       LESS_RISK, "decay"),
    _f("ewm_orders_90", "Purchase days weighted by exp(-age ln2 / 90 days).", "all history", "purchase days",
       "buying less lately ({value:.1f} purchase days, weighted to the last 3 months)", LESS_RISK, "decay"),
    _f("ewm_orders_365", "Purchase days weighted by exp(-age ln2 / 365 days).", "all history", "purchase days",
       "little buying over the year ({value:.1f} purchase days, weighted to the last year)", LESS_RISK, "decay"),
    _f("active_months_365d", "Distinct 30-day periods with a purchase in the last 365 days.", "365 days", "months",
       "bought in only {value:.0f} of the last 12 months", LESS_RISK, "decay"),
    _f("purchase_days_ly_next90", "Purchase days in [c - 365d, c - 275d): the coming 90 days, one year earlier.",
       "[c-365d, c-365d+horizon)", "purchase days", "{value:.0f} purchase days in the same season last year",
       LESS_RISK, "season"),
    _f("purchase_days_ly_next180", "Purchase days in [c - 365d, c - 185d).", "[c-365d, c-365d+2 horizons)",
       "purchase days", "{value:.0f} purchase days in the coming half-year's season last year", LESS_RISK,
       "season"),
    _f("max_gap_days", "Longest gap between consecutive purchase days.", "all history", "days",
       "longest break so far was {value:.0f} days", NEUTRAL, "rhythm"),
    _f("last_gap_days", "Gap between the last two purchase days.", "all history", "days",
       "last break between purchases was {value:.0f} days", MORE_RISK, "rhythm"),
    _f("recency_max_gap_ratio", "recency_days divided by the longest gap between purchase days.", "all history",
       "ratio", "away {value:.1f}x the longest break so far", MORE_RISK, "rhythm"),
    _f("own_gap_survival", "Smoothed share of the customer's past gaps longer than the current recency that "
       "also exceeded recency + horizon.", "all history", "share",
       "in the past, {value:.0%} of similar breaks lasted another season", MORE_RISK, "rhythm"),
    _f("first_purchase_days", "Days from the first purchase day to the cutoff.", "all history", "days",
       "first purchase {value:.0f} days ago", LESS_RISK, "rfm"),
    _f("season_affinity", "Spend-weighted share of the customer's items' sales that fell in the same season last "
       "year, relative to the shop's (1 = average).", "365 days", "ratio",
       "buys products that sold {value:.0%} of the usual share in these weeks last year", LESS_RISK, "season"),
    _f("bg_p_alive", "BG/NBD probability that the customer has not dropped out, fitted on the history before the "
       "cutoff.", "all history", "probability",
       "only {value:.0%} likely to still be an active customer by the purchase rhythm", LESS_RISK, "bgnbd"),
    _f("bg_expected_purchases", "BG/NBD expected purchase days in the horizon, fitted on the history before the "
       "cutoff.", "all history", "purchase days",
       "only {value:.1f} purchases expected in the coming period by the purchase rhythm", LESS_RISK, "bgnbd"),
    _f("bg_p_no_purchase", "BG/NBD probability of no purchase in the horizon, fitted on the history before the "
       "cutoff.", "all history", "probability",
       "{value:.0%} chance of no purchase in the coming period by the purchase rhythm", MORE_RISK, "bgnbd"),
]
EXTRAS: dict[str, Feature] = {f.name: f for f in _EXTRA_LIST}
if len(EXTRAS) != len(_EXTRA_LIST) or set(EXTRAS) & set(FEATURES):
    raise ValueError("duplicate feature name in the catalog's extra features")

# Columns of a snapshot row that are not features.
KEYS = ("customer_id", "cutoff")
LABELS: dict[str, str] = {
    "eligible": "Purchased in the eligibility window [c - eligibility_days, c) (default 365 days).",
    "label_available": "The whole label horizon [c, c + horizon) lies inside the data (c + horizon <= last event).",
    "churned": "1.0 when no purchase in [c, c + horizon) (default 90 days), 0.0 otherwise; NULL when "
    "label_available is false.",
}

# Fields of the customer 360 record (features.insight.build_customer360) that are not features.
INSIGHT_FIELDS: dict[str, str] = {
    "as_of": "The date the record describes (cutoff; data strictly before it).",
    "r_score": "Recency quintile score 1-5 (5 = most recent), among customers with a purchase in the data.",
    "f_score": "Frequency quintile score 1-5 (5 = most orders).",
    "m_score": "Monetary quintile score 1-5 (5 = highest spend).",
    "rfm_score": "The three scores as a string, e.g. '545'.",
    "rfm_segment": "Named RFM segment: champions, loyal, potential_loyalists, new, promising, need_attention, "
    "about_to_sleep, at_risk, cannot_lose, hibernating, lost.",
    "revenue_365d": "Net revenue (purchases - returns) in the last 365 days; the basis of the value tier.",
    "value_tier": "A: the customers who bring the first 80% of revenue (Pareto), B: the next 15%, C: the rest.",
    "revenue_share": "This customer's share of total revenue_365d.",
    "lifecycle_stage": "prospect (no purchase yet), lapsed (no purchase for 180+ days), new (first purchase < 90 "
    "days ago), won_back (bought again in the last 90 days after a gap of 180+ days), at_risk (no purchase for 90+ "
    "days, or for 30+ days and 2x the usual gap), active (the rest); the first rule that applies wins.",
    "active_365d": "Purchased in the 365 days before as_of (the churn model's eligibility).",
    "favourite_category": "Category with the most spend.",
    "mean_unit_price": "Purchase amount divided by units bought.",
    "price_band": "low / mid / high: the customer's mean unit price against the tertiles of all buyers.",
    "preferred_channel": "Channel with the most purchase lines (NULL without channel data).",
    "preferred_weekday": "Weekday with the most orders (Monday ... Sunday).",
    "discount_affinity": "Share of purchase lines bought below 95% of the item's typical price.",
    "tags": "List of readable profile tags built from the fields above.",
}


def feature_names() -> list[str]:
    """All feature names in catalog order (the snapshot columns after customer_id and cutoff)."""
    return list(FEATURES)


def extra_feature_names() -> list[str]:
    """The churn model's features beyond the snapshot columns (:data:`EXTRAS`), in model order."""
    return list(EXTRAS)


def lookup(name: str) -> Feature | None:
    """The catalog entry of any churn model feature (a snapshot column or an extra); None if unknown."""
    return FEATURES.get(name) or EXTRAS.get(name)


def numeric_feature_names() -> list[str]:
    return [f.name for f in FEATURES.values() if f.dtype == "float"]


def categorical_feature_names() -> list[str]:
    return [f.name for f in FEATURES.values() if f.dtype == "category"]


def reason(name: str, value) -> str:
    """A readable sentence for a feature value, e.g. ``reason("recency_days", 143.2)`` -> 'no purchase for 143 days'.

    Unknown names fall back to ``"name = value"``; a missing value gives ``"<meaning> unknown"``.
    """
    feature = FEATURES.get(name)
    if feature is None:
        return f"{name} = {value}"
    if _missing(value):
        return f"{feature.name.replace('_', ' ')}: unknown"
    try:
        return feature.template.format(value=value)
    except (ValueError, TypeError):
        return f"{feature.name.replace('_', ' ')} = {value}"


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN; pd.NA raises TypeError
    except (TypeError, ValueError):
        return True


def describe() -> list[dict]:
    """The catalog as plain records (for docs, the report, and `crmml features --catalog`)."""
    return [
        {
            "name": f.name,
            "meaning": f.meaning,
            "window": f.window,
            "unit": f.unit,
            "higher_means": f.higher_means,
            "group": f.group,
            "source": f.source,
            "dtype": f.dtype,
            "example": f.template,
        }
        for f in FEATURES.values()
    ]
