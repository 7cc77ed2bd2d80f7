"""Mapping files (#18): a shop's own exports through one mapping give the canonical tables; every mapping
mistake is one line naming the file, the key and the expected form; personal data never reaches an artefact."""

from __future__ import annotations

import gzip
import zipfile

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features import contract, ingest, mapping, synthetic
from features.contract import SchemaError
from pipelines.cli import app

# Non-ASCII countries so the latin-1 customers file is not plain ASCII.
ACCENTED = ["Côte d'Ivoire", "España", "Österreich"]


def us_date(ts) -> str:
    """11/1/2000 13:05:09: month first, no zero padding (a spreadsheet's US export)."""
    return "" if pd.isna(ts) else f"{ts.month}/{ts.day}/{ts.year} {ts:%H:%M:%S}"


def shop_tables(n: int = 80, seed: int = 5) -> dict[str, pd.DataFrame]:
    tables = synthetic.generate(n_customers=n, seed=seed)
    for name in synthetic.TRUTH_TABLES:
        tables.pop(name, None)
    customers = tables["customers"].copy()
    customers.loc[customers.index[:3], "country"] = ACCENTED
    tables["customers"] = customers
    return {name: contract.conform(name, df, "synthetic") for name, df in tables.items()}


def write_exports(tables: dict[str, pd.DataFrame], folder) -> dict:
    """The synthetic shop as a shop's raw exports (own column names, encodings, layouts); its mapping."""
    ev = tables["events"]
    kind = {"purchase": "SALE", "return": "REFUND", "view": "PAGE VIEW", "cart": "ADD TO BASKET"}
    sold = ev["event_type"].isin(["purchase", "return"])
    orders = pd.DataFrame({
        "Client No": ev["customer_id"], "SKU": ev["item_id"], "Type": ev["event_type"].map(kind),
        "Order Date": ev["timestamp"].map(us_date), "Qty": ev["quantity"], "Line Total (cents)": ev["amount"] * 100,
        "Receipt": ev["order_id"], "Till": ev["channel"],
    })
    orders[sold].to_csv(folder / "orders.csv", index=False)
    web = orders[~sold].drop(columns=["Line Total (cents)", "Receipt"])
    with zipfile.ZipFile(folder / "web.zip", "w") as zf:  # a zipped tab-separated clickstream
        zf.writestr("web_export.tsv", web.to_csv(sep="\t", index=False))
    customers = tables["customers"].rename(columns={
        "customer_id": "Kundennummer", "first_seen": "Signup", "country": "Land", "gender": "Sex",
        "birth_year": "Born", "acquisition_channel": "Came from", "membership_tier": "Tier", "points": "Points"})
    customers["Signup"] = customers["Signup"].map(us_date)
    customers.to_csv(folder / "customers_latin1.csv", index=False, sep=";", encoding="latin-1")
    # a BOM and quoted header names (the grocery export of the issue)
    tables["items"].rename(columns={"item_id": "Product Code", "name": "Product", "category": "Subclass",
                                    "price": "List Price"}).to_csv(folder / "items.csv", index=False,
                                                                   encoding="utf-8-sig", quoting=1)
    with gzip.open(folder / "tickets.csv.gz", "wt") as fh:
        tables["tickets"].rename(columns=lambda c: c.upper()).to_csv(fh, index=False)
    tables["campaigns"].to_csv(folder / "campaigns.csv", index=False, date_format="%Y%m%d%H%M%S")
    return {"sources": [
        {"table": "events", "name": "shop orders", "files": ["orders.csv"],
         "columns": {"customer_id": "Client No", "item_id": "SKU", "event_type": "Type", "timestamp": "Order Date",
                     "quantity": "Qty", "amount": "Line Total (cents)", "order_id": "Receipt", "channel": "Till"},
         "recode": {"event_type": {"SALE": "purchase", "REFUND": "return"}},
         "units": {"amount": 0.01}, "duplicates": "keep"},
        {"table": "events", "name": "web", "files": ["web.zip"], "sep": "tab",
         "columns": {"customer_id": "Client No", "item_id": "SKU", "event_type": "Type", "timestamp": "Order Date",
                     "quantity": "Qty", "channel": "Till"},
         "recode": {"event_type": {"PAGE VIEW": "view", "ADD TO BASKET": "cart"}}, "duplicates": "keep"},
        {"table": "customers", "files": ["customers_latin1.csv"], "encoding": "latin-1", "sep": ";",
         "columns": {"customer_id": "Kundennummer", "first_seen": "Signup", "country": "Land", "gender": "Sex",
                     "birth_year": "Born", "acquisition_channel": "Came from", "membership_tier": "Tier",
                     "points": "Points"}},
        {"table": "items", "files": ["items.csv"],
         "columns": {"item_id": "Product Code", "name": "Product", "category": "Subclass", "price": "List Price"}},
        {"table": "tickets", "files": ["tickets.csv.gz"],
         "columns": {"customer_id": "CUSTOMER_ID", "opened_at": "OPENED_AT", "kind": "KIND",
                     "resolved_at": "RESOLVED_AT", "satisfaction": "SATISFACTION"}},
        {"table": "campaigns", "files": ["campaigns.csv"], "date_format": "%Y%m%d%H%M%S",
         "columns": {"customer_id": "customer_id", "campaign_id": "campaign_id", "sent_at": "sent_at",
                     "responded_at": "responded_at"}},
    ]}


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def test_synthetic_shop_through_raw_exports_gives_the_tables_back(tmp_path):
    tables = shop_tables()
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(write_exports(tables, tmp_path)))
    result = ingest.read_mapping(mapping.load(tmp_path / "shop.yaml"))
    assert result.n_rejected == 0, result.rejected_by_reason
    assert result.n_accepted == result.n_read == sum(len(df) for df in tables.values())
    assert set(result.tables) == set(tables)
    for name, expected in tables.items():
        got = result.tables[name]
        if name == "events":  # amounts went through cents and back
            got = got.assign(amount=got["amount"].round(6))
            expected = expected.assign(amount=expected["amount"].round(6))
        pd.testing.assert_frame_equal(canonical(got), canonical(expected), check_exact=False, rtol=1e-12,
                                      obj=name)
    assert set(ACCENTED) <= set(result.tables["customers"]["country"])


