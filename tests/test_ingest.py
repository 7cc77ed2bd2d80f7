"""Ingestion: every row accepted or quarantined with its reason; schema errors name file and column."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
from typer.testing import CliRunner

from features import ingest
from features.contract import SchemaError
from pipelines.cli import app

HEADER_II = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
HEADER_OLD = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def retail_files(tmp_path):
    """Two files in both column namings, overlapping on one line, with one line for each reason."""
    first = write(
        tmp_path,
        "ii.csv",
        HEADER_II
        + """\
        500001,85123A,HEART HOLDER,6,2010-11-30 10:00:00,2.55,17850,United Kingdom
        500001,71053,WHITE LANTERN,6,2010-11-30 10:00:00,3.39,17850,United Kingdom
        500001,71053,WHITE LANTERN,6,2010-11-30 10:00:00,3.39,17850,United Kingdom
        500002,84406B,CREAM CUPID,8,2010-11-30 11:00:00,2.75,,United Kingdom
        500003,POST,POSTAGE,1,2010-11-30 12:00:00,18.00,12682,France
        A500004,B,Adjust bad debt,1,2010-11-30 12:30:00,11062.06,,United Kingdom
        500005,22633,HAND WARMER,6,2010-11-30 13:00:00,0.00,13047,United Kingdom
        500006,22632,HAND WARMER RED,6,not a date,1.85,13047,United Kingdom
        500007,22632,HAND WARMER RED,six,2010-11-30 14:00:00,1.85,13047,United Kingdom
        500008,22632,HAND WARMER RED,6,2999-01-01 14:00:00,1.85,13047,United Kingdom
        500009,22632,HAND WARMER RED,-3,2010-11-30 15:00:00,1.85,13047,United Kingdom
        C500010,85123A,HEART HOLDER,-2,2010-12-01 09:00:00,2.55,17850,United Kingdom
        """,
    )
    second = write(
        tmp_path,
        "old.csv",
        HEADER_OLD
        + """\
        C500010,85123A,HEART HOLDER,-2,2010-12-01 09:00:00,2.55,17850,United Kingdom
        536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom
        """,
    )
    return first, second


def test_online_retail_accounts_for_every_line(retail_files):
    result = ingest.read_online_retail(list(retail_files))
    assert result.n_read == 14
    assert result.n_accepted + result.n_rejected == result.n_read
    assert result.accepted_by_type == {"purchase": 4, "return": 1}  # the 0.00 hand warmer is a free item
    assert result.rejected_by_reason == {
        "overlap_duplicate": 1,
        "duplicate_line": 1,
        "missing_customer_id": 1,
        "non_product": 1,
        "adjustment": 1,
        "unparseable_timestamp": 1,
        "unparseable_number": 1,
        "timestamp_in_future": 1,
        "non_positive_quantity": 1,
    }
    events = result.tables["events"]
    ret = events[events["event_type"] == "return"].iloc[0]
    assert (ret["customer_id"], ret["item_id"], ret["quantity"], ret["order_id"]) == ("17850", "85123A", 2.0, "C500010")
    assert ret["amount"] == pytest.approx(5.10)
    assert result.facts["customers_identified"] == 3  # 17850, 12682 (postage only), 13047 (a free item)
    assert set(result.tables["customers"]["customer_id"]) == {"17850", "13047"}
    items = result.tables["items"].set_index("item_id")
    assert items.loc["85123A", "category"] == "HOLDER"


def test_quarantine_keeps_the_raw_line_and_where_it_came_from(retail_files):
    result = ingest.read_online_retail(list(retail_files))
    q = result.quarantine.set_index("reason")
    guest = q.loc["missing_customer_id"]
    assert guest["source_file"].endswith("ii.csv") and guest["source_row"] == "5"
    assert json.loads(guest["raw"])["StockCode"] == "84406B"
    overlap = q.loc["overlap_duplicate"]
    assert overlap["source_file"].endswith("old.csv") and overlap["source_row"] == "2"


def test_saved_ingestion_records_lineage(retail_files, workspace):
    result = ingest.read_online_retail(list(retail_files))
    record = ingest.save(workspace, result, allow_rejects=True)  # one broken line per reason, on purpose
    assert workspace.read_table("events").shape[0] == 5
    assert workspace.read_table("quarantine_online_retail").shape[0] == 9
    assert [len(f["sha256"]) for f in record["files"]] == [64, 64]
    assert workspace.ingestions()[-1]["rows_read"] == 14


def test_missing_required_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "bad.csv", "Invoice,StockCode,Quantity,InvoiceDate,Price,Country\n1,2,3,2010-01-01,1.0,UK\n")
    with pytest.raises(SchemaError) as err:
        ingest.read_online_retail([path])
    assert str(err.value) == (
        f"{path}: missing required column(s) 'Customer ID'; "
        "found 'Invoice', 'StockCode', 'Quantity', 'InvoiceDate', 'Price', 'Country'"
    )


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(SchemaError) as err:
        ingest.read_online_retail([missing])
    assert str(err.value) == f"{missing}: file not found"
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x00\x01 not gzip at all")
    with pytest.raises(SchemaError, match=rf"^{garbage}: cannot read file \(BadGzipFile"):
        ingest.read_online_retail([garbage])


def test_transactions_column_option_that_does_not_exist(tmp_path):
    path = write(tmp_path, "log.csv", "cust,day,value\n1,2020-01-01,3.5\n")
    with pytest.raises(SchemaError) as err:
        ingest.read_transactions(path, customer_col="customer", time_col="day")
    assert str(err.value) == f"{path}: column 'customer' given by --customer-col not found; found 'cust', 'day', 'value'"


def test_whitespace_purchase_log_with_compact_dates(tmp_path):
    """The CDNOW layout: customer, yyyymmdd date, quantity, amount; no header, runs of spaces."""
    path = write(
        tmp_path,
        "cdnow.txt",
        """\
        00001   19970101  1   11.77
        00002   19970112  1   12.00
        00002   19970112  5   77.00
        00003   19970102  2   20.76
        00003   19970330  2   20.76
        00003   19970330  2   20.76
        00004   1997013x  1    9.99
        00005   19970105  1    0.00
        """,
    )
    result = ingest.read_transactions(
        path, "customer", "date", amount_col="amount", quantity_col="quantity",
        sep="whitespace", names=["customer", "date", "quantity", "amount"],
    )
    assert result.n_read == 8
    # a log without order ids: the repeated line is a second purchase, the $0 line a free item (customer kept)
    assert result.accepted_by_type == {"purchase": 7}
    assert result.rejected_by_reason == {"unparseable_timestamp": 1}
    assert set(result.tables["customers"]["customer_id"]) == {"00001", "00002", "00003", "00005"}
    events = result.tables["events"]
    assert events["timestamp"].min() == pd.Timestamp("1997-01-01")
    assert events["customer_id"].tolist()[:2] == ["00001", "00002"]
    # no order ids in the log: one order per customer and moment
    assert events.loc[events["customer_id"] == "00002", "order_id"].nunique() == 1
    assert "items" not in result.tables


def test_transactions_negative_amount_is_a_return(tmp_path):
    path = write(tmp_path, "t.tsv", "c\tt\ta\tsku\nx\t2021-05-01\t10\tA\nx\t2021-05-03\t-10\tA\n")
    result = ingest.read_transactions(path, "c", "t", amount_col="a", item_col="sku", sep="\t")
    assert result.accepted_by_type == {"purchase": 1, "return": 1}
    assert result.tables["items"]["item_id"].tolist() == ["A"]


def test_interactions_with_unix_times_and_ratings(tmp_path):
    path = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,11,x,964982224\n,12,3,964982224\n")
    result = ingest.read_interactions(path, "userId", "movieId", weight_col="rating", time_col="timestamp")
    assert result.rejected_by_reason == {"unparseable_number": 1, "missing_customer_id": 1}
    row = result.tables["interactions"].iloc[0]
    assert (row["customer_id"], row["item_id"], row["weight"]) == ("1", "10", 4.0)
    assert row["timestamp"] == pd.Timestamp("2000-07-30 18:45:03")


def test_xlsx_with_several_sheets(tmp_path):
    path = tmp_path / "retail.xlsx"
    cols = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
    a = pd.DataFrame([["1", "10001", "A MUG", "2", "2010-01-01 10:00:00", "1.5", "12345", "UK"]], columns=cols)
    b = pd.DataFrame([["2", "10002", "B MUG", "1", "2010-02-01 10:00:00", "2.5", "", "UK"]], columns=cols)
    with pd.ExcelWriter(path) as writer:
        a.to_excel(writer, sheet_name="Year 2009-2010", index=False)
        b.to_excel(writer, sheet_name="Year 2010-2011", index=False)
    result = ingest.read_online_retail([path])
    assert result.n_read == 2 and result.accepted_by_type == {"purchase": 1}
    assert result.quarantine["source_row"].tolist() == ["Year 2010-2011!2"]


def test_cli_ingest_prints_summary_and_schema_errors(tmp_path, retail_files):
    runner = CliRunner()
    ws = tmp_path / "ws"
    res = runner.invoke(app, ["ingest", "--source", "online-retail", *map(str, retail_files), "--workspace", str(ws),
                              "--allow-rejects"])  # one broken line per reason, on purpose
    assert res.exit_code == 0, res.output
    assert "accepted + rejected" in res.output and "rejected: overlap_duplicate" in res.output
    bad = write(tmp_path, "bad.csv", "a,b\n1,2\n")
    res = runner.invoke(app, ["ingest", "--source", "transactions", str(bad), "--customer-col", "a", "--time-col", "t", "--workspace", str(ws)])
    assert res.exit_code == 2
    assert "column 't' given by --time-col not found" in res.output
    res = runner.invoke(app, ["ingest", "--source", "transactions", str(bad), "--workspace", str(ws)])
    assert res.exit_code == 2 and "needs --customer-col, --time-col" in res.output


@pytest.mark.realdata
def test_real_online_retail_files(real_workspace):
    record = real_workspace.ingestions()[-1]
    assert record["rows_read"] == 1_067_370
    assert record["rejected_by_reason"]["overlap_duplicate"] == 22_523
    assert record["rows_read"] - record["rejected_by_reason"]["overlap_duplicate"] == 1_044_847
    assert record["rows_accepted"] + record["rows_rejected"] == record["rows_read"]
    assert record["customers_identified"] == 5_942
    assert record["customers_with_purchase"] == 5_878
    events = real_workspace.read_table("events")
    assert events["timestamp"].min() == pd.Timestamp("2009-12-01 07:45:00")
    assert events["timestamp"].max() == pd.Timestamp("2011-12-09 12:50:00")
