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

from features import mapping as mappings
from features.contract import CONTRACT_REASONS, TABLES, SchemaError, conform, validate_rows  # noqa: F401 (re-exported)
from features.forget import is_forgotten
from features.workspace import Workspace, atomic_write, file_sha256

# Reasons a row is set aside, in the order they are tested: a row gets the first that applies.
SOURCE_REASONS = ("forgotten", "overlap_duplicate", "unparseable_number", "adjustment", "non_product")

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


def parse_timestamps(s: pd.Series, fmt: str | None = None, dayfirst: bool = False) -> pd.Series:
    """Parse text timestamps: an explicit strftime format, compact dates (19970101), ISO, unix seconds, or
    any other layout pandas reads (``11/1/2000`` is 1 November, or 11 January with ``dayfirst``)."""
    s = _blank_to_na(s)
    if fmt:
        return pd.to_datetime(s, format=fmt, errors="coerce")
    sample = s.dropna().head(1000)
    # the layout most values have (a few broken values must not turn the whole column into NaT)
    if len(sample) and sample.str.fullmatch(r"\d{8}").mean() > 0.5:
        return pd.to_datetime(s, format="%Y%m%d", errors="coerce")
    if len(sample) and sample.str.fullmatch(r"\d{9,10}(\.\d+)?").mean() > 0.5:
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", errors="coerce")
    if not dayfirst:
        try:
            iso = pd.to_datetime(s, format="ISO8601", errors="coerce")
            if not len(sample) or iso[sample.index].notna().mean() > 0.5:
                return iso
        except ValueError:
            pass
    return pd.to_datetime(s, format="mixed", dayfirst=dayfirst, errors="coerce")


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
    paths: list[str | Path], encoding: str | None = None, max_line_bytes: int = MAX_LINE_BYTES,
    forget: set[str] | None = None,
) -> IngestionResult:
    """UCI Online Retail / Online Retail II → events, customers, items (+ quarantine): the built-in
    mapping ``features/mappings/online_retail.yaml``."""
    mapping = mappings.builtin("online-retail", paths)
    for source in mapping.sources:
        source.encoding = encoding or source.encoding
        source.max_line_length = max_line_bytes
    return read_mapping(mapping, source="online-retail", forget=forget)


def read_transactions(path: str | Path, customer_col: str, time_col: str, amount_col: str | None = None,
                      item_col: str | None = None, quantity_col: str | None = None, order_col: str | None = None,
                      sep: str | None = None, time_format: str | None = None, names: list[str] | None = None,
                      encoding: str | None = None, max_line_bytes: int = MAX_LINE_BYTES,
                      forget: set[str] | None = None) -> IngestionResult:
    """Any purchase log → events (+ customers, items). Negative amounts or quantities are returns."""
    mapping = mappings.transactions_mapping(path, customer_col, time_col, amount_col, item_col, quantity_col,
                                            order_col, sep, time_format, names, encoding, max_line_bytes)
    return read_mapping(mapping, source="transactions", forget=forget)


def read_interactions(path: str | Path, user_col: str, item_col: str, weight_col: str | None = None,
                      time_col: str | None = None, sep: str | None = None, time_format: str | None = None,
                      names: list[str] | None = None, encoding: str | None = None,
                      max_line_bytes: int = MAX_LINE_BYTES, forget: set[str] | None = None) -> IngestionResult:
    """Any user-item feedback table (ratings, clicks) → interactions (+ customers, items)."""
    mapping = mappings.interactions_mapping(path, user_col, item_col, weight_col, time_col, sep, time_format,
                                            names, encoding, max_line_bytes)
    return read_mapping(mapping, source="interactions", forget=forget)


# What an accepted row of each table is counted as in the summary (events: by event type).
ROW_KIND = {"customers": "customer", "items": "item", "tickets": "ticket", "campaigns": "campaign",
            "interactions": "interaction"}
_FLOAT_ID = re.compile(r"^\d+\.0$")


@dataclass
class _SourceRows:
    """One mapping source read: its raw rows (for the quarantine), canonical rows and reasons so far."""

    source: mappings.Source
    raw: pd.DataFrame
    fields: pd.DataFrame  # canonical field names (strings as in the files), + _source_file, _source_row
    files: list[dict]
    read: list[RawFile]