def test_bom_and_quoted_header_give_clean_names(tmp_path):
    path = tmp_path / "grocery.csv"
    path.write_bytes('\ufeff"HOUSEHOLD_KEY","DAY","AGE GROUP"\n"7","2020-01-02","45-54"\n'.encode("utf-8"))
    raw = ingest.read_raw(path)
    assert [c for c in raw.frame.columns if not c.startswith("_")] == ["HOUSEHOLD_KEY", "DAY", "AGE GROUP"]
    result = ingest.read_transactions(path, "HOUSEHOLD_KEY", "DAY")
    assert result.tables["events"]["customer_id"].tolist() == ["7"]


def test_whitespace_log_with_compact_dates_and_free_lines_keeps_every_customer(tmp_path):
    """The CDNOW layout; customer 4 bought only free items, customer 2 the same CD twice the same day."""
    path = tmp_path / "cdnow.txt"
    path.write_text("00001   19970101  1   11.77\n00002   19970112  1   12.00\n00002   19970112  1   12.00\n"
                    "00003   19970102  2   20.76\n00004   19970105  1    0.00\n00004   19970301  3    0.00\n")
    (tmp_path / "cdnow.yaml").write_text(yaml.safe_dump({"sources": [{
        "table": "events", "files": ["cdnow.txt"], "sep": "whitespace", "names": ["id", "date", "n", "usd"],
        "columns": {"customer_id": "id", "timestamp": "date", "quantity": "n", "amount": "usd"}}]}))
    result = ingest.read_mapping(mapping.load(tmp_path / "cdnow.yaml"))
    events = result.tables["events"]
    assert result.n_rejected == 0 and result.accepted_by_type == {"purchase": 6}
    assert sorted(events["customer_id"].unique()) == ["00001", "00002", "00003", "00004"]
    assert sorted(result.tables["customers"]["customer_id"]) == ["00001", "00002", "00003", "00004"]
    assert events["timestamp"].min() == pd.Timestamp("1997-01-01")
    # the mapping says this log repeats lines: the second identical line is then a duplicate
    data = yaml.safe_load((tmp_path / "cdnow.yaml").read_text())
    data["sources"][0]["duplicates"] = "drop"
    data["sources"][0]["zero_amount"] = "reject"
    dropped = ingest.read_mapping(mapping.validate(data, tmp_path / "cdnow.yaml"))
    assert dropped.rejected_by_reason == {"duplicate_line": 1, "zero_or_negative_price": 2}


