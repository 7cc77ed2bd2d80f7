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

import codecs
import csv
import io
import json
import re
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.errors

from features.contract import NULL_REASONS, TABLES, SchemaError, conform, row_schema
from features.workspace import Workspace, atomic_write, file_sha256

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
# A line longer than this is a rejected row (or, for the header, a file error): it bounds the memory one
# line can take (a 50 MB file without a newline is one 50 MB line).
MAX_LINE_BYTES = 1 << 20
# Reasons a line is set aside before it is parsed into columns.
LINE_REASONS = ("undecodable_line", "line_too_long", "unbalanced_quote", "short_row", "extra_fields")
# A quoted field may span lines (notes, addresses); a record still open after this many lines is broken.
MAX_RECORD_LINES = 50
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
SPREADSHEETS = (".xlsx", ".xlsm", ".xls")
_BLANKS = re.compile(r"[ \t]+")  # what the parser's whitespace separator splits on
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class RawFile:
    """One source file read as text: the parsed rows, the lines set aside before parsing, and how it was read."""

    frame: pd.DataFrame
    rejected: pd.DataFrame  # _source_file, _source_row, reason, raw: lines that never became a row
    notes: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.frame) + len(self.rejected)


def _open_binary(path: Path):
    kind = COMPRESSED.get(path.suffix.lower())
    if kind == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if kind == "bz2":
        import bz2

        return bz2.open(path, "rb")
    if kind == "xz":
        import lzma

        return lzma.open(path, "rb")
    if kind == "zip":
        members = [m for m in zipfile.ZipFile(path).infolist() if not m.is_dir()]
        if len(members) != 1:
            raise SchemaError(f"{path}: a zip file must hold exactly one file, it holds {len(members)}")
        return zipfile.ZipFile(path).open(members[0])
    return open(path, "rb")


def _decode(line: bytes, encoding: str | None) -> tuple[str | None, bool]:
    """The text of one line, or None if it is not text; and whether the cp1252 fallback was used.

    Without an explicit encoding a line is UTF-8, or else Windows-1252/latin-1 if that gives printable
    text (a latin-1 export reads whole); a line that is neither (binary) is set aside alone.
    """
    try:
        text = line.decode(encoding or "utf-8")
        return (None if "\x00" in text else text), False
    except UnicodeDecodeError:
        if encoding:
            return None, False
    try:
        text = line.decode("cp1252")
    except UnicodeDecodeError:
        return None, False
    return (None if _CONTROL.search(text) else text), True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _text_lines(path: Path, encoding: str | None, max_line_bytes: int):
    """Yield (line number, text or None, reason) for every non-blank line; bounded memory per line."""
    n = 0
    with _open_binary(path) as fh:
        while line := fh.readline(max_line_bytes + 1):
            n += 1
            if len(line) > max_line_bytes and not (len(line) == max_line_bytes + 1 and line.endswith(b"\n")):
                size, head = len(line), line[:200]
                while not line.endswith(b"\n") and (line := fh.readline(1 << 20)):
                    size += len(line)
                yield n, f"{head.decode('utf-8', 'replace')}... ({size:,} bytes)", "line_too_long"
                continue
            if n == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            text, fallback = _decode(line.rstrip(b"\r\n"), encoding)
            if text is None:
                yield n, line[:200].decode("utf-8", "backslashreplace"), "undecodable_line"
            elif text.strip():
                yield n, text, "cp1252" if fallback else None


def _scan(text: str, sep: str) -> tuple[int, bool]:
    """How a CSV parser sees ``text``: its number of fields, and whether a quoted field is still open.

    The rules of pandas' C parser: a quote opens a quoted field only at the start of a field, a doubled
    quote inside one is a literal quote, a quote inside an unquoted field is a literal character.
    """
    ws = sep == r"\s+"
    if '"' not in text:
        return (len(_BLANKS.split(text.strip(" \t"))) if ws else text.count(sep) + 1), False
    start, field_, quoted, closed = 0, 1, 2, 3
    fields, state = 1, start
    for ch in text.lstrip(" \t") if ws else text:
        if state == quoted:
            if ch == '"':
                state = closed
        elif ch == '"':
            state = quoted if state in (start, closed) else field_
        elif (ch in " \t" if ws else ch == sep):
            if not (ws and state == start):
                fields += 1
            state = start
        else:
            state = field_
    if ws and state == start and fields > 1:  # trailing whitespace ends no field
        fields -= 1
    return fields, state == quoted