def _resolve(raw: pd.DataFrame, ref, field_: str, path: Path, mapping: mappings.Mapping, index: int,
             optional: bool) -> pd.Series | None:
    """The column ``ref`` names (a name, a 0-based position, or the first present of a list)."""
    columns = [c for c in raw.columns if not c.startswith("_")]
    for r in ref if isinstance(ref, list) else [ref]:
        if isinstance(r, str) and r in raw.columns:
            return raw[r]
        if (isinstance(r, int) or (isinstance(r, str) and r.isdigit())) and int(r) < len(columns):
            return raw[columns[int(r)]]
    if optional:
        return None
    shown = ref[0] if isinstance(ref, list) else ref
    found = ", ".join(repr(c) for c in columns)
    origin = mapping.origins.get(field_)
    if origin:
        raise SchemaError(f"{path}: column {shown!r} given by {origin} not found; found {found}")
    if mapping.path and Path(mapping.path).parent == mappings.BUILTIN_DIR:
        raise SchemaError(f"{path}: missing required column(s) {shown!r}; found {found}")
    raise SchemaError(f"{path}: column {shown!r} given by {mapping.path}: sources[{index}].columns.{field_} "
                      f"not found; found {found}")


def _protect(raw: pd.DataFrame, source: mappings.Source, key: bytes | None, path: Path) -> pd.DataFrame:
    """Columns marked ``pii``: replaced by their keyed hash, or dropped, before anything else sees them."""
    for column, action in source.pii.items():
        if column not in raw.columns:
            continue
        if action == "drop":
            raw = raw.drop(columns=column)
            continue
        if key is None:
            raise SchemaError(f"{path}: column {column!r} is marked pii: hash, but no key is set "
                              f"(${mappings.PII_KEY_ENV} or ${mappings.PII_KEY_FILE_ENV}, outside the workspace)")
        values = _blank_to_na(raw[column])
        raw[column] = values.map(lambda v: mappings.pseudonym(v, key), na_action="ignore").fillna("")
    return raw


def _read_source(mapping: mappings.Mapping, index: int, key: bytes | None) -> _SourceRows:
    source = mapping.sources[index]
    paths = mapping.files_of(source)
    if not paths:
        raise SchemaError(f"{mapping.path}: sources[{index}].files: no file matches {', '.join(source.files)}")
    raws, fields, files, read = [], [], [], []
    for path in paths:
        raw_file = read_raw(path, sep=source.sep, names=source.names, encoding=source.encoding,
                            max_line_bytes=source.max_line_length or MAX_LINE_BYTES)
        raw = _protect(raw_file.frame, source, key, path)
        if source.pii:  # a line that never became a row may hold personal data: keep where it was, not what
            raw_file.rejected["raw"] = pd.Series('{"redacted": "pii"}', index=raw_file.rejected.index,
                                                 dtype="string")
        frame = pd.DataFrame(index=raw.index)
        for field_, ref in source.columns.items():
            column = _resolve(raw, ref, field_, path, mapping, index, field_ in source.optional)
            if column is not None:
                frame[field_] = column
        frame[["_source_file", "_source_row"]] = raw[["_source_file", "_source_row"]]
        raws.append(raw)
        fields.append(frame)
        files.append(_file_record(path, raw_file))
        read.append(raw_file)
    return _SourceRows(source, pd.concat(raws, ignore_index=True), pd.concat(fields, ignore_index=True), files, read)


def _recoded(rows: _SourceRows, field_: str) -> pd.Series | None:
    """A field's values: its column (recoded, scaled), or its fixed value, or None."""
    src, f = rows.source, rows.fields
    if field_ in f.columns:
        values = _blank_to_na(f[field_])
        if field_ in src.recode:
            codes = {k.strip(): v for k, v in src.recode[field_].items()}
            values = values.map(lambda v: codes.get(v, v), na_action="ignore").astype("string")
    elif field_ in src.values:
        values = pd.Series(str(src.values[field_]), index=f.index, dtype="string")
    else:
        return None
    return values


def _number(rows: _SourceRows, field_: str) -> pd.Series | None:
    values = _recoded(rows, field_)
    if values is None:
        return None
    return _to_number(values) * rows.source.units.get(field_, 1.0)


def _ids(values: pd.Series | None) -> pd.Series | None:
    """Identifiers as text; a column of whole numbers exported as floats (17850.0) loses its ``.0``."""
    if values is None:
        return None
    present = values.dropna()
    if len(present) and present.str.fullmatch(_FLOAT_ID.pattern).mean() > 0.5:
        values = values.str.replace(r"\.0$", "", regex=True)
    return values