def test_cli_ingest_config_and_init_config(tmp_path):
    tables = shop_tables(n=30)
    exports = tmp_path / "exports"
    exports.mkdir()
    write_exports(tables, exports)
    runner = CliRunner()
    draft = tmp_path / "draft.yaml"
    res = runner.invoke(app, ["init-config", str(exports / "orders.csv"), str(exports / "items.csv"), "-o", str(draft)])
    assert res.exit_code == 0, res.output
    text = draft.read_text()
    data = yaml.safe_load(text)  # comments and all, it is a valid mapping
    guessed = mapping.validate(data, draft)
    orders, items = guessed.sources
    assert (orders.table, items.table) == ("events", "items")
    assert orders.columns["customer_id"] == "Client No" and orders.columns["item_id"] == "SKU"
    assert orders.columns["timestamp"] == "Order Date" and orders.columns["order_id"] == "Receipt"
    assert items.columns["category"] == "Subclass" and "# e.g." in text
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(write_exports(tables, tmp_path)))
    res = runner.invoke(app, ["ingest", "--config", str(tmp_path / "shop.yaml"), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    assert "accepted: ticket" in res.output and "accepted: customer" in res.output
    from features.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    assert len(ws.read_table("tickets")) == len(tables["tickets"])
    assert ws.read_table("quarantine_shop").empty


BASE = {"table": "events", "files": ["log.csv"], "columns": {"customer_id": "c", "timestamp": "t"}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colums": {}}, "sources[0].colums (log.csv): unknown key 'colums'"),
        ({"table": "orders"}, "sources[0].table (log.csv): 'orders' is not allowed; expected 'events', "),
        ({"columns": {"customer": "c", "timestamp": "t"}},
         "sources[0] (log.csv): columns.customer: unknown field 'customer' for table events; expected one of "
         "customer_id, item_id,"),
        ({"columns": {"timestamp": "t"}},
         "sources[0] (log.csv): columns: table events needs customer_id; expected e.g. "
         "columns: {customer_id: <column of the file>}"),
        ({"recode": {"event_type": {"BUY": "bought"}}},
         "sources[0] (log.csv): recode.event_type: 'bought' is not one of view, cart, purchase, return"),
        ({"sep": "::"}, "sources[0].sep (log.csv): expected one character (',', ';', '|'), 'tab' or 'whitespace'"),
        ({"encoding": "latin-9000"},
         "sources[0].encoding (log.csv): unknown encoding 'latin-9000'; expected a Python codec such as utf-8"),
        ({"zero_amount": "drop"}, "sources[0].zero_amount (log.csv): 'drop' is not allowed; expected 'keep' or 'reject'"),
        ({"pii": {"email": "encrypt"}}, "sources[0].pii.email (log.csv): 'encrypt' is not allowed; expected 'hash' or 'drop'"),
        ({"files": []}, "sources[0].files: expected at least 1 item"),
        ({"optional": ["item_id"]}, "sources[0] (log.csv): optional.item_id: 'item_id' is not a key of columns"),
        ({"units": {"amount": "cents"}}, "sources[0].units.amount (log.csv): expected a valid number"),
    ],
)
def test_each_mapping_mistake_is_one_line_naming_file_key_and_form(tmp_path, change, message):
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({"sources": [{**BASE, **change}]}))
    with pytest.raises(SchemaError) as err:
        mapping.load(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_file_level_mapping_mistakes(tmp_path):
    path = tmp_path / "shop.yaml"
    (tmp_path / "log.csv").write_text("cust,when\n1,2020-01-01\n")
    path.write_text(yaml.safe_dump({"sources": [BASE]}))
    with pytest.raises(SchemaError) as err:
        ingest.read_mapping(mapping.load(path))
    assert str(err.value) == (f"{tmp_path / 'log.csv'}: column 'c' given by {path}: sources[0].columns.customer_id "
                              "not found; found 'cust', 'when'")
    path.write_text(yaml.safe_dump({"sources": [{**BASE, "files": ["nothing*.csv"]}]}))
    with pytest.raises(SchemaError, match=r"sources\[0\]\.files: no file matches nothing\*\.csv$"):
        ingest.read_mapping(mapping.load(path))
    path.write_text("sources: [table: events\n")
    with pytest.raises(SchemaError, match=rf"^{path}: not valid YAML \("):
        mapping.load(path)
    path.write_text("- just a list\n")
    with pytest.raises(SchemaError, match=rf"^{path}: expected a mapping with a 'sources' list, got list$"):
        mapping.load(path)
    assert "\n" not in str(err.value)


def test_pii_hash_needs_a_key_outside_the_workspace(tmp_path, monkeypatch):
    (tmp_path / "log.csv").write_text("c,t,email\n1,2020-01-01,a@example.com\n")
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump({"sources": [{**BASE, "pii": {"email": "hash"}}]}))
    monkeypatch.delenv(mapping.PII_KEY_ENV, raising=False)
    monkeypatch.delenv(mapping.PII_KEY_FILE_ENV, raising=False)
    with pytest.raises(SchemaError, match=r"column 'email' is marked pii: hash, but no key is set"):
        ingest.read_mapping(mapping.load(path))
    ws = tmp_path / "ws"
    (ws).mkdir()
    (ws / "key").write_text("secret")
    monkeypatch.setenv(mapping.PII_KEY_FILE_ENV, str(ws / "key"))
    with pytest.raises(SchemaError, match=r"the PII key file must be outside the workspace"):
        mapping.pii_key(ws)


