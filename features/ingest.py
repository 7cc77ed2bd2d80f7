"""Ingestion: turn messy source files into the canonical tables without losing a row silently.

Every input line ends either in a canonical table or in the ``quarantine`` table with a reason,
and ``IngestionResult`` accounts for all of them: accepted + rejected == read.

Sources:
- ``online-retail``: the UCI Online Retail and Online Retail II files (either column naming;
  CSV, CSV.gz or XLSX with several sheets). Overlapping files are de-duplicated.
- ``transactions``: any purchase log (one line per purchase or order line).
- ``interactions``: any user-item feedback table (ratings, clicks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.errors

from features.contract import NULL_REASONS, TABLES, SchemaError, conform, row_schema
from features.workspace import Workspace, file_sha256

# Reasons a row is set aside, in the order they are tested: a row gets the first that applies.
SOURCE_REASONS = ("overlap_duplicate", "unparseable_number", "adjustment", "non_product")
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

# Stock codes of the UCI files that are not products: postage, discounts, fees, manual lines, tests.
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "M", "C2", "D", "S", "B", "ADJUST", "ADJUST2", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}
)
NON_PRODUCT_PATTERN = re.compile(r"^(gift_\d+_\d+|TEST\d*|SP\d+)$", re.IGNORECASE)
ONLINE_RETAIL_RENAMES = {"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
ONLINE_RETAIL_REQUIRED = ("Invoice", "StockCode", "Quantity", "InvoiceDate", "Price", "Customer ID")
QUARANTINE_COLUMNS = ["source", "source_file", "source_row", "reason", "raw"]


@dataclass
class IngestionResult:
    """What one ingestion read, accepted and rejected; the tables it produced."""

    source: str
    files: list[dict]
    tables: dict[str, pd.DataFrame]
    quarantine: pd.DataFrame
    accepted_by_type: dict[str, int] = field(default_factory=dict)
    facts: dict[str, int] = field(default_factory=dict)

    @property
    def n_read(self) -> int:
        return sum(f["rows"] for f in self.files)

    @property
    def n_accepted(self) -> int:
        return sum(self.accepted_by_type.values())

    @property
    def n_rejected(self) -> int:
        return len(self.quarantine)

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return self.quarantine["reason"].value_counts().to_dict()

    def record(self) -> dict:
        """The lineage record kept in the workspace."""
        return {
            "source": self.source,
            "files": self.files,
            "rows_read": self.n_read,
            "rows_accepted": self.n_accepted,
            "rows_rejected": self.n_rejected,
            "accepted_by_type": self.accepted_by_type,
            "rejected_by_reason": self.rejected_by_reason,
            "tables": {name: len(df) for name, df in self.tables.items()},
            **self.facts,
        }


# --------------------------------------------------------------------------- reading
def read_raw(path: str | Path, sep: str | None = None, names: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV (optionally gzip), TSV, whitespace-separated or XLSX file as text, every sheet.

    Adds ``_source_file`` and ``_source_row`` (the line number in the file, header = line 1,
    or ``sheet!row`` for spreadsheets) so that every rejected row can be traced back.
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            sheets = pd.read_excel(path, sheet_name=None, dtype=str, keep_default_na=False)
            frames = []
            for sheet, df in sheets.items():
                df = df.astype(str) if len(df) else df
                df["_source_row"] = [f"{sheet}!{i + 2}" for i in range(len(df))]
                frames.append(df)
            df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        else:
            header = None if names else "infer"
            regex_sep = sep in (r"\s+", "whitespace")
            df = pd.read_csv(
                path,
                sep=r"\s+" if regex_sep else (sep or None),
                engine="c" if (sep and not regex_sep and len(sep) == 1) or regex_sep else "python",
                dtype=str,
                keep_default_na=False,
                header=header,
                names=names,
            )
            first_line = 1 if names else 2
            df["_source_row"] = np.arange(first_line, first_line + len(df)).astype(str)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SchemaError(f"{path}: cannot read file ({exc.__class__.__name__}: {exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    df["_source_file"] = str(path)
    return df


def _require(df: pd.DataFrame, columns, path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in df.columns if not c.startswith('_'))}"
        )


def _blank_to_na(s: pd.Series) -> pd.Series:
    s = s.astype("string").str.strip()
    return s.mask(s == "")


def _to_number(s: pd.Series) -> pd.Series:
    return pd.to_numeric(_blank_to_na(s), errors="coerce")


def parse_timestamps(s: pd.Series, fmt: str | None = None) -> pd.Series:
    """Parse text timestamps: an explicit strftime format, compact dates (19970101), ISO, or unix seconds."""
    s = _blank_to_na(s)
    if fmt:
        return pd.to_datetime(s, format=fmt, errors="coerce")
    sample = s.dropna().head(1000)
    if len(sample) and sample.str.fullmatch(r"\d{8}").all():
        return pd.to_datetime(s, format="%Y%m%d", errors="coerce")
    if len(sample) and sample.str.fullmatch(r"\d{9,10}(\.\d+)?").all():
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", errors="coerce")
    try:
        return pd.to_datetime(s, format="ISO8601", errors="coerce")
    except ValueError:
        return pd.to_datetime(s, format="mixed", errors="coerce")


# --------------------------------------------------------------------------- validation
def _raw_json(raw: pd.DataFrame) -> pd.Series:
    cols = [c for c in raw.columns if not c.startswith("_")]
    if raw.empty:
        return pd.Series([], dtype="string", index=raw.index)
    lines = raw[cols].to_json(orient="records", lines=True, force_ascii=False).splitlines()
    return pd.Series(lines, index=raw.index, dtype="string")


def _quarantine(source: str, raw: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    rejected = reasons.dropna()
    rows = raw.loc[rejected.index]
    return pd.DataFrame(
        {
            "source": source,
            "source_file": rows["_source_file"].astype("string"),
            "source_row": rows["_source_row"].astype("string"),
            "reason": rejected.astype("string"),
            "raw": _raw_json(rows),
        },
        columns=QUARANTINE_COLUMNS,
    )


def validate_rows(table: str, df: pd.DataFrame, now: pd.Timestamp | None = None) -> pd.Series:
    """Row-level reasons (or <NA>) for a canonical table, from its pandera schema plus duplicates."""
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
    dup = df.duplicated(keep="first") & reasons.isna()
    reasons[dup] = "duplicate_line"
    return reasons


def _accept(
    source: str, table: str, raw: pd.DataFrame, canonical: pd.DataFrame, source_reasons: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Split a canonical table into accepted rows and quarantined raw rows; also return the reasons."""
    clean = source_reasons.isna()
    reasons = source_reasons.copy()
    reasons[clean] = validate_rows(table, canonical[clean])
    accepted = canonical[reasons.isna()].reset_index(drop=True)
    return accepted, _quarantine(source, raw, reasons), reasons


