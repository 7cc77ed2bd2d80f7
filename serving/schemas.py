"""Request and response models of the crmml HTTP API (pydantic 2; they make the OpenAPI document).

Bodies carry their fields at the top level (``{"customer_ids": [...]}``), never wrapped in an
extra object. Every limit is checked here, so a bad request gets a 4xx with a reason, never a 500:

* identifiers (customer and item ids) match ``ID_PATTERN``: 1-64 characters of letters, digits
  and ``_ . : @ -``;
* ``customer_ids``: 1 to ``MAX_CUSTOMER_IDS`` (10,000) per request; ``item_ids``: 1 to
  ``MAX_ITEM_IDS`` (200); ``k``: 1 to ``MAX_K`` (100);
* unknown fields are refused (422), which also catches a body wrapped in an extra object;
* the whole body is limited to ``MAX_BODY_BYTES`` (2 MiB, answered 413 before it is parsed).

The heavy responses (``/churn/score``, ``/customers/{id}/profile``) are assembled from
pre-encoded JSON records of the online store; the models below document their exact shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StringConstraints

from features.event_log import MAX_EVENTS

ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"
MAX_CUSTOMER_IDS = 10_000
MAX_ITEM_IDS = 200
MAX_FILTER_VALUES = 200
MAX_K = 100
DEFAULT_K = 10
MAX_BODY_BYTES = 2 * 1024 * 1024

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=64)]
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# strict: JSON true or 3.0 is not a k (pydantic's lax mode reads true as 1)
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"How many items to return (1-{MAX_K}).")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int] = Field(default_factory=list, description="Where in the request, e.g. ['body', 'k'].")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a readable ``detail`` and, for validation errors, the single problems."""

    detail: str = Field(..., examples=["k: Input should be less than or equal to 100"])
    errors: list[ErrorItem] | None = None


# --------------------------------------------------------------------------------------------
# churn
# --------------------------------------------------------------------------------------------
class ChurnScoreRequest(_Strict):
    customer_ids: list[Id] = Field(
        ..., min_length=1, max_length=MAX_CUSTOMER_IDS,
        description=f"Customers to score (1-{MAX_CUSTOMER_IDS:,}); duplicates are answered once.",
        examples=[["C000001", "C000002"]],
    )


class Reason(BaseModel):
    feature: str = Field(..., description="Feature name (see features/catalog.py).")
    value: Any = Field(None, description="The customer's value of the feature at the as-of date.")
    contribution: float | None = Field(None, description="Contribution to the churn score (log-odds).")
    sentence: str = Field(..., description="Readable reason, e.g. 'no purchase for 143 days'.")


class ChurnScore(BaseModel):
    customer_id: str
    churn_probability: float | None = Field(..., description="Probability of no purchase within the horizon.")
    risk_tier: str | None = Field(None, description="e.g. high / medium / low.")
    reasons: list[Reason] = Field(default_factory=list, description="Top drivers of this customer's score.")
    value_at_stake: float | None = Field(None, description="churn_probability x 12-month CLV.")
    clv_12m: float | None = None
    suggested_action: str | None = Field(None, description="Action code, e.g. call, offer, service_recovery.")
    action_text: str | None = Field(None, description="The suggested action in words, for the CRM agent.")
    segment: str | None = Field(None, description="RFM segment (customer 360).")
    value_tier: str | None = None
    model_version: str = Field(..., description="Registry version of crmml-churn that produced the score.")
    as_of: str = Field(..., description="Date of the data snapshot (day after the last event).")


class ChurnScoreResponse(BaseModel):
    model_version: str
    as_of: str
    count: int = Field(..., description="Number of scores returned.")
    scores: list[ChurnScore]
    unknown_ids: list[str] = Field(
        default_factory=list, description="Requested ids with no customer record (answered 404 when all are unknown)."
    )


class ChurnNotFound(ErrorResponse):
    """404 of ``/churn/score``: none of the ids is known."""

    unknown_ids: list[str] = Field(default_factory=list, description="The first 100 unknown ids.")


# --------------------------------------------------------------------------------------------
# customer profile
# --------------------------------------------------------------------------------------------
class RFM(BaseModel):
    recency_days: float | None = None
    frequency: float | None = None
    monetary: float | None = None
    r_score: int | None = None
    f_score: int | None = None
    m_score: int | None = None