def _sniff(header: str) -> str:
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _read_text(path: Path, sep: str | None, names: list[str] | None, encoding: str | None,
               max_line_bytes: int) -> RawFile:
    """Read a delimited text file line by line: every line is a row, or a set-aside line with its reason.

    A quoted field may span lines; if its record never closes (end of file, a broken line, too many
    lines) or closes with the wrong number of fields, only its first line is set aside
    (``unbalanced_quote``) and the lines after it are read again as lines of their own.
    """
    rejected: list[tuple[int, str, str | dict]] = []  # line number, reason, what the quarantine shows
    rows: list[tuple[int, str]] = []
    notes: dict = {}
    regex_sep = sep in (r"\s+", "whitespace")
    scan_sep = r"\s+" if regex_sep else sep  # else sniffed from the first line (the header)
    header: str | None = None
    expected = len(names) if names else None
    pending: list[tuple[int, str]] = []  # the lines of a record whose quoted field is still open
    again: deque = deque()  # lines to read again after a record that never closed
    lines = _text_lines(path, encoding, max_line_bytes)

    def header_error(n: int, what: str) -> SchemaError:
        return SchemaError(f"{path}: line {n} (the header) {what}")

    def give_up_pending(then=None) -> None:
        first, rest = pending[0], pending[1:]
        if expected is None:
            raise header_error(first[0], "opens a quote that is never closed")
        rejected.append((first[0], "unbalanced_quote", _shown(first[1])))
        if then is not None:
            again.appendleft(then)
        again.extendleft(reversed([(n, text, None) for n, text in rest]))
        pending.clear()

    def complete(n: int, text: str, fields: int) -> None:
        nonlocal header, expected
        if expected is None:
            header, expected = text, fields
        elif fields == expected:
            rows.append((n, text))
        else:
            rejected.append((n, "short_row" if fields < expected else "extra_fields",
                             {"line": _shown(text), "fields": fields, "expected": expected}))

    try:
        while True:
            item = again.popleft() if again else next(lines, None)
            if item is None:
                if pending:
                    give_up_pending()
                    continue
                break
            n, text, reason = item
            if reason == "cp1252":
                notes["lines_read_as_cp1252"] = notes.get("lines_read_as_cp1252", 0) + 1
            elif reason:
                if pending:  # an open quoted field cannot run into a broken line
                    give_up_pending(then=item)
                    continue
                if expected is None:
                    what = (f"is longer than the maximum line length ({max_line_bytes:,} bytes; --max-line-length)"
                            if reason == "line_too_long" else "is not text (set --encoding)")
                    raise header_error(n, what)
                rejected.append((n, reason, text))
                continue
            if scan_sep is None:
                scan_sep = _sniff(text)
            if pending:
                pending.append((n, text))
                joined = "\n".join(t for _, t in pending)
                fields, still_open = _scan(joined, scan_sep)
                if not still_open and fields == (expected or fields):
                    complete(pending[0][0], joined, fields)
                    pending.clear()
                elif not still_open or len(pending) >= MAX_RECORD_LINES or len(joined) > max_line_bytes:
                    give_up_pending()
                continue
            fields, still_open = _scan(text, scan_sep)
            if still_open:
                pending.append((n, text))
            else:
                complete(n, text, fields)
    except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        if isinstance(exc, EOFError) or "end-of-stream" in str(exc):
            raise SchemaError(f"{path}: truncated {COMPRESSED.get(path.suffix.lower(), 'file')} "
                              "(the file ends before its compressed data does)") from exc
        raise SchemaError(f"{path}: cannot read file ({exc.__class__.__name__}: {_one_line(exc)})") from exc
    if not rows and not rejected:
        raise SchemaError(f"{path}: empty file (no lines)" if header is None else f"{path}: header only, no data rows")

    sep = scan_sep or ","
    body = "\n".join(t for _, t in rows)
    text = f"{header}\n{body}" if header is not None else body
    if not rows and names:
        df = pd.DataFrame(columns=names, dtype=str)
    else:
        df = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            engine="c",
            lineterminator="\n",  # a stray carriage return inside a line is a character, not a new row
            dtype=str,
            keep_default_na=False,
            header=None if names else 0,
            names=names,
        )
    if len(df) != len(rows):  # the parser saw the records differently: never lose a row, say so
        raise SchemaError(f"{path}: {len(rows):,} records read but {len(df):,} rows parsed")
    df["_source_row"] = [str(n) for n, _ in rows]
    reject_frame = pd.DataFrame(
        {
            "_source_row": pd.Series([str(n) for n, _, _ in rejected], dtype="string"),
            "reason": pd.Series([r for _, r, _ in rejected], dtype="string"),
            "raw": pd.Series([json.dumps(t if isinstance(t, dict) else {"line": t}, ensure_ascii=False)
                                for _, _, t in rejected], dtype="string"),
        }
    )
    return RawFile(df, reject_frame, notes)