def _file_record(path: Path, rows: int) -> dict:
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "rows": int(rows)}


def _derive_customers(events: pd.DataFrame, country: pd.Series | None = None) -> pd.DataFrame:
    customers = events.groupby("customer_id", sort=True).agg(first_seen=("timestamp", "min")).reset_index()
    if country is not None:
        mode = (
            pd.DataFrame({"customer_id": events["customer_id"], "country": country})
            .dropna()
            .groupby("customer_id")["country"]
            .agg(lambda s: s.value_counts().index[0])
        )
        customers["country"] = customers["customer_id"].map(mode)
    return conform("customers", customers, "derived from events")


def _derive_items(events: pd.DataFrame, names: pd.Series | None = None) -> pd.DataFrame:
    lines = events[events["item_id"].notna()]
    if lines.empty:
        return conform("items", pd.DataFrame(columns=["item_id"]), "derived from events")
    purchases = lines[lines["event_type"] == "purchase"]
    unit_price = (purchases["amount"] / purchases["quantity"]).groupby(purchases["item_id"]).median()
    items = pd.DataFrame({"item_id": np.sort(lines["item_id"].unique())})
    items["price"] = items["item_id"].map(unit_price)
    if names is not None:
        named = pd.DataFrame({"item_id": events["item_id"], "name": names}).dropna()
        top_name = named.groupby("item_id")["name"].agg(lambda s: s.value_counts().index[0])
        items["name"] = items["item_id"].map(top_name)
        items["category"] = items["name"].map(category_from_name)
    return conform("items", items, "derived from events")


def category_from_name(name) -> str | None:
    """A product category from a free-text product name: its head noun (the last word), singular.

    The UCI catalogue has no categories; names end in the product type
    ("WHITE HANGING HEART T-LIGHT HOLDER" -> "HOLDER", "LUNCH BAG RED RETROSPOT" is the exception).
    """
    if not isinstance(name, str):
        return None
    words = re.findall(r"[A-Za-z]{3,}", name.upper())
    if not words:
        return None
    word = words[-1]
    if word.endswith("ES") and word[:-2].endswith(("SS", "SH", "CH", "X")):
        return word[:-2]
    return word[:-1] if word.endswith("S") and not word.endswith("SS") and len(word) > 3 else word


