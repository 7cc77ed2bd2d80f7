"""Hostile files (#16): every file problem is a quarantined row or a one-line error, never a traceback,
never a silent loss; a mostly rejected ingestion leaves the workspace's tables as they were."""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc

import pandas as pd
import pytest
from typer.testing import CliRunner

from features import ingest
from features.contract import SchemaError
from features.workspace import file_sha256
from pipelines.cli import app

RETAIL_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def retail_line(i: int, swapped: bool = False) -> str:
    date, price = f"2010-11-{1 + i % 28:02d} 10:{i % 60:02d}:00", f"{1 + i % 7}.55"
    if swapped:
        date, price = price, date
    return f"5{i:05d},8512{i % 9}A,HEART HOLDER,{1 + i % 5},{date},{price},{17000 + i % 50},United Kingdom"


def one_line(output: str) -> str:
    """The error line of a CLI run (the rest is the summary table)."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


# --------------------------------------------------------------------------- finding 1: one bad cell
@pytest.mark.parametrize(
    "line, reason",
    [
        ("y,2021-05-02,", "unparseable_number"),  # empty amount
        ("y,2021-05-02,twelve", "unparseable_number"),  # non-numeric amount
        ("y,2021-05-02", "short_row"),  # a short row
        ("y,12.50,2021-05-02", "unparseable_number"),  # amount and date swapped
        ("y,2021-05-02,12.5,extra", "extra_fields"),
    ],
)
def test_one_bad_transactions_cell_is_a_quarantined_row(tmp_path, line, reason):
    """#16 finding 1: these ended in `TypeError: boolean value of NA is ambiguous`."""
    path = tmp_path / "t.csv"
    path.write_text(f"c,t,a\nx,2021-05-01,10\n{line}\nz,2021-05-03,-4\n")
    result = ingest.read_transactions(path, "c", "t", amount_col="a")
    assert result.n_read == 3 and result.accepted_by_type == {"purchase": 1, "return": 1}
    assert result.rejected_by_reason == {reason: 1}
    row = result.quarantine.iloc[0]
    assert (row["source_file"], row["source_row"]) == (str(path), "3")


# --------------------------------------------------------------------------- finding 2: rejected share
@pytest.fixture
def good_workspace(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("\n".join([RETAIL_HEADER] + [retail_line(i) for i in range(972)]) + "\n")
    ws = tmp_path / "ws"
    res = CliRunner().invoke(app, ["ingest", str(good), "--workspace", str(ws)])
    assert res.exit_code == 0, res.output
    return ws


def _tables(ws) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted((ws / "data").glob("*.parquet"))}