def test_recommender_returns_ids_in_the_type_it_was_given():
    from training.recommender import Recommender

    inter = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3, 4], "item_id": [10, 11, 10, 12, 11, 12, 10]})
    rec = Recommender(generators=("popular", "cooc"), use_ranker=False, show_progress=False).fit(inter)
    out = rec.recommend([1, 4], k=2)
    assert set(out["user_id"]) == {1, 4} and all(isinstance(u, int) for u in out["user_id"])
    assert all(isinstance(i, int) for i in out["item_id"]) and set(out["item_id"]) <= {10, 11, 12}
    as_text = Recommender(generators=("popular",), use_ranker=False, show_progress=False).fit(inter.astype(str))
    assert all(isinstance(i, str) for i in as_text.recommend(["1"], k=2)["item_id"])


def test_customer_groups_and_item_categories_of_the_shop_feed_cold_start(tmp_path):
    """A grocery export: households with a region, products with a subclass. A household with no purchase
    yet gets what sells in its region; a product nobody bought is reachable through its subclass."""
    from features.workspace import Workspace
    from training.recommender import Recommender
    from training.recommender_inputs import load_inputs

    lines = ["household_key,BASKET_ID,DAY,PRODUCT_ID,QUANTITY,SALES_VALUE"]
    north, south = ["1", "2", "3"], ["4", "5", "6"]
    for i, h in enumerate(north + south):
        for d in range(1, 4):
            product = "900" if h in north else "800"  # each region has its best seller
            lines.append(f"{h},{i}{d},2020-01-0{d},{product},1,2.50")
            lines.append(f"{h},{i}{d},2020-01-0{d},{100 + i},1,1.00")
    (tmp_path / "transactions.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "hh_demographic.csv").write_bytes(
        '\ufeff"household_key","AGE_DESC","REGION"\n'.encode() + "".join(
            f'"{h}","45-54","{"North" if h in north + ["7"] else "South"}"\n' for h in north + south + ["7"]).encode())
    (tmp_path / "product.csv").write_text(
        "PRODUCT_ID,SUB_COMMODITY_DESC\n900,TEA\n800,COFFEE\n555,TEA\n" + "".join(f"{100 + i},SNACK\n" for i in range(6)))
    config = {"sources": [
        {"table": "events", "files": ["transactions.csv"],
         "columns": {"customer_id": "household_key", "order_id": "BASKET_ID", "timestamp": "DAY",
                     "item_id": "PRODUCT_ID", "quantity": "QUANTITY", "amount": "SALES_VALUE"}},
        {"table": "customers", "files": ["hh_demographic.csv"],
         "columns": {"customer_id": "household_key", "segment": "REGION"}},
        {"table": "items", "files": ["product.csv"], "columns": {"item_id": "PRODUCT_ID", "category": "SUB_COMMODITY_DESC"}},
    ]}
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(config))
    ws = Workspace(tmp_path / "ws")
    ingest.save(ws, ingest.read_mapping(mapping.load(tmp_path / "shop.yaml")))
    customers = ws.read_table("customers").set_index("customer_id")
    assert customers.loc["7", "segment"] == "North" and customers.loc["4", "segment"] == "South"
    assert ws.read_table("items").set_index("item_id").loc["555", "category"] == "TEA"
    interactions, items, users = load_inputs(ws)
    rec = Recommender(generators=("popular",), use_ranker=False, show_progress=False).fit(
        interactions, items=items, users=users)
    first = rec.recommend_one("7", k=1)[0]  # household 7: in the customer file, no purchase yet
    assert (first["item_id"], first["source"]) == ("900", "popular_segment")
    similar = rec.recommend_for_items(["555"], k=3)  # nobody bought 555: its subclass answers
    assert "900" in similar["item_id"].tolist()