class ChurnRisk(BaseModel):
    churn_probability: float | None = None
    risk_tier: str | None = None
    reasons: list[Reason] = Field(default_factory=list)
    value_at_stake: float | None = None
    suggested_action: str | None = None
    action_text: str | None = None
    model_version: str


class CustomerProfile(BaseModel):
    customer_id: str
    as_of: str
    rfm: RFM
    segment: str | None = None
    value_tier: str | None = None
    lifecycle_stage: str | None = None
    tags: list[str] = Field(default_factory=list)
    clv_12m: float | None = None
    churn: ChurnRisk | None = None
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="Every other column of the customer 360 record (name -> value)."
    )


# --------------------------------------------------------------------------------------------
# recommendations
# --------------------------------------------------------------------------------------------
class RecommendFilters(_Strict):
    """Optional restrictions of the candidates (they combine with AND; see ``training.recommender``)."""

    include_categories: list[FilterValue] | None = Field(
        None, max_length=MAX_FILTER_VALUES, description="Only items of these categories."
    )
    exclude_categories: list[FilterValue] | None = Field(
        None, max_length=MAX_FILTER_VALUES, description="No items of these categories."
    )
    exclude_items: list[Id] | None = Field(
        None, max_length=MAX_ITEM_IDS, description="Never return these items (e.g. already in the cart)."
    )
    allowed_items: list[Id] | None = Field(
        None, max_length=MAX_ITEM_IDS, description="Only these items (a candidate set)."
    )
    # strict (like k): JSON false is not a price of 0
    min_price: StrictFloat | None = Field(None, ge=0, description="Only items with a typical price at least this.")
    max_price: StrictFloat | None = Field(None, ge=0, description="Only items with a typical price at most this.")


class RecommendRequest(_Strict):
    customer_id: Id = Field(..., examples=["C000001"])
    k: K = DEFAULT_K
    exclude_seen: StrictBool = Field(True, description="Leave out items the customer already bought or interacted with.")
    filters: RecommendFilters | None = None


class BasketRequest(_Strict):
    item_ids: list[Id] = Field(
        ..., min_length=1, max_length=MAX_ITEM_IDS, description=f"Items of the basket or session (1-{MAX_ITEM_IDS}).",
        examples=[["I00012", "I00345"]],
    )
    k: K = DEFAULT_K
    filters: RecommendFilters | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float | None = Field(None, description="Ranking score (bought-together: the association "
                                "n(A,B) / (E + 1), E the baskets expected to hold both by chance).")
    source: str = Field(
        ..., description="What produced the item: buy_again, als, bm25, ease, cooc, popular, trending, "
        "popular_segment, or a fallback (popular_<segment>, popular_category, popular, catalogue)."
    )
    rank: int
    support: float | None = Field(None, description="Bought-together only: share of orders with both items.")
    confidence: float | None = Field(None, description="Bought-together only: P(other item | this item).")
    lift: float | None = Field(None, description="Bought-together only: confidence / P(other item).")


class RecommendResponse(BaseModel):
    customer_id: str | None = None
    k: int
    cold_start: bool = Field(
        ..., description="True when the customer (or basket) is unknown to the model: the answer is the fallback."
    )
    items: list[RecommendedItem]
    model_version: str


class BasketResponse(BaseModel):
    k: int
    cold_start: bool
    items: list[RecommendedItem]
    unknown_item_ids: list[str] = Field(default_factory=list)
    model_version: str


class ItemListResponse(BaseModel):
    item_id: str
    k: int
    kind: Literal["similar", "bought_together"]
    cold_start: bool = Field(
        False, description="Bought-together: True when no item is bought with this one more often than chance "
        "(new or rarely bought): the items are the popular fallback (source popular_category / popular)."
    )
    items: list[RecommendedItem]
    model_version: str


# --------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------
Text = Annotated[str, StringConstraints(max_length=64)]


class Event(_Strict):
    """One interaction. Only the shape is checked here; the values are checked by the ingestion
    contract (``features/contract.py``), which rejects single events with its reasons."""

    event_id: Id = Field(..., description="Unique id of the event: a repeated id is accepted once.", examples=["e-000001"])
    customer_id: Id | None = Field(None, examples=["C000001"])
    event_type: Text | None = Field(None, description="view, cart, purchase or return.", examples=["purchase"])
    item_id: Id | None = Field(None, examples=["I00012"])
    timestamp: Text | None = Field(None, description="ISO 8601, shop local time (an offset is converted to UTC).",
                                   examples=["2026-12-06T10:15:00"])
    # strict (like prices in the filters): JSON false is not an amount of 0
    quantity: StrictFloat | None = Field(None, description="Units; positive, also for returns.")
    amount: StrictFloat | None = Field(None, description="Money value of the line; positive, also for returns; 0 for "
                                       "a free item.")
    order_id: Id | None = None
    channel: Text | None = None


