"""The canonical tables every source is turned into, and their validation.

Only ``events`` with purchases is required. Every other table, and every optional
column, may be absent: downstream features degrade to missing values.
The human-readable version of this contract is ``docs/data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pandera.errors
import pandera.pandas as pa

EVENT_TYPES = ("view", "cart", "purchase", "return")
TICKET_KINDS = ("complaint", "inquiry", "other")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "string", "datetime", "float", "int", "category"
    required: bool
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    doc: str
    required: bool = False
    # (this column, other table, other column) pairs checked for referential integrity
    references: tuple[tuple[str, str, str], ...] = field(default=())

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "events",
            key=(),
            required=True,
            doc="One row per interaction of a known customer with the shop.",
            columns=(
                Column("customer_id", "string", True, "Customer identifier (never empty)."),
                Column("item_id", "string", False, "Product identifier; empty only for sources without items."),
                Column("event_type", "category", True, "One of view, cart, purchase, return."),
                Column("timestamp", "datetime", True, "When it happened (shop local time, naive)."),
                Column("quantity", "float", False, "Units; positive, also for returns."),
                Column("amount", "float", False, "Money value of the line; positive, also for returns."),
                Column("order_id", "string", False, "Order or invoice the line belongs to."),
                Column("channel", "string", False, "web, app, store, ... where known."),
            ),
            references=(("customer_id", "customers", "customer_id"), ("item_id", "items", "item_id")),
        ),
        Table(
            "customers",
            key=("customer_id",),
            doc="One row per customer; derived from events when a source has no customer file.",
            columns=(
                Column("customer_id", "string", True, "Customer identifier."),
                Column("first_seen", "datetime", False, "Signup date, or the first event seen."),
                Column("country", "string", False, "Country of residence."),
                Column("gender", "string", False, "As recorded by the shop."),
                Column("birth_year", "float", False, "Year of birth."),
                Column("acquisition_channel", "string", False, "How the customer was acquired."),
                Column("membership_tier", "string", False, "Loyalty tier (e.g. none, silver, gold)."),
                Column("points", "float", False, "Loyalty points balance."),
                Column("segment", "string", False, "The shop's own customer group (region, age band, home store): "
                                                   "a new customer gets what sells in their group."),
            ),
        ),
        Table(
            "items",
            key=("item_id",),
            doc="One row per product.",
            columns=(
                Column("item_id", "string", True, "Product identifier."),
                Column("name", "string", False, "Product name."),
                Column("category", "string", False, "Product category."),
                Column("price", "float", False, "Typical unit price."),
            ),
        ),
        Table(
            "tickets",
            key=(),
            doc="Customer service contacts.",
            columns=(
                Column("customer_id", "string", True, "Customer identifier."),
                Column("opened_at", "datetime", True, "When the ticket was opened."),
                Column("kind", "string", True, "complaint, inquiry or other."),
                Column("resolved_at", "datetime", False, "When it was resolved; empty while open."),
                Column("satisfaction", "float", False, "Satisfaction score 1-5."),
            ),
            references=(("customer_id", "customers", "customer_id"),),
        ),
        Table(
            "campaigns",
            key=(),
            doc="Marketing contacts.",
            columns=(
                Column("customer_id", "string", True, "Customer identifier."),
                Column("campaign_id", "string", True, "Campaign identifier."),
                Column("sent_at", "datetime", True, "When the customer was contacted."),
                Column("responded_at", "datetime", False, "When the customer responded; empty if never."),
                Column("group", "string", False, "treatment or control (a random hold-out, never contacted); "
                                                 "empty: contacted, no control group."),
                Column("action", "string", False, "What the contact offered: reminder, discount, service_call..."),
                Column("cost", "float", False, "What this contact cost (sending, redeemed discount, call)."),
            ),
            references=(("customer_id", "customers", "customer_id"),),
        ),
        Table(
            "interactions",
            key=(),
            doc="Generic user-item feedback (ratings, clicks) from --source interactions.",
            columns=(
                Column("customer_id", "string", True, "User identifier."),
                Column("item_id", "string", True, "Item identifier."),
                Column("weight", "float", False, "Strength of the interaction (rating, clicks); 1 if absent."),
                Column("timestamp", "datetime", False, "When it happened."),
            ),
        ),
    )
}


class SchemaError(ValueError):
    """A problem with a whole file or table: stops ingestion (nothing is written)."""


def conform(table: str, df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Return ``df`` with the canonical columns of ``table`` in order and canonical dtypes.

    Missing optional columns are added empty; a missing required column is a SchemaError
    that names the source file and the column.
    """
    spec = TABLES[table]
    missing = [c for c in spec.required_columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{source}: table '{table}' is missing required column(s) {', '.join(repr(m) for m in missing)}"
        )
    out = pd.DataFrame(index=df.index)
    for col in spec.columns:
        values = df[col.name] if col.name in df.columns else pd.Series(pd.NA, index=df.index)
        out[col.name] = _cast(values, col.dtype)
    return out


