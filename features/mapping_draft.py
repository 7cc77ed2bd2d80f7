"""`crmml init-config`: a commented first mapping file guessed from a shop's export files.

The roles are guesses from the header names and first values; a person confirms them. The schema of
the file is ``features/mapping.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from features import mapping
from features.ingest import read_raw

# Column-role guesses from header names (lower case, separators removed); a person confirms them.
_ROLES = (
    ("customer_id", r"(customer|client|user|member|buyer|household|account|shopper)(id|no|number|key|code)?$|^cust"),
    ("timestamp", r"date|time|^day$|^when$|^ts$|created|purchased"),
    ("order_id", r"order|invoice|receipt|basket|transaction|txn|bill"),
    ("item_id", r"sku|stockcode|itemid|productid|article|upc|ean|^item$|^product$|productcode|itemcode"),
    ("quantity", r"qty|quantity|units|^count$|pieces"),
    ("unit_price", r"unitprice|^price$|priceeach|unitcost"),
    ("amount", r"amount|total|revenue|sales|spend|^value$|lineprice|netprice|^sum$"),
    ("event_type", r"^event|action|eventtype|^type$"),
    ("channel", r"channel|^store$|source"),
    ("customers.country", r"country|nation"),
    ("customers.gender", r"gender|^sex$"),
    ("items.name", r"description|productname|itemname|title"),
    ("items.category", r"category|subclass|class|department|dept|family"),
)
_PII = r"name|e?mail|phone|mobile|address|street|zip|postcode|postal|birth|dob|ssn|iban|ip$|comment|note|text"
_PII_NOT = r"productname|itemname|storename|^name$"  # a product's name is not a person's


def _key(column: str) -> str:
    return re.sub(r"[^a-z0-9]", "", column.lower())


def guess_roles(columns: list[str], sample) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(field -> column, pii column -> 'hash'|'drop', columns left) guessed from names and sample values."""
    roles: dict[str, str] = {}
    pii: dict[str, str] = {}
    for column in columns:
        k = _key(column)
        if re.search(_PII, k) and not re.search(_PII_NOT, k):
            pii[column] = "hash" if re.search(r"mail|phone|mobile", k) else "drop"
            continue
        for role, pattern in _ROLES:
            if role not in roles and re.search(pattern, k):
                roles[role] = column
                break
    if "timestamp" not in roles:  # a column whose values read as dates
        for column in columns:
            if column in roles.values() or column in pii:
                continue
            values = sample[column].astype(str).head(20)
            parsed = pd.to_datetime(values, format="mixed", errors="coerce")
            if values.str.contains(r"\d").all() and parsed.notna().all() and not values.str.fullmatch(r"\d+").all():
                roles["timestamp"] = column
                break
    left = [c for c in columns if c not in roles.values() and c not in pii]
    return roles, pii, left


def draft(paths: list[str | Path], out: Path | None = None) -> str:
    """A commented starting mapping for ``paths``: one source per file, column roles guessed."""
    base = Path(out).resolve().parent if out else Path.cwd()
    lines = [
        "# crmml mapping (crmml ingest --config THIS_FILE). Guessed from the files' headers and first rows:",
        "# check every line. Keys: docs/data.md ('Mapping file').",
        "sources:",
    ]
    for path in map(Path, paths):
        raw = read_raw(path)
        frame = raw.frame
        columns = [c for c in frame.columns if not c.startswith("_")]
        roles, pii, left = guess_roles(columns, frame[columns])
        if "customer_id" in roles and ("timestamp" in roles or "item_id" in roles):
            table = "events"
        elif "customer_id" in roles:
            table = "customers"
        elif "item_id" in roles:
            table = "items"
        else:
            table = "events"
        try:
            shown = str(path.resolve().relative_to(base))
        except ValueError:
            shown = str(path.resolve())
        lines += [f"  - table: {table}", f"    files: [{json_str(shown)}]"]
        if raw.notes.get("lines_read_as_cp1252"):
            lines.append("    encoding: latin-1            # some lines are not UTF-8")
        lines.append("    columns:")
        known = mapping.Source.model_construct(table=table).fields_known()
        for field_, column in roles.items():
            if table != "events" and "." in field_:
                field_ = field_.split(".", 1)[1]
            if field_ not in known:
                left.append(column)
                continue
            example = frame[column].head(3).tolist()
            lines.append(f"      {field_}: {json_str(column)}".ljust(44) + f"# e.g. {', '.join(map(str, example))[:60]}")
        if "timestamp" in roles:
            lines.append("    # date_format: '%d/%m/%Y'        # only if dates are ambiguous (default: month first)")
        if pii:
            lines.append("    pii:                             # personal data: hashed (keyed) or dropped at ingestion")
            lines += [f"      {json_str(c)}: {a}" for c, a in pii.items()]
        if table == "events":
            lines += [
                "    zero_amount: keep                # a free item is a purchase (reject: set aside)",
                "    duplicates: auto                 # auto: identical lines dropped only when orders have ids",
            ]
        if left:
            lines.append(f"    # not used: {', '.join(left)}")
    return "\n".join(lines) + "\n"


def json_str(text: str) -> str:
    """A YAML scalar that reads back as ``text`` (JSON strings are YAML)."""
    return json.dumps(text, ensure_ascii=False)