def test_run_ingests_through_a_mapping_file_and_sees_it_change(tmp_path):
    """`crmml run --config`: the ingest step reads the mapping's files, and re-runs when one of them changes."""
    from features.workspace import Workspace
    from pipelines import flow

    tables = shop_tables()
    cfg = tmp_path / "shop.yaml"
    cfg.write_text(yaml.safe_dump(write_exports(tables, tmp_path)))
    ws = Workspace(tmp_path / "ws")
    ctx = {"workspace": ws, "params": flow.RunParams(config=str(cfg))}
    before = flow.ingest_inputs(ctx)
    assert before["source"] == "config" and len(before["files"]) >= 3
    done = flow.run_ingest(ctx)
    assert done["source"] == "config" and done["customers"] == tables["events"]["customer_id"].nunique()
    assert len(ws.read_table("tickets")) == len(tables["tickets"])
    first = next(f for f in before["files"])
    with open(first["path"], "a") as fh:  # a shop's export grows: the step's inputs change
        fh.write("\n")
    assert flow.ingest_inputs(ctx)["files"] != before["files"]
    res = CliRunner().invoke(app, ["run", "--config", str(cfg), "--source", "online-retail", "--workspace",
                                   str(tmp_path / "ws2")])
    assert res.exit_code == 2 and "drop --source and FILES" in res.output