def _cast(values: pd.Series, dtype: str) -> pd.Series:
    if dtype == "string":
        return values.astype("string")
    if dtype == "category":
        return values.astype("string")
    if dtype == "datetime":
        return pd.to_datetime(values, errors="coerce").astype("datetime64[us]")
    if dtype in ("float", "int"):
        return pd.to_numeric(values, errors="coerce").astype("float64")
    raise ValueError(dtype)


def _not_blank(s: pd.Series) -> pd.Series:
    return s.notna() & (s.astype("string").str.strip() != "")


# Reasons a row breaks the contract (``validate_rows``), in the order they are tested: a row gets the first.
CONTRACT_REASONS = (
    "missing_customer_id",
    "missing_item_id",
    "unparseable_timestamp",
    "unknown_event_type",
    "zero_or_negative_price",
    "non_positive_quantity",
    "timestamp_in_future",
    "satisfaction_out_of_range",
    "duplicate_line",
)


# A null in a non-nullable column is reported by pandera as "not_nullable"; its reason by column.
NULL_REASONS = {
    "customer_id": "missing_customer_id",
    "item_id": "missing_item_id",
    "timestamp": "unparseable_timestamp",
    "opened_at": "unparseable_timestamp",
    "sent_at": "unparseable_timestamp",
}


def row_schema(table: str, now: pd.Timestamp) -> pa.DataFrameSchema:
    """Row-level checks of a canonical table; each check's name is the quarantine reason."""
    not_future = pa.Check(lambda s: s.isna() | (s <= now), name="timestamp_in_future", element_wise=False)
    ids = {"customer_id": pa.Column("string", pa.Check(_not_blank, name="missing_customer_id"))}
    if table == "events":
        return pa.DataFrameSchema(
            {
                **ids,
                "event_type": pa.Column(
                    "string", pa.Check(lambda s: s.isin(EVENT_TYPES), name="unknown_event_type"), nullable=True
                ),
                "timestamp": pa.Column("datetime64[us]", not_future),
                "quantity": pa.Column(
                    "float64", pa.Check(lambda s: s.isna() | (s > 0), name="non_positive_quantity"), nullable=True
                ),
                # a zero amount is a free item, a purchase (``zero_amount: reject`` in a mapping sets it aside)
                "amount": pa.Column(
                    "float64", pa.Check(lambda s: s.isna() | (s >= 0), name="zero_or_negative_price"), nullable=True
                ),
            },
            coerce=False,
        )
    if table == "tickets":
        return pa.DataFrameSchema(
            {
                **ids,
                "opened_at": pa.Column("datetime64[us]", not_future),
                "satisfaction": pa.Column(
                    "float64",
                    pa.Check(lambda s: s.isna() | s.between(1, 5), name="satisfaction_out_of_range"),
                    nullable=True,
                ),
            }
        )
    if table == "campaigns":
        return pa.DataFrameSchema(
            {
                **ids,
                "sent_at": pa.Column("datetime64[us]", not_future),
            }
        )
    if table == "interactions":
        return pa.DataFrameSchema(
            {
                **ids,
                "item_id": pa.Column("string", pa.Check(_not_blank, name="missing_item_id")),
                "timestamp": pa.Column("datetime64[us]", not_future, nullable=True),
            }
        )
    return pa.DataFrameSchema({**ids})


def validate_rows(table: str, df: pd.DataFrame, now: pd.Timestamp | None = None,
                  drop_duplicates: bool = True) -> pd.Series:
    """Row-level reasons (or <NA>) for a canonical table, from its pandera schema plus duplicates.

    ``drop_duplicates``: the same canonical line twice is a ``duplicate_line`` (first kept); a log without
    order ids keeps them (two identical purchases the same second are two purchases). A keyed table
    (customers, items) keeps the first row of a key.
    """
    now = now or pd.Timestamp.now()
    reasons = pd.Series(pd.NA, index=df.index, dtype="string")
    try:
        row_schema(table, now).validate(df, lazy=True)
    except pandera.errors.SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna()].copy()
        nulls = cases["check"] == "not_nullable"
        cases.loc[nulls, "check"] = cases.loc[nulls, "column"].map(NULL_REASONS)
        for reason in CONTRACT_REASONS:
            idx = cases.loc[cases["check"] == reason, "index"]
            if len(idx):
                free = reasons.loc[idx.unique()].isna()
                reasons.loc[free[free].index] = reason
        unknown = set(cases["check"]) - set(CONTRACT_REASONS)
        if unknown:  # a dtype problem is a bug in conform(), not a row problem
            raise SchemaError(f"{table}: contract checks failed: {sorted(map(str, unknown))}") from err
    key = list(TABLES[table].key)
    dup = df.duplicated(subset=key or None, keep="first") if (drop_duplicates or key) else False
    reasons[dup & reasons.isna()] = "duplicate_line"
    return reasons