# --------------------------------------------------------------------------- sources
def read_online_retail(paths: list[str | Path]) -> IngestionResult:
    """UCI Online Retail / Online Retail II → events, customers, items (+ quarantine)."""
    frames, files = [], []
    for path in map(Path, paths):
        raw = read_raw(path).rename(columns=ONLINE_RETAIL_RENAMES)
        _require(raw, ONLINE_RETAIL_REQUIRED, path)
        for optional in ("Description", "Country"):
            if optional not in raw.columns:
                raw[optional] = ""
        files.append(_file_record(path, len(raw)))
        frames.append(raw)
    raw = pd.concat(frames, ignore_index=True)

    # Overlapping files: a line counts once however many files hold it. Lines are compared as a
    # multiset (a line twice in one file and twice in another is kept twice, then de-duplicated below).
    content = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
    occurrence = raw.groupby(content + ["_source_file"], sort=False, dropna=False).cumcount()
    overlap = pd.DataFrame({"key": pd.util.hash_pandas_object(raw[content], index=False), "n": occurrence})
    overlap = overlap.duplicated(keep="first")

    invoice = raw["Invoice"].astype("string").str.strip()
    stock = raw["StockCode"].astype("string").str.strip()
    quantity, price = _to_number(raw["Quantity"]), _to_number(raw["Price"])
    is_return = invoice.str.upper().str.startswith("C")

    reasons = pd.Series(pd.NA, index=raw.index, dtype="string")
    for reason, mask in (
        ("overlap_duplicate", overlap),
        ("unparseable_number", quantity.isna() | price.isna()),
        ("adjustment", invoice.str.upper().str.startswith("A")),
        ("non_product", stock.isin(NON_PRODUCT_CODES) | stock.str.match(NON_PRODUCT_PATTERN)),
    ):
        reasons[reasons.isna() & mask.fillna(False)] = reason

    # Returns: cancelled invoices carry negative quantities; the contract keeps them positive.
    # A negative quantity on a normal invoice stays negative and is rejected as such.
    signed_qty = quantity.where(~is_return, -quantity)
    events = conform(
        "events",
        pd.DataFrame(
            {
                "customer_id": _blank_to_na(raw["Customer ID"]).str.replace(r"\.0$", "", regex=True),
                "item_id": stock,
                "event_type": np.where(is_return, "return", "purchase"),
                "timestamp": parse_timestamps(raw["InvoiceDate"]),
                "quantity": signed_qty,
                "amount": signed_qty.abs() * price,
                "order_id": invoice,
            }
        ),
        "online-retail",
    )
    counted_once = ~overlap
    identified = events["customer_id"].notna() & counted_once
    paid = identified & ~is_return & (quantity > 0).fillna(False) & (price > 0).fillna(False)
    paid &= ~invoice.str.upper().str.startswith("A").fillna(False)
    accepted, quarantine, reasons = _accept("online-retail", "events", raw, events, reasons)
    accepted_raw = raw[reasons.isna()]
    country = _blank_to_na(accepted_raw["Country"]).reset_index(drop=True)
    description = _blank_to_na(accepted_raw["Description"]).reset_index(drop=True)
    tables = {
        "events": accepted,
        "customers": _derive_customers(accepted, country),
        "items": _derive_items(accepted, description),
    }
    facts = {
        "customers_identified": int(events.loc[identified, "customer_id"].nunique()),
        # any paid invoice line counts here, postage included; the tables keep product lines only
        "customers_with_purchase": int(events.loc[paid, "customer_id"].nunique()),
        "customers_with_product_purchase": int(
            accepted.loc[accepted["event_type"] == "purchase", "customer_id"].nunique()
        ),
    }
    return IngestionResult(
        "online-retail", files, tables, quarantine, accepted["event_type"].value_counts().to_dict(), facts
    )


def _column(raw: pd.DataFrame, ref: str | None, path: Path, option: str) -> pd.Series | None:
    """A column by name, or by 0-based position for files without a header."""
    if ref is None:
        return None
    if ref in raw.columns:
        return raw[ref]
    if ref.isdigit() and int(ref) < len([c for c in raw.columns if not c.startswith("_")]):
        return raw.iloc[:, int(ref)]
    raise SchemaError(
        f"{path}: column {ref!r} given by {option} not found; "
        f"found {', '.join(repr(c) for c in raw.columns if not c.startswith('_'))}"
    )


