"""The mapping file: which of a shop's export files is which canonical table, column by column.

``crmml ingest --config shop.yaml`` reads it; ``crmml init-config FILE...`` writes a first draft;
the ``--source`` options are built-in mappings (``features/mappings/online_retail.yaml`` and
:func:`transactions_mapping` / :func:`interactions_mapping`). The schema is pydantic: a mistake is one
line naming the mapping file, the key and the form expected. ``docs/data.md`` documents every key.

Example::

    sources:
      - table: events
        files: [orders.csv.gz]
        columns: {customer_id: Client, timestamp: Date, item_id: SKU, quantity: Qty, unit_price: Price}
        date_format: "%d/%m/%Y"
        pii: {Email: hash}
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from features.contract import EVENT_TYPES, TABLES, TICKET_KINDS, SchemaError

BUILTIN_DIR = Path(__file__).resolve().parent / "mappings"
# Fields a source column may feed besides the table's own: the line amount from a unit price
# (amount = quantity x unit_price), and attributes carried on event lines (``customers.country``).
EXTRA_FIELDS = {"events": ("unit_price",)}
CARRIED = {"events": ("customers", "items")}
# Rows set aside on purpose by ``set_aside`` rules: these reasons mean "not a customer's purchase", not "broken".
SET_ASIDE_REASONS = ("adjustment", "non_product")
PII_KEY_ENV = "CRMML_PII_KEY"
PII_KEY_FILE_ENV = "CRMML_PII_KEY_FILE"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetAside(_Strict):
    """Lines that are not a customer's purchase (postage, fees, bad-debt adjustments): set aside with ``reason``."""

    reason: Literal["adjustment", "non_product"]
    field: str
    values: list[str] = []
    prefix: str | None = None
    pattern: str | None = None


class Returns(_Strict):
    """How a return is recognised: ``negative`` quantity or amount (default), or an order id prefix
    (UCI ``C`` invoices; a negative quantity on another order is then rejected)."""

    order_prefix: str | None = None


class Source(_Strict):
    """One table's rows from one or more files of the same layout."""

    table: Literal["events", "customers", "items", "tickets", "campaigns", "interactions"]
    files: list[str] = Field(min_length=1)
    name: str | None = None
    sep: str | None = None  # ',', '\t', ';', '|', 'whitespace'; default: sniffed from the header
    encoding: str | None = None
    names: list[str] | None = None  # column names of a file without a header
    columns: dict[str, str | int | list[str]] = {}  # field -> column name (or position, or alternatives)
    optional: list[str] = []  # fields whose column may be absent from a file
    values: dict[str, str | float | int] = {}  # field -> fixed value for every row
    recode: dict[str, dict[str, str]] = {}  # field -> {value in the file: canonical value}
    units: dict[str, float] = {}  # field -> factor (0.01: cents to currency units)
    date_format: str | None = None  # strftime; default: ISO, 19970101, unix seconds, or 11/1/2000 (month first)
    dayfirst: bool = False
    pii: dict[str, Literal["hash", "drop"]] = {}  # column -> what happens to it at ingestion
    zero_amount: Literal["keep", "reject"] = "keep"
    duplicates: Literal["auto", "keep", "drop"] = "auto"
    overlapping_files: bool = False
    returns: Returns = Returns()
    set_aside: list[SetAside] = []
    category_from_name: bool = False
    max_line_length: int | None = Field(default=None, gt=0)

    @field_validator("sep")
    @classmethod
    def _sep(cls, v):
        aliases = {"tab": "\t", "\\t": "\t", "whitespace": "whitespace", "space": "whitespace"}
        v = aliases.get(v, v)
        if v is not None and v != "whitespace" and len(v) != 1:
            raise ValueError("expected one character (',', ';', '|'), 'tab' or 'whitespace'")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v):
        import codecs

        if v is not None:
            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r}; expected a Python codec such as utf-8 or latin-1") from None
        return v

    @model_validator(mode="after")
    def _fields(self):
        known = self.fields_known()
        for key, where in (("columns", self.columns), ("values", self.values), ("recode", self.recode),
                           ("units", self.units)):
            for f in where:
                if f not in known:
                    raise ValueError(f"{key}.{f}: unknown field {f!r} for table {self.table}; "
                                     f"expected one of {', '.join(known)}")
        for f in self.optional:
            if f not in self.columns:
                raise ValueError(f"optional.{f}: {f!r} is not a key of columns")
        required = [c for c in TABLES[self.table].required_columns if c not in ("event_type",)]
        given = set(self.columns) | set(self.values)
        missing = [c for c in required if c not in given]
        if self.table == "events" and "event_type" not in given and not missing:
            pass  # purchases and returns from the sign of quantity/amount
        if missing:
            raise ValueError(f"columns: table {self.table} needs {', '.join(missing)}; expected e.g. "
                             f"columns: {{{missing[0]}: <column of the file>}}")
        allowed = {"event_type": EVENT_TYPES, "kind": TICKET_KINDS}
        for f, codes in self.recode.items():
            bad = [v for v in codes.values() if f in allowed and v not in allowed[f]]
            if bad:
                raise ValueError(f"recode.{f}: {bad[0]!r} is not one of {', '.join(allowed[f])}")
        for i, rule in enumerate(self.set_aside):
            if rule.field not in known:
                raise ValueError(f"set_aside[{i}].field: unknown field {rule.field!r}")
        for f, v in self.values.items():
            if f in allowed and v not in allowed[f]:
                raise ValueError(f"values.{f}: {v!r} is not one of {', '.join(allowed[f])}")
        return self

    def fields_known(self) -> list[str]:
        own = TABLES[self.table].column_names + list(EXTRA_FIELDS.get(self.table, ()))
        carried = [f"{t}.{c}" for t in CARRIED.get(self.table, ()) for c in TABLES[t].column_names
                    if c not in ("customer_id", "item_id")]
        return own + carried

    @property
    def label(self) -> str:
        return self.name or self.table