def _times(rows: _SourceRows, field_: str) -> pd.Series | None:
    values = _recoded(rows, field_)
    return None if values is None else parse_timestamps(values, rows.source.date_format, rows.source.dayfirst)


def _events(rows: _SourceRows, reasons: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Canonical events of one source, and the source-level reasons (unparseable numbers, set-aside lines)."""
    src, f = rows.source, rows.fields
    customer = _ids(_recoded(rows, "customer_id"))
    timestamp = _times(rows, "timestamp")
    order = _recoded(rows, "order_id")
    quantity = _number(rows, "quantity")
    amount, unit_price = _number(rows, "amount"), _number(rows, "unit_price")
    unparseable = pd.Series(False, index=f.index)
    # a cell that is not a number; an empty one too in a purchase log (views and carts have no amount)
    typed = "event_type" in f.columns or "event_type" in src.values
    for given, values in (("quantity", quantity), ("amount", amount), ("unit_price", unit_price)):
        if values is not None and given in f.columns:
            bad = values.isna() & (_recoded(rows, given).notna() if typed else True)
            unparseable |= bad.astype(bool)
    quantity = quantity if quantity is not None else pd.Series(1.0, index=f.index)
    event_type = _recoded(rows, "event_type")
    if event_type is not None:
        is_return = (event_type == "return").fillna(False).astype(bool)
        quantity = quantity.abs()
    elif src.returns.order_prefix:
        is_return = order.str.upper().str.startswith(src.returns.order_prefix.upper()).fillna(False).astype(bool)
        quantity = quantity.where(~is_return, -quantity)  # a negative quantity on a normal order stays (rejected)
    else:
        is_return = ((quantity < 0).fillna(False) | ((amount < 0).fillna(False) if amount is not None else False))
        is_return = is_return.astype(bool)
        quantity = quantity.abs()
    if amount is None and unit_price is not None:
        amount = quantity.abs() * unit_price
    elif amount is None:
        amount = pd.Series(np.nan, index=f.index)
    else:
        amount = amount.abs() if (event_type is not None or not src.returns.order_prefix) else amount.where(
            ~is_return, amount.abs())
    if event_type is None:
        event_type = pd.Series(np.where(is_return, "return", "purchase"), index=f.index, dtype="string")
    if order is None:  # one order per customer and moment when the log has no order ids (views have none)
        order = (customer + "@" + timestamp.dt.strftime("%Y%m%d%H%M%S")).where(event_type.isin(["purchase", "return"]))

    reasons = reasons.mask(reasons.isna() & unparseable, "unparseable_number")
    for rule in src.set_aside:
        values = _recoded(rows, rule.field)
        if values is None:
            continue
        values = values.str.strip()
        hit = values.isin(rule.values)
        if rule.prefix:
            hit |= values.str.upper().str.startswith(rule.prefix.upper())
        if rule.pattern:
            hit |= values.str.match(rule.pattern)  # a pattern anchored at the start
        reasons = reasons.mask(reasons.isna() & hit.fillna(False).astype(bool), rule.reason)
    if src.zero_amount == "reject":
        reasons = reasons.mask(reasons.isna() & (amount == 0).fillna(False).astype(bool), "zero_or_negative_price")
    frame = {"customer_id": customer, "item_id": _recoded(rows, "item_id"), "event_type": event_type,
             "timestamp": timestamp, "quantity": quantity, "amount": amount, "order_id": order,
             "channel": _recoded(rows, "channel")}
    events = conform("events", pd.DataFrame({k: v for k, v in frame.items() if v is not None}), src.label)
    return events, reasons


def _table(rows: _SourceRows, reasons: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Canonical rows of a non-event table (customers, items, tickets, campaigns, interactions), and the
    reasons so far (a cell that is not a number or not a date: the row is set aside, not emptied)."""
    spec = TABLES[rows.source.table]
    frame = {}
    for col in spec.columns:
        given = _recoded(rows, col.name)
        if col.dtype == "datetime":
            values = _times(rows, col.name)
            bad = "unparseable_timestamp"
        elif col.dtype in ("float", "int"):
            values = _number(rows, col.name)
            bad = "unparseable_number"
        else:
            values = _ids(given) if col.name in ("customer_id", "item_id") else given
            bad = None
        if values is None:
            continue
        frame[col.name] = values
        if bad:
            reasons = reasons.mask(reasons.isna() & (given.notna() & values.isna()).astype(bool), bad)
    if rows.source.table == "interactions" and "weight" not in frame:
        frame["weight"] = pd.Series(1.0, index=rows.fields.index)
    table = conform(rows.source.table, pd.DataFrame(frame, index=rows.fields.index), rows.source.label)
    return table, reasons


def _carried(rows: _SourceRows, accepted_mask: pd.Series, events: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Attributes carried on event lines (``customers.country``), the most frequent value per customer/item."""
    out: dict[str, pd.DataFrame] = {}
    for table, key in (("customers", "customer_id"), ("items", "item_id")):
        cols = [c for c in rows.fields.columns if c.startswith(f"{table}.")]
        if not cols:
            continue
        keys = events.loc[accepted_mask, key].reset_index(drop=True)
        per = pd.DataFrame({key: keys})
        for c in cols:
            values = _blank_to_na(rows.fields.loc[accepted_mask, c]).reset_index(drop=True)
            named = pd.DataFrame({key: keys, "v": values}).dropna()
            top = named.groupby(key)["v"].agg(lambda s: s.value_counts().index[0])
            per[c.split(".", 1)[1]] = keys.map(top)
        out[table] = per.drop_duplicates(key)
    return out


def read_mapping(mapping: mappings.Mapping, source: str = "mapping", forget: set[str] | None = None,
                 key: bytes | None = None) -> IngestionResult:
    """Read every source of a mapping into the canonical tables (+ quarantine), accounting for every line.

    ``forget``: tokens of the customers erased by ``crmml forget`` (``features.forget.forgotten_tokens``);
    their rows are counted as ``forgotten`` and kept nowhere (the quarantine keeps where, not what).
    """
    if key is None and (forget or any(action == "hash" for s in mapping.sources for action in s.pii.values())):
        key = mappings.pii_key()
    parts: dict[str, list[pd.DataFrame]] = {}
    carried: dict[str, list[pd.DataFrame]] = {}
    quarantines, files, read_files = [], [], []
    accepted_by_type: dict[str, int] = {}
    identified, paid, product_buyers = set(), set(), set()
    for index in range(len(mapping.sources)):
        rows = _read_source(mapping, index, key)
        src, f = rows.source, rows.fields
        files += rows.files
        read_files += rows.read
        reasons = pd.Series(pd.NA, index=f.index, dtype="string")
        if src.overlapping_files:  # a line counts once however many files hold it (a multiset per file)
            content = [c for c in f.columns if not c.startswith("_")]
            occurrence = f.groupby(content + ["_source_file"], sort=False, dropna=False).cumcount()
            overlap = pd.DataFrame({"key": pd.util.hash_pandas_object(f[content], index=False), "n": occurrence})
            reasons = reasons.mask(overlap.duplicated(keep="first"), "overlap_duplicate")
        if src.table == "events":
            canonical, reasons = _events(rows, reasons)
        else:
            canonical, reasons = _table(rows, reasons)
        who = canonical["customer_id"] if "customer_id" in canonical.columns else None
        if who is not None and forget:
            reasons = reasons.mask(is_forgotten(who, forget, key), "forgotten")
        counted = ~reasons.isin(["overlap_duplicate", "forgotten"]).fillna(False).astype(bool)
        if src.table in ("events", "interactions"):
            identified |= set(who[counted].dropna())
        if src.table == "events":
            # any paid line of a customer counts here, postage included; the tables keep product lines only
            buys = counted & ~(reasons == "adjustment").fillna(False).astype(bool)
            buys &= (canonical["event_type"] == "purchase").fillna(False).astype(bool)
            buys &= (canonical["quantity"] > 0).fillna(True).astype(bool) & (canonical["amount"] > 0).fillna(True)
            paid |= set(who[buys].dropna())
        drop = src.duplicates == "drop" or (src.duplicates == "auto" and (
            src.table != "events" or "order_id" in src.columns))
        clean = reasons.isna()
        reasons[clean] = validate_rows(src.table, canonical[clean], drop_duplicates=drop)
        keep = reasons.isna()
        accepted = canonical[keep].reset_index(drop=True)
        raw = rows.raw.copy()
        quarantine = _quarantine(src.label, raw, reasons)
        gone = quarantine["reason"] == "forgotten"
        quarantine.loc[gone, "raw"] = "{}"
        quarantines.append(_with_lines(quarantine, _line_quarantine(src.label, rows.read)))
        parts.setdefault(src.table, []).append(accepted)
        if src.table == "events":
            for kind, n in accepted["event_type"].value_counts().items():
                accepted_by_type[kind] = accepted_by_type.get(kind, 0) + int(n)
            product_buyers |= set(accepted.loc[accepted["event_type"] == "purchase", "customer_id"])
            for table, frame in _carried(rows, keep, canonical).items():
                carried.setdefault(table, []).append(frame)
            if src.category_from_name:
                carried.setdefault("category_from_name", [])
        else:
            kind = ROW_KIND[src.table]
            accepted_by_type[kind] = accepted_by_type.get(kind, 0) + len(accepted)
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    tables = _complete(tables, carried, explicit=set(parts), categories="category_from_name" in carried)
    quarantine = pd.concat(quarantines, ignore_index=True) if quarantines else pd.DataFrame(columns=QUARANTINE_COLUMNS)
    facts = {"customers_identified": len(identified)}
    if "events" in parts:
        facts["customers_with_purchase"] = len(paid)
        facts["customers_with_product_purchase"] = len(product_buyers)
    return IngestionResult(source, files, tables, quarantine.reset_index(drop=True), accepted_by_type, facts)


def _complete(tables: dict[str, pd.DataFrame], carried: dict, explicit: set[str], categories: bool) -> dict:
    """Customers and items of every event (or interaction): rows of their own files first, then what the
    events say (first event, carried attributes, median unit price)."""
    activity = tables.get("events", tables.get("interactions"))
    if activity is None:
        return tables
    derived_customers = (activity.groupby("customer_id", sort=True).agg(first_seen=("timestamp", "min"))
                         .reset_index())
    for extra in carried.get("customers", []):
        derived_customers = derived_customers.merge(extra, on="customer_id", how="left")
    tables["customers"] = _merge_keyed("customers", tables.get("customers"), derived_customers)
    if "events" in tables:
        items = _derive_items(tables["events"])
        for extra in carried.get("items", []):
            items = items.drop(columns=[c for c in extra.columns if c != "item_id"]).merge(extra, on="item_id",
                                                                                           how="left")
        if categories and "name" in items.columns:
            items["category"] = items["name"].map(category_from_name)
    else:
        items = pd.DataFrame({"item_id": np.sort(activity["item_id"].dropna().unique())})
    items = conform("items", items, "derived from events")
    if "items" in explicit or len(items) and items["item_id"].notna().any():
        tables["items"] = _merge_keyed("items", tables.get("items"), items)
    return {name: tables[name] for name in TABLES if name in tables}


def _merge_keyed(table: str, given: pd.DataFrame | None, derived: pd.DataFrame) -> pd.DataFrame:
    """The rows of the table's own files, their empty cells filled from ``derived``, plus derived rows for
    keys they lack."""
    derived = conform(table, derived, "derived")
    if given is None:
        return derived
    key = TABLES[table].key[0]
    extra = derived.set_index(key)
    given = given.set_index(key)
    filled = given.combine_first(extra.loc[extra.index.intersection(given.index)])[given.columns]
    missing = extra.loc[extra.index.difference(given.index)]
    out = pd.concat([filled.loc[given.index], missing]).reset_index()
    return conform(table, out, "derived")


# Rows set aside by design (overlapping exports, repeated lines, adjustments, postage and fees, guest
# checkouts) are expected in a healthy file; only the other reasons say the file is broken, and only they
# count towards the rejected share. On both UCI files: 60 of 1,067,370 lines (the zero-price lines).
SET_ASIDE_BY_DESIGN = ("overlap_duplicate", "duplicate_line", "adjustment", "non_product", "missing_customer_id",
                       "forgotten")
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
    # An ingestion replaces the workspace's data: tables of an earlier source must not mix in. The
    # events accepted online (features.event_log) join every ingestion's events.
    from features.event_log import merge_log

    tables, logged = merge_log(workspace, result.tables)
    quarantine = f"quarantine_{result.source.replace('-', '_')}"
    workspace.publish_tables({**tables, quarantine: result.quarantine}, replace=TABLES)
    record = result.record()
    if logged is not None:
        record["events_log"] = logged
    record["rejected_share"] = round(rejected_share(result), 6)
    if allow_rejects:
        record["allow_rejects"] = True
    record["tables_sha256"] = {
        name: file_sha256(workspace.table_path(name)) for name in result.tables
    }
    return workspace.record_ingestion(record)