def test_mostly_rejected_ingestion_fails_and_leaves_the_tables(tmp_path, good_workspace):
    """#16 finding 2: price and date swapped rejected 996 of 999 lines, exited 0, replaced 972 events with 3."""
    bad = tmp_path / "swapped.csv"
    lines = [retail_line(i, swapped=i >= 3) for i in range(999)]
    bad.write_text("\n".join([RETAIL_HEADER] + lines) + "\n")
    before, records = _tables(good_workspace), len(json.loads((good_workspace / "ingestions.json").read_text()))

    res = CliRunner().invoke(app, ["ingest", str(bad), "--workspace", str(good_workspace)])
    assert res.exit_code == 1
    assert one_line(res.output) == (
        f"error: {bad}: 996 of 999 rows rejected (99.7%, above the 10% limit; 996 unparseable_number); "
        "the workspace's tables are unchanged (--allow-rejects to accept them)"
    )
    assert _tables(good_workspace) == before
    assert len(pd.read_parquet(good_workspace / "data" / "events.parquet")) == 972
    assert len(json.loads((good_workspace / "ingestions.json").read_text())) == records
    kept = pd.read_parquet(good_workspace / "rejected" / "quarantine_online_retail.parquet")
    assert len(kept) == 996  # the rejected rows are kept aside for inspection

    res = CliRunner().invoke(app, ["ingest", str(bad), "--max-rejected", "1", "--workspace", str(good_workspace)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["ingest", str(bad), "--allow-rejects", "--workspace", str(good_workspace)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(good_workspace / "data" / "events.parquet")) == 3


def test_the_limit_counts_broken_rows_not_rows_set_aside_by_design(tmp_path):
    """Guest checkouts, postage and duplicates are expected (a quarter of the UCI lines); they never fail it."""
    path = tmp_path / "r.csv"
    lines = [retail_line(i) for i in range(60)]
    lines += [retail_line(i).replace(f",{17000 + i % 50},", ",,") for i in range(60, 100)]  # 40 guests
    lines += [f"5{i:05d},POST,POSTAGE,1,2010-11-01 10:00:00,18,12682,France" for i in range(100, 120)]
    lines += [retail_line(0), "599999,85123A,HEART,1,2010-11-01 10:00:00,n/a,12682,France"]  # a duplicate, a bad price
    path.write_text("\n".join([RETAIL_HEADER] + lines) + "\n")
    result = ingest.read_online_retail([path])
    assert result.n_rejected == 62
    assert ingest.rejected_share(result) == pytest.approx(1 / 122)  # only the bad price is broken
    ingest.check_rejects(result)
    with pytest.raises(ingest.RejectedShareError, match=r"^.*r\.csv: 1 of 122 rows rejected \(0\.8%, above the 0% "):
        ingest.check_rejects(result, max_rejected=0.0)


def test_an_ingestion_that_accepts_nothing_is_refused_even_with_allow_rejects(tmp_path, workspace):
    path = tmp_path / "t.csv"
    path.write_text("c,t,a\n" + "".join(f"x{i},{10 + i},2021-05-01\n" for i in range(10)))  # amount and date swapped
    result = ingest.read_transactions(path, "c", "t", amount_col="a")
    with pytest.raises(ingest.RejectedShareError) as err:
        ingest.save(workspace, result, allow_rejects=True)
    assert str(err.value) == (
        f"{path}: no row accepted, 10 of 10 rows rejected (10 unparseable_number); the workspace's tables are unchanged"
    )
    assert not workspace.has_table("events")


def test_previous_tables_are_kept_until_the_new_ones_are_complete(tmp_path, good_workspace, monkeypatch):
    """A writer that fails (or is killed) halfway through the tables leaves the previous set whole."""
    from features.workspace import Workspace

    ws = Workspace(good_workspace)
    before = _tables(good_workspace)
    path = tmp_path / "more.csv"
    path.write_text("\n".join([RETAIL_HEADER] + [retail_line(i) for i in range(5)]) + "\n")
    result = ingest.read_online_retail([path])
    written = []
    real = pd.DataFrame.to_parquet

    def failing(self, target, *args, **kwargs):
        if written:
            raise OSError("disk full")
        written.append(target)
        return real(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest.save(ws, result)
    monkeypatch.undo()
    assert written and _tables(good_workspace) == before  # the first new table was written, not published
    assert not list(ws.data_versions_dir.glob(".staging-*"))
    ingest.save(ws, result)
    assert len(ws.read_table("events")) == 5
    assert sorted(p.name for p in ws.data_versions_dir.iterdir()) == [(ws.root / "data").resolve().name]


# --------------------------------------------------------------------------- finding 5: files
def test_a_file_without_newline_is_a_quick_clear_error(tmp_path):
    """#16: 50 MB without a newline ran past 300 s at 5.3 GB; now the line length is bounded (5 MB here)."""
    path = tmp_path / "one_line.csv"
    path.write_bytes(b"customer," + b"x" * 5_000_000)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(SchemaError) as err:
        ingest.read_transactions(path, "customer", "t")
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(err.value) == (
        f"{path}: line 1 (the header) is longer than the maximum line length (1,048,576 bytes; --max-line-length)"
    )
    assert seconds < 5 and peak < 20_000_000


def test_one_huge_field_is_one_rejected_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"c,t,a\nx,2021-05-01,3\ny,2021-05-02," + b"9" * 3_000_000 + b"\nz,2021-05-02,4\n")
    result = ingest.read_transactions(path, "c", "t", amount_col="a")
    assert result.n_read == 3 and result.n_accepted == 2
    row = result.quarantine.iloc[0]
    assert (row["reason"], row["source_row"]) == ("line_too_long", "3")
    assert json.loads(row["raw"])["line"].endswith("... (3,000,014 bytes)")


def test_truncated_gzip_is_named(tmp_path):
    """#16: a truncated gzip printed only `Aborted.`."""
    text = "\n".join([RETAIL_HEADER] + [retail_line(i) for i in range(3000)]) + "\n"
    data = gzip.compress(text.encode())
    path = tmp_path / "export.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    res = CliRunner().invoke(app, ["ingest", str(path), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2
    assert one_line(res.output) == (
        f"error: {path}: truncated gzip (the file ends before its compressed data does)"
    )


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file (no lines)"), (b"\n\n  \n", "empty file (no lines)"),
     (RETAIL_HEADER.encode() + b"\n", "header only, no data rows")],
)
def test_empty_and_header_only_files_are_reported(tmp_path, content, message):
    """#16: an empty file gave a traceback (`Could not determine delimiter`)."""
    path = tmp_path / "export.csv"
    path.write_bytes(content)
    res = CliRunner().invoke(app, ["ingest", str(path), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2
    assert one_line(res.output) == f"error: {path}: {message}"


def test_latin1_file_reads_whole_detected_or_set(tmp_path):
    """#16: a latin-1 file was refused whole; it is read (detected per line, or --encoding)."""
    path = tmp_path / "t.csv"
    path.write_bytes(("c,t,a,sku\n" + "".join(f"José{i},2021-05-0{1 + i % 9},{10 + i},café\n" for i in range(20)))
                     .encode("latin-1"))
    for encoding in (None, "latin-1"):
        result = ingest.read_transactions(path, "c", "t", amount_col="a", item_col="sku", encoding=encoding)
        assert result.n_accepted == 20 and result.n_rejected == 0
        assert result.tables["events"]["customer_id"].iloc[0] == "José0"
        assert result.tables["items"]["item_id"].tolist() == ["café"]
    assert ingest.read_transactions(path, "c", "t", amount_col="a").files[0]["lines_read_as_cp1252"] == 20
    with pytest.raises(SchemaError, match=r"unknown encoding 'latin-9000' \(--encoding\)$"):
        ingest.read_transactions(path, "c", "t", encoding="latin-9000")


def test_utf8_bom_is_skipped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfc,t,a\nx,2021-05-01,3\n")
    assert ingest.read_transactions(path, "c", "t", amount_col="a").n_accepted == 1


def test_one_binary_line_is_one_quarantined_row(tmp_path):
    """#16: one binary line refused the whole file."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"c,t,a\nx,2021-05-01,3\n\x00\xff\xfe\x01\x02,\x9d\x81\nz,2021-05-02,4\n")
    result = ingest.read_transactions(path, "c", "t", amount_col="a")
    assert result.n_accepted == 2 and result.rejected_by_reason == {"undecodable_line": 1}
    assert result.quarantine["source_row"].tolist() == ["3"]


def test_an_unreadable_header_is_one_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\x00\x01\x02\n1,2\n")
    with pytest.raises(SchemaError) as err:
        ingest.read_transactions(path, "c", "t")
    assert str(err.value) == f"{path}: line 1 (the header) is not text (set --encoding)"


# --------------------------------------------------------------------------- hostile corpus, every source
HOSTILE = [  # (line, how many rows it is: 1, or 0 for a line that continues the record before it)
    ("{good}", 1),
    ("", 0),  # blank lines are not rows
    ("   ", 0),
    ("{good}\r", 1),  # CRLF
    ("{short}", 1),
    ("{good},surplus,fields", 1),
    (b"\xff\xfe\x00binary\x01\x02", 1),
    ("caf\xe9 latin-1 {good}".encode("latin-1"), 1),
    ("{good}".replace("2", "\u2462", 1), 1),  # a digit that is not ASCII
    ('"unclosed quote,{good}', 1),
    ('"a quoted field', 1),  # opens a record that the next line closes
    ('that spans lines",{rest}', 0),
    ("x" * 5_000, 1),  # longer than this test's maximum line length
    ("{good}".replace(",", ",\x00", 1), 1),  # NUL
    ("{good}".replace(",", ",\r", 1), 1),  # a stray carriage return
    ('12" PAPER FAN,{rest}', 1),  # a quote inside an unquoted field is a character
    (",,,,,,,", 1),
    ("{good}", 1),  # a duplicate
    ("{future}", 1),
    ("{negative}", 1),
    ("\U0001f600,{rest}", 1),
]


def _corpus(header: str, good: str, extra: dict) -> bytes:
    n_fields = header.count(",") + 1
    fill = {"good": good, "rest": good.split(",", 1)[1], "short": ",".join(good.split(",")[: n_fields - 2]), **extra}
    out = [header.encode()]
    for line, _ in HOSTILE:
        out.append(line.format(**fill).encode() if isinstance(line, str) else line)
    return b"\n".join(out) + b"\n"


SOURCES = {
    "online-retail": (
        RETAIL_HEADER,
        retail_line(1),
        {"future": retail_line(2).replace("2010-11-03", "2999-01-01"), "negative": retail_line(3).replace(",4,", ",-4,")},
        lambda path: ingest.read_online_retail([path], max_line_bytes=4_096),
    ),
    "transactions": (
        "customer,date,amount,sku",
        "c1,2021-05-01,10.5,A1",
        {"future": "c2,2999-01-01,3,A2", "negative": "c3,2021-05-02,-3,A2"},
        lambda path: ingest.read_transactions(path, "customer", "date", amount_col="amount", item_col="sku",
                                              max_line_bytes=4_096),
    ),
    "interactions": (
        "user,item,rating,ts",
        "u1,i1,4.5,964982703",
        {"future": "u2,i2,3,99999999999", "negative": "u3,i3,-1,964982224"},
        lambda path: ingest.read_interactions(path, "user", "item", weight_col="rating", time_col="ts",
                                              max_line_bytes=4_096),
    ),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_hostile_corpus_every_line_accounted_for(tmp_path, workspace, source):
    header, good, extra, read = SOURCES[source]
    path = tmp_path / f"{source}.csv"
    path.write_bytes(_corpus(header, good, extra))
    result = read(path)
    expected_rows = sum(rows for _, rows in HOSTILE)
    assert result.n_read == expected_rows
    assert result.n_accepted + result.n_rejected == result.n_read
    assert result.n_accepted >= 1 and result.n_rejected >= 8
    rows = pd.to_numeric(result.quarantine["source_row"])
    assert rows.between(2, len(HOSTILE) + 1).all() and rows.is_unique  # each rejected row traced to its line
    assert {"undecodable_line", "line_too_long", "unbalanced_quote", "short_row", "extra_fields"} <= set(
        result.rejected_by_reason
    )
    ingest.save(workspace, result, allow_rejects=True)
    assert workspace.ingestions()[-1]["rows_read"] == expected_rows
    for raw in result.quarantine["raw"]:
        json.loads(raw)
