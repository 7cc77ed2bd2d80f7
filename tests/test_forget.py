"""Personal data (#18): fields marked pii never reach an artefact; `crmml forget` leaves nothing of a customer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features import forget, ingest, mapping
from features.workspace import Workspace
from pipelines.cli import app
from tests.test_mapping import shop_tables, us_date


def write_personal_exports(folder: Path, n: int = 150) -> tuple[dict, list[str], list[str]]:
    """Orders and customers keyed by e-mail (hashed), with full names (dropped); the mapping, e-mails, names."""
    tables = shop_tables(n=n, seed=11)
    customers = tables["customers"]
    email = {c: f"person.{c.lower()}@mail.example" for c in customers["customer_id"]}
    name = {c: f"Zelda Quux{c[1:]}" for c in customers["customer_id"]}
    ev = tables["events"]
    ev = ev[ev["event_type"].isin(["purchase", "return"])]
    pd.DataFrame({
        "E-mail": ev["customer_id"].map(email), "SKU": ev["item_id"], "When": ev["timestamp"].map(us_date),
        "Qty": ev["quantity"], "Total": ev["amount"].where(ev["event_type"] == "purchase", -ev["amount"]),
        "Order": ev["order_id"],
    }).to_csv(folder / "orders.csv", index=False)
    pd.DataFrame({"E-mail": customers["customer_id"].map(email), "Full Name": customers["customer_id"].map(name),
                  "Country": customers["country"], "Signup": customers["first_seen"].map(us_date)}).to_csv(
        folder / "customers.csv", index=False)
    config = {"sources": [
        {"table": "events", "files": ["orders.csv"], "pii": {"E-mail": "hash"},
         "columns": {"customer_id": "E-mail", "item_id": "SKU", "timestamp": "When", "quantity": "Qty",
                     "amount": "Total", "order_id": "Order"}},
        {"table": "customers", "files": ["customers.csv"], "pii": {"E-mail": "hash", "Full Name": "drop"},
         "columns": {"customer_id": "E-mail", "country": "Country", "first_seen": "Signup"}},
    ]}
    (folder / "shop.yaml").write_text(yaml.safe_dump(config))
    return config, sorted(email.values()), sorted(name.values())


@pytest.fixture
def pii_key(tmp_path, monkeypatch):
    key = tmp_path / "secrets" / "pii.key"  # outside the workspace
    key.parent.mkdir()
    key.write_text("a key kept by the shop, not in the workspace")
    monkeypatch.delenv(mapping.PII_KEY_ENV, raising=False)
    monkeypatch.setenv(mapping.PII_KEY_FILE_ENV, str(key))
    return key


def every_file(root: Path):
    return [p for p in root.rglob("*") if p.is_file()]


def shop_workspace(tmp_path, n: int, *commands: list[str]) -> tuple[Path, list[str], list[str], list[str]]:
    """The personal exports ingested through their mapping, then ``commands``: (workspace, e-mails, names, outputs)."""
    exports = tmp_path / "exports"
    exports.mkdir()
    _, emails, names = write_personal_exports(exports, n=n)
    ws = tmp_path / "ws"
    outputs = []
    for args in (["ingest", "--config", str(exports / "shop.yaml")], *commands):
        res = CliRunner().invoke(app, [*args, "--workspace", str(ws)])
        assert res.exit_code == 0, res.output
        outputs.append(res.output)
    return ws, emails, names, outputs


def test_personal_data_never_reaches_an_artefact(tmp_path, pii_key):
    ws, emails, names, outputs = shop_workspace(
        tmp_path, 90, ["features"], ["train", "churn", "--no-backtest", "--step-days", "120"])
    files = every_file(ws)
    assert any(p.name == "mlflow.db" for p in files) and any("mlartifacts" in p.parts for p in files)
    # whole values only: MLflow also logs the uncommitted code diff, which may hold this file's templates
    needles = [e.encode() for e in emails] + [n.encode() for n in names]
    for path in files:
        data = path.read_bytes()
        leaked = [n for n in needles if n in data]
        assert not leaked, f"{path} holds {leaked[0]!r}"
    for out in outputs:
        assert not any(e in out for e in emails) and not any(n in out for n in names)
    events = Workspace(ws).read_table("events")
    key = mapping.pii_key(ws)
    assert set(events["customer_id"]) <= {mapping.pseudonym(e, key) for e in emails}
    customers = Workspace(ws).read_table("customers")
    assert customers["country"].notna().all()  # the rest of the customer file is there


def test_forget_leaves_nothing_of_the_customers(tmp_path, pii_key):
    ws_root, emails, _, _ = shop_workspace(tmp_path, 80, ["features"])
    exports = tmp_path / "exports"
    runner = CliRunner()
    ws = Workspace(ws_root)
    key = mapping.pii_key(ws_root)
    events = ws.read_table("events")
    gone_emails = emails[:2]
    gone = [mapping.pseudonym(e, key) for e in gone_emails]
    n_rows = int(events["customer_id"].isin(gone).sum())
    assert n_rows > 0
    res = runner.invoke(app, ["forget", *gone_emails, "--workspace", str(ws_root)])
    assert res.exit_code == 0, res.output
    assert "forgot 2 customer(s)" in res.output and "data/events.parquet" in res.output
    # nothing of them in any file of the workspace (tables, old data versions, features, quarantine)
    for path in every_file(ws_root):
        data = path.read_bytes()
        for pseudo, email in zip(gone, gone_emails):
            if path.suffix == ".parquet":
                assert pseudo.encode() not in data, f"{path} still holds a forgotten customer"
            if path.name != "ingestions.json":
                assert email.encode() not in data
    assert not ws.read_table("events")["customer_id"].isin(gone).any()
    # the audit: when, who, rows per file; tokens, not the ids
    audit = [json.loads(line) for line in forget.audit_path(ws).read_text().splitlines()]
    assert audit[-1]["customers"] == 2 and audit[-1]["rows_removed"]["data/events.parquet"] == n_rows
    assert not any(e in json.dumps(audit) for e in gone_emails)
    # a later ingestion of the same files drops them, counted as forgotten (kept nowhere)
    res = runner.invoke(app, ["ingest", "--config", str(exports / "shop.yaml"), "--workspace", str(ws_root)])
    assert res.exit_code == 0, res.output
    assert "rejected: forgotten" in res.output
    assert not ws.read_table("events")["customer_id"].isin(gone).any()
    assert not ws.read_table("customers")["customer_id"].isin(gone).any()
    q = ws.read_table("quarantine_shop")
    assert (q.loc[q["reason"] == "forgotten", "raw"] == "{}").all()


def test_forget_without_pii_ids_in_clear(tmp_path, monkeypatch):
    """A plain purchase log: forget by id, the quarantine's raw lines of the customer go too."""
    monkeypatch.delenv(mapping.PII_KEY_ENV, raising=False)
    monkeypatch.delenv(mapping.PII_KEY_FILE_ENV, raising=False)
    path = tmp_path / "log.csv"
    path.write_text("c,t,a\n41,2021-05-01,10\n41,2021-05-02,oops\n42,2021-05-03,5\n")
    ws = Workspace(tmp_path / "ws")
    ingest.save(ws, ingest.read_transactions(path, "c", "t", amount_col="a"), allow_rejects=True)
    assert len(ws.read_table("quarantine_transactions")) == 1
    record = forget.forget(ws, ["41"])
    assert record["rows_removed"] == {"data/customers.parquet": 1, "data/events.parquet": 1,
                                      "data/quarantine_transactions.parquet": 1}
    assert ws.read_table("events")["customer_id"].tolist() == ["42"]
    again = ingest.read_transactions(path, "c", "t", amount_col="a", forget=forget.forgotten_tokens(ws))
    assert again.rejected_by_reason == {"forgotten": 2} and again.n_accepted == 1


def test_forget_blanks_the_event_log_in_place(tmp_path):
    """Events sent to POST /events are erased too, without moving any other line (readers keep byte offsets)."""
    from features.event_log import EventLog, Tail, log_path

    ws = Workspace(tmp_path / "ws")  # creates the folder
    log = EventLog(ws)
    rows = [{"event_id": f"e{i}", "customer_id": cid, "event_type": "purchase", "item_id": "I1",
             "timestamp": "2026-01-02T03:04:05", "quantity": 1, "amount": 9.5}
            for i, cid in enumerate(["GONE-1", "KEEP-2", "GONE-1", "KEEP-3"])]
    log.append(rows, Tail())
    before = log_path(ws).read_bytes()
    record = forget.forget(ws, ["GONE-1"])
    after = log_path(ws).read_bytes()
    assert len(after) == len(before) and b"GONE-1" not in after
    assert record["rows_removed"] == {"events_log/events.jsonl": 2}
    events, offset, bad = log.read_from(0)
    assert [e["customer_id"] for e in events] == ["KEEP-2", "KEEP-3"] and offset == len(after) and bad == 0