class Mapping(_Strict):
    """A whole mapping file: its sources. ``path`` (set when loaded) anchors relative file names."""

    version: Literal[1] = 1
    sources: list[Source] = Field(min_length=1)
    path: str | None = None
    # option names shown in errors for mappings built from command-line options (--customer-col)
    origins: dict[str, str] = {}

    def files_of(self, source: Source) -> list[Path]:
        """The files of ``source``: paths relative to the mapping file; globs expanded (sorted)."""
        base = Path(self.path).parent if self.path else Path.cwd()
        out: list[Path] = []
        for pattern in source.files:
            full = Path(pattern) if Path(pattern).is_absolute() else base / pattern
            matches = sorted(glob.glob(str(full))) if any(ch in pattern for ch in "*?[") else [str(full)]
            out.extend(Path(m) for m in matches)
        return out


def _one_line_error(path, err: ValidationError, data) -> str:
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = ""
    if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
        try:
            files = data["sources"][loc[1]].get("files")
            where = f" ({', '.join(map(str, files))})" if files else ""
        except (AttributeError, IndexError, KeyError, TypeError):
            pass
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
    elif first["type"] == "missing":
        msg = "missing"
    elif first["type"] == "literal_error":
        msg = f"{first['input']!r} is not allowed; expected {first['ctx']['expected']}"
    else:
        msg = msg.replace("Input should be", "expected").replace("List should have", "expected")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: {key}{where}: {msg}{more}"


def validate(data, path: str | Path | None = None, origins: dict[str, str] | None = None) -> Mapping:
    """A Mapping from a parsed YAML/dict, or a one-line SchemaError naming the file, key and expected form."""
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a mapping with a 'sources' list, got {type(data).__name__}")
    try:
        mapping = Mapping.model_validate({**data, "path": str(path) if path else None, "origins": origins or {}})
    except ValidationError as err:
        raise SchemaError(_one_line_error(path or "mapping", err, data)) from None
    return mapping


def load(path: str | Path) -> Mapping:
    """Read and validate a mapping file (YAML)."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: mapping file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return validate(data, path)


def builtin(name: str, files: list[str | Path]) -> Mapping:
    """A built-in mapping (``features/mappings/<name>.yaml``) applied to ``files``."""
    data = yaml.safe_load((BUILTIN_DIR / f"{name.replace('-', '_')}.yaml").read_text())
    for source in data["sources"]:
        source["files"] = [str(Path(f).absolute()) for f in files]
    return validate(data, BUILTIN_DIR / f"{name.replace('-', '_')}.yaml")


def transactions_mapping(path, customer_col, time_col, amount_col=None, item_col=None, quantity_col=None,
                         order_col=None, sep=None, time_format=None, names=None, encoding=None,
                         max_line_bytes=None) -> Mapping:
    """``--source transactions``: a purchase log given by column options."""
    options = {"customer_id": (customer_col, "--customer-col"), "timestamp": (time_col, "--time-col"),
               "amount": (amount_col, "--amount-col"), "item_id": (item_col, "--item-col"),
               "quantity": (quantity_col, "--quantity-col"), "order_id": (order_col, "--order-col")}
    return _from_options("events", path, options, sep, time_format, names, encoding, max_line_bytes)


def interactions_mapping(path, user_col, item_col, weight_col=None, time_col=None, sep=None, time_format=None,
                         names=None, encoding=None, max_line_bytes=None) -> Mapping:
    """``--source interactions``: ratings or clicks given by column options."""
    options = {"customer_id": (user_col, "--user-col"), "item_id": (item_col, "--item-col"),
               "weight": (weight_col, "--weight-col"), "timestamp": (time_col, "--time-col")}
    return _from_options("interactions", path, options, sep, time_format, names, encoding, max_line_bytes)


def _from_options(table, path, options, sep, time_format, names, encoding, max_line_bytes) -> Mapping:
    source = {
        "table": table, "files": [str(Path(path).absolute())], "name": table if table != "events" else "transactions",
        "columns": {f: col for f, (col, _) in options.items() if col is not None},
        "sep": sep, "names": names, "date_format": time_format, "max_line_length": max_line_bytes,
    }
    origins = {f: opt for f, (col, opt) in options.items() if col is not None}
    mapping = validate({"sources": [source]}, f"{path} (options)", origins)
    mapping.sources[0].encoding = encoding  # an unknown one is reported by the reader, naming --encoding
    return mapping


# --------------------------------------------------------------------------- personal data
def pii_key(workspace_root: Path | None = None) -> bytes | None:
    """The key of the keyed hash: ``$CRMML_PII_KEY``, or the file named by ``$CRMML_PII_KEY_FILE``.

    The key must live outside the workspace (a workspace copied or shared must not carry the key that
    reverses nothing but links pseudonyms to people by brute force).
    """
    if os.environ.get(PII_KEY_ENV):
        return os.environ[PII_KEY_ENV].encode()
    name = os.environ.get(PII_KEY_FILE_ENV)
    if not name:
        return None
    path = Path(name).resolve()
    if workspace_root is not None and path.is_relative_to(Path(workspace_root).resolve()):
        raise SchemaError(f"{path}: the PII key file must be outside the workspace ({PII_KEY_FILE_ENV})")
    if not path.exists():
        raise SchemaError(f"{path}: PII key file not found ({PII_KEY_FILE_ENV})")
    return path.read_bytes().strip()


def pseudonym(value: str, key: bytes) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, 32 hex digits: the same person gets the same pseudonym."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