def read_transactions(
    path: str | Path,
    customer_col: str,
    time_col: str,
    amount_col: str | None = None,
    item_col: str | None = None,
    quantity_col: str | None = None,
    order_col: str | None = None,
    sep: str | None = None,
    time_format: str | None = None,
    names: list[str] | None = None,
) -> IngestionResult:
    """Any purchase log → events (+ customers, items). Negative amounts or quantities are returns."""
    path = Path(path)
    raw = read_raw(path, sep=sep, names=names)
    customer = _column(raw, customer_col, path, "--customer-col")
    timestamp = parse_timestamps(_column(raw, time_col, path, "--time-col"), time_format)
    amount = _column(raw, amount_col, path, "--amount-col")
    quantity = _column(raw, quantity_col, path, "--quantity-col")
    item = _column(raw, item_col, path, "--item-col")
    order = _column(raw, order_col, path, "--order-col")

    amount = _to_number(amount) if amount is not None else pd.Series(np.nan, index=raw.index)
    quantity = _to_number(quantity) if quantity is not None else pd.Series(1.0, index=raw.index)
    unparseable = (amount_col is not None) & amount.isna() | quantity.isna()
    is_return = (amount < 0) | (quantity < 0)
    customer = _blank_to_na(customer)
    if order is None:  # one order per customer and moment when the log has no order ids
        order = customer + "@" + timestamp.dt.strftime("%Y%m%d%H%M%S")
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string").mask(unparseable, "unparseable_number")
    events = conform(
        "events",
        pd.DataFrame(
            {
                "customer_id": customer,
                "item_id": _blank_to_na(item) if item is not None else pd.NA,
                "event_type": np.where(is_return, "return", "purchase"),
                "timestamp": timestamp,
                "quantity": quantity.abs(),
                "amount": amount.abs(),  # zero is rejected by the contract; no amount column stays empty
                "order_id": _blank_to_na(order),
            }
        ),
        str(path),
    )
    accepted, quarantine, _ = _accept("transactions", "events", raw, events, reasons)
    tables = {"events": accepted, "customers": _derive_customers(accepted)}
    facts = {
        "customers_identified": int(accepted["customer_id"].nunique()),
        "customers_with_purchase": int(accepted.loc[accepted["event_type"] == "purchase", "customer_id"].nunique()),
    }
    if item is not None:
        tables["items"] = _derive_items(accepted)
    return IngestionResult(
        "transactions",
        [_file_record(path, len(raw))],
        tables,
        quarantine,
        accepted["event_type"].value_counts().to_dict(),
        facts,
    )


def read_interactions(
    path: str | Path,
    user_col: str,
    item_col: str,
    weight_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    time_format: str | None = None,
    names: list[str] | None = None,
) -> IngestionResult:
    """Any user-item feedback table (ratings, clicks) → interactions (+ customers, items)."""
    path = Path(path)
    raw = read_raw(path, sep=sep, names=names)
    user = _blank_to_na(_column(raw, user_col, path, "--user-col"))
    item = _blank_to_na(_column(raw, item_col, path, "--item-col"))
    weight = _column(raw, weight_col, path, "--weight-col")
    weight = _to_number(weight) if weight is not None else pd.Series(1.0, index=raw.index)
    time = _column(raw, time_col, path, "--time-col")
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string").mask(weight.isna(), "unparseable_number")
    frame = pd.DataFrame({"customer_id": user, "item_id": item, "weight": weight})
    if time is not None:
        frame["timestamp"] = parse_timestamps(time, time_format)
        reasons = reasons.mask(reasons.isna() & frame["timestamp"].isna(), "unparseable_timestamp")
    interactions = conform("interactions", frame, str(path))
    accepted, quarantine, _ = _accept("interactions", "interactions", raw, interactions, reasons)
    customers = conform(
        "customers",
        accepted.groupby("customer_id").agg(first_seen=("timestamp", "min")).reset_index(),
        "derived from interactions",
    )
    items = conform("items", pd.DataFrame({"item_id": np.sort(accepted["item_id"].unique())}), "derived")
    return IngestionResult(
        "interactions",
        [_file_record(path, len(raw))],
        {"interactions": accepted, "customers": customers, "items": items},
        quarantine,
        {"interaction": len(accepted)},
        {"customers_identified": int(accepted["customer_id"].nunique())},
    )


def save(workspace: Workspace, result: IngestionResult) -> dict:
    """Write the tables and the quarantine to the workspace and record the ingestion (lineage)."""
    assert result.n_accepted + result.n_rejected == result.n_read, "ingestion lost rows"
    # An ingestion replaces the workspace's data: tables of an earlier source must not mix in.
    for name in TABLES:
        if name not in result.tables:
            workspace.remove_table(name)
    for name, df in result.tables.items():
        workspace.write_table(name, df)
    workspace.write_table(f"quarantine_{result.source.replace('-', '_')}", result.quarantine)
    record = result.record()
    record["tables_sha256"] = {
        name: file_sha256(workspace.table_path(name)) for name in result.tables
    }
    return workspace.record_ingestion(record)