class EventsRequest(_Strict):
    events: list[Event] = Field(..., min_length=1, max_length=MAX_EVENTS,
                                description=f"1-{MAX_EVENTS:,} events, in any order.")


class RejectedEvent(BaseModel):
    index: int = Field(..., description="Position of the event in the request.")
    event_id: str | None = None
    reason: str = Field(..., description="The ingestion contract's reason, e.g. unknown_event_type.",
                        examples=["timestamp_in_future"])


class EventsResponse(BaseModel):
    accepted: int = Field(..., description="New events, stored durably before this answer.")
    duplicates: int = Field(..., description="Events whose event_id was accepted before (counted once).")
    rejected: int
    rejected_by_reason: dict[str, int] = Field(default_factory=dict)
    rejected_events: list[RejectedEvent] = Field(default_factory=list, description="The first 100 rejected events.")


# --------------------------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    status: str = Field(..., description="'ok', 'starting', or 'degraded' (a reload refused a model: see detail).")
    detail: str | None = None
    models: dict[str, str] | None = None
    as_of: str | None = None


class ModelInfo(BaseModel):
    name: str
    version: str = Field(..., description="Registry version (the champion at load time).")
    alias: str = "champion"
    run_id: str | None = None
    bentoml_tag: str
    source: Literal["registry", "last_imported"] = Field(
        ..., description="'registry' when resolved from MLflow now; 'last_imported' when the registry was unreachable."
    )
    registered_at: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, str] = Field(default_factory=dict, description="Training data lineage tags of the run.")
    grade: Literal["A", "B", "C"] | None = Field(
        None, description="Grade of the version's rolling backtest against its best baseline (A: ahead at every "
                          "cutoff by the stated margin, B: ahead on average, C: otherwise); null when not graded.")


class DataInfo(BaseModel):
    workspace: str
    as_of: str
    customers: int
    items: int | None = None
    sources: dict[str, str] = Field(default_factory=dict, description="Table -> file the online data came from.")
    data_fingerprint: str | None = None
    risk_tiers: dict[str, int] = Field(default_factory=dict)
    store: dict[str, Any] = Field(default_factory=dict)


class ReloadInfo(BaseModel):
    poll_seconds: float
    last_check: str | None = None
    last_reload: str | None = None
    last_error: str | None = None
    reloads: int = 0
    registry_reachable: bool | None = None
    degraded: str | None = Field(
        None, description="Why the last reload refused a model (content hash mismatch, unreadable files); "
        "the models loaded before keep serving until a reload succeeds."
    )


class Metadata(BaseModel):
    service: str
    api_version: str
    loaded_at: str
    load_seconds: float
    models: dict[str, ModelInfo]
    data: DataInfo
    reload: ReloadInfo
    auth: bool = Field(..., description="Whether an API key is required.")
    warnings: list[str] = Field(default_factory=list)


class ReloadResponse(BaseModel):
    reloaded: bool
    detail: str
    models: dict[str, str] = Field(default_factory=dict, description="Model name -> registry version now served.")


# --------------------------------------------------------------------------------------------
# next best action
# --------------------------------------------------------------------------------------------
class ActionValue(BaseModel):
    action: str
    uplift: float = Field(..., description="Change of the probability to buy within the horizon if contacted.")
    cost: float = Field(..., description="Average cost of one contact with this action.")
    expected_value: float = Field(..., description="uplift x value if retained - cost.")


class NextBestAction(BaseModel):
    customer_id: str
    as_of: str
    action: str = Field(..., description="none, reminder, discount, service_call... (rules: a suggested action code).")
    source: str = Field(..., description='"uplift model", or "rules" when no uplift model is registered.')
    expected_value: float | None = Field(None, description="Expected incremental value of the action (uplift model).")
    uplift: float | None = None
    value_if_retained: float | None = Field(None, description="12-month CLV (last year's spend when unknown).")
    reason: str = Field(..., description="Why, in words, with the numbers.")
    alternatives: list[ActionValue] = Field(default_factory=list)
    uplift_model_version: str | None = None