def read_raw(path: str | Path, sep: str | None = None, names: list[str] | None = None,
             encoding: str | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> RawFile:
    """Read a CSV (optionally gzip/bz2/xz), TSV, whitespace-separated or XLSX file as text, every sheet.

    Adds ``_source_file`` and ``_source_row`` (the line number in the file, header = line 1,
    or ``sheet!row`` for spreadsheets) so that every rejected row can be traced back. Lines that cannot
    become a row (not text, too long, a quote never closed, too few or too many fields) are returned
    apart with their reason. A whole-file problem (missing, empty, header only, truncated, unreadable
    header) is a one-line SchemaError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise SchemaError(f"{path}: unknown encoding {encoding!r} (--encoding)") from None
    try:
        if path.suffix.lower() in SPREADSHEETS:
            sheets = pd.read_excel(path, sheet_name=None, dtype=str, keep_default_na=False)
            frames = []
            for sheet, df in sheets.items():
                df = df.astype(str) if len(df) else df
                df["_source_row"] = [f"{sheet}!{i + 2}" for i in range(len(df))]
                frames.append(df)
            df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            if df.empty:
                raise SchemaError(f"{path}: no data rows in any sheet")
            raw = RawFile(df, pd.DataFrame({"_source_row": [], "reason": [], "raw": []}, dtype="string"))
        else:
            raw = _read_text(path, sep, names, encoding, max_line_bytes)
    except SchemaError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, zlib.error) as exc:
        raise SchemaError(f"{path}: cannot read file ({exc.__class__.__name__}: {_one_line(exc)})") from exc
    raw.frame.columns = [str(c).strip() for c in raw.frame.columns]
    raw.frame["_source_file"] = str(path)
    raw.rejected["_source_file"] = pd.Series(str(path), index=raw.rejected.index, dtype="string")
    return raw


def _line_quarantine(source: str, files: list[RawFile]) -> pd.DataFrame:
    """The quarantine rows of lines set aside before parsing."""
    parts = [
        pd.DataFrame(
            {
                "source": source,
                "source_file": f.rejected["_source_file"].astype("string"),
                "source_row": f.rejected["_source_row"].astype("string"),
                "reason": f.rejected["reason"].astype("string"),
                "raw": f.rejected["raw"].astype("string"),
            },
            columns=QUARANTINE_COLUMNS,
        )
        for f in files
        if len(f.rejected)
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=QUARANTINE_COLUMNS)


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
    # the layout most values have (a few broken values must not turn the whole column into NaT)
    if len(sample) and sample.str.fullmatch(r"\d{8}").mean() > 0.5:
        return pd.to_datetime(s, format="%Y%m%d", errors="coerce")
    if len(sample) and sample.str.fullmatch(r"\d{9,10}(\.\d+)?").mean() > 0.5:
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


def _file_record(path: Path, raw: RawFile) -> dict:
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "rows": int(raw.n_rows), **raw.notes}


def _with_lines(quarantine: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """Row quarantine plus the lines set aside before parsing (a file's broken lines come first)."""
    if lines.empty:
        return quarantine
    if quarantine.empty:
        return lines.astype({c: "string" for c in QUARANTINE_COLUMNS}).reset_index(drop=True)
    return pd.concat([lines, quarantine], ignore_index=True)


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
def read_online_retail(
    paths: list[str | Path], encoding: str | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> IngestionResult:
    """UCI Online Retail / Online Retail II → events, customers, items (+ quarantine)."""
    frames, files, read = [], [], []
    for path in map(Path, paths):
        raw_file = read_raw(path, encoding=encoding, max_line_bytes=max_line_bytes)
        raw = raw_file.frame.rename(columns=ONLINE_RETAIL_RENAMES)
        _require(raw, ONLINE_RETAIL_REQUIRED, path)
        for optional in ("Description", "Country"):
            if optional not in raw.columns:
                raw[optional] = ""
        files.append(_file_record(path, raw_file))
        frames.append(raw)
        read.append(raw_file)
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
    quarantine = _with_lines(quarantine, _line_quarantine("online-retail", read))
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
    encoding: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> IngestionResult:
    """Any purchase log → events (+ customers, items). Negative amounts or quantities are returns."""
    path = Path(path)
    raw_file = read_raw(path, sep=sep, names=names, encoding=encoding, max_line_bytes=max_line_bytes)
    raw = raw_file.frame
    customer = _column(raw, customer_col, path, "--customer-col")
    timestamp = parse_timestamps(_column(raw, time_col, path, "--time-col"), time_format)
    amount = _column(raw, amount_col, path, "--amount-col")
    quantity = _column(raw, quantity_col, path, "--quantity-col")
    item = _column(raw, item_col, path, "--item-col")
    order = _column(raw, order_col, path, "--order-col")

    amount = _to_number(amount) if amount is not None else pd.Series(np.nan, index=raw.index)
    quantity = _to_number(quantity) if quantity is not None else pd.Series(1.0, index=raw.index)
    # a cell that is not a number is <NA>: the row is set aside, and NA never reaches a yes/no decision
    unparseable = (quantity.isna() | (amount.isna() if amount_col is not None else False)).astype(bool)
    is_return = ((amount < 0).fillna(False) | (quantity < 0).fillna(False)).astype(bool)
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
    quarantine = _with_lines(quarantine, _line_quarantine("transactions", [raw_file]))
    tables = {"events": accepted, "customers": _derive_customers(accepted)}
    facts = {
        "customers_identified": int(accepted["customer_id"].nunique()),
        "customers_with_purchase": int(accepted.loc[accepted["event_type"] == "purchase", "customer_id"].nunique()),
    }
    if item is not None:
        tables["items"] = _derive_items(accepted)
    return IngestionResult(
        "transactions",
        [_file_record(path, raw_file)],
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
    encoding: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> IngestionResult:
    """Any user-item feedback table (ratings, clicks) → interactions (+ customers, items)."""
    path = Path(path)
    raw_file = read_raw(path, sep=sep, names=names, encoding=encoding, max_line_bytes=max_line_bytes)
    raw = raw_file.frame
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
    quarantine = _with_lines(quarantine, _line_quarantine("interactions", [raw_file]))
    customers = conform(
        "customers",
        accepted.groupby("customer_id").agg(first_seen=("timestamp", "min")).reset_index(),
        "derived from interactions",
    )
    items = conform("items", pd.DataFrame({"item_id": np.sort(accepted["item_id"].unique())}), "derived")
    return IngestionResult(
        "interactions",
        [_file_record(path, raw_file)],
        {"interactions": accepted, "customers": customers, "items": items},
        quarantine,
        {"interaction": len(accepted)},
        {"customers_identified": int(accepted["customer_id"].nunique())},
    )


# Rows set aside by design (overlapping exports, repeated lines, adjustments, postage and fees, guest
# checkouts) are expected in a healthy file; only the other reasons say the file is broken, and only they
# count towards the rejected share. On both UCI files: 60 of 1,067,370 lines (the zero-price lines).
SET_ASIDE_BY_DESIGN = ("overlap_duplicate", "duplicate_line", "adjustment", "non_product", "missing_customer_id")
MAX_REJECTED_SHARE = 0.10


class RejectedShareError(SchemaError):
    """Too many rows of an ingestion are broken: nothing is written, the workspace keeps its tables."""


def rejected_share(result: IngestionResult) -> float:
    """Share of the rows read that were rejected as broken (not set aside by design)."""
    broken = ~result.quarantine["reason"].isin(SET_ASIDE_BY_DESIGN)
    return float(broken.sum()) / result.n_read if result.n_read else 0.0


def rejected_path(workspace: Workspace, source: str) -> Path:
    """Where the quarantine of a refused ingestion is kept for inspection (outside the data tables)."""
    return workspace.root / "rejected" / f"quarantine_{source.replace('-', '_')}.parquet"


def check_rejects(result: IngestionResult, max_rejected: float = MAX_REJECTED_SHARE,
                  allow_rejects: bool = False) -> None:
    """Refuse an ingestion that accepted nothing, or (unless ``allow_rejects``) whose rejected share is too high.

    The error is one line naming the file (the one with most broken rows), the counts and the top reasons.
    """
    q = result.quarantine
    broken = q[~q["reason"].isin(SET_ASIDE_BY_DESIGN)]
    share = rejected_share(result)
    if result.n_accepted and (allow_rejects or share <= max_rejected):
        return
    counted = broken if len(broken) else q
    by_file = counted["source_file"].value_counts()
    files = [f["path"] for f in result.files]
    where = by_file.index[0] if len(by_file) else (files[0] if files else result.source)
    if len(by_file) > 1:
        where = f"{where} (and {len(by_file) - 1} more file{'s' if len(by_file) > 2 else ''})"
    top = ", ".join(f"{n:,} {reason}" for reason, n in counted["reason"].value_counts().head(3).items())
    if not result.n_accepted:
        raise RejectedShareError(
            f"{where}: no row accepted, {result.n_rejected:,} of {result.n_read:,} rows rejected ({top}); "
            "the workspace's tables are unchanged"
        )
    raise RejectedShareError(
        f"{where}: {len(broken):,} of {result.n_read:,} rows rejected ({share:.1%}, above the "
        f"{max_rejected:.0%} limit; {top}); the workspace's tables are unchanged (--allow-rejects to accept them)"
    )


def save(workspace: Workspace, result: IngestionResult, max_rejected: float = MAX_REJECTED_SHARE,
         allow_rejects: bool = False) -> dict:
    """Write the tables and the quarantine to the workspace and record the ingestion (lineage).

    A refused ingestion (see ``check_rejects``) writes no table: its quarantine goes to
    ``rejected_path`` and a RejectedShareError says why. An accepted one replaces every canonical table
    at once (``Workspace.publish_tables``): a run killed halfway leaves the previous tables whole.
    """
    if result.n_accepted + result.n_rejected != result.n_read:  # never publish a silent loss (python -O too)
        raise RuntimeError(f"ingestion lost rows: {result.n_accepted} accepted + {result.n_rejected} rejected "
                           f"!= {result.n_read} read")
    try:
        check_rejects(result, max_rejected, allow_rejects)
    except RejectedShareError:
        path = rejected_path(workspace, result.source)
        atomic_write(path, lambda tmp: result.quarantine.to_parquet(tmp, index=False))
        raise
    # An ingestion replaces the workspace's data: tables of an earlier source must not mix in.
    quarantine = f"quarantine_{result.source.replace('-', '_')}"
    workspace.publish_tables({**result.tables, quarantine: result.quarantine}, replace=TABLES)
    record = result.record()
    record["rejected_share"] = round(rejected_share(result), 6)
    if allow_rejects:
        record["allow_rejects"] = True
    record["tables_sha256"] = {
        name: file_sha256(workspace.table_path(name)) for name in result.tables
    }
    return workspace.record_ingestion(record)
