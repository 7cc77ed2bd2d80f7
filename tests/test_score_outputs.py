"""Batch score outputs: atomic files (a killed writer leaves the previous output intact) and SQL tables."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import sqlalchemy as sa

from pipelines.score import check_outputs, write_outputs


def scores(n: int, tag: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "churn_probability": [(i % 100) / 100 for i in range(n)],
            "risk_tier": ["high" if i % 3 == 0 else "low" for i in range(n)],
            "reasons": ['[{"feature": "recency_days", "sentence": "no purchase for 120 days"}]'] * n,
            "recommendations": ['["85123A", "22423"]'] * n,
            "run": tag,
        }
    )


def test_killing_a_batch_score_halfway_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "outputs"
    previous = scores(1000, "previous")
    write_outputs(previous, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}  # the files, not the runs/ folder

    # a new, large batch written by another process, killed while it is writing
    script = textwrap.dedent(
        f"""
        import pathlib, sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from test_score_outputs import scores
        from pipelines.score import check_outputs, write_outputs
        write_outputs(scores(3_000_000, "new"), pathlib.Path({str(out)!r}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name.startswith(".scores.") for p in out.iterdir()):
        time.sleep(0.05)
    assert any(p.name.startswith(".scores.") for p in out.iterdir()), "the writer never started writing"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".") and p.is_file()}
    assert after.keys() == before.keys()
    assert pd.read_parquet(out / "scores.parquet").equals(previous)
    assert pd.read_csv(out / "scores.csv")["run"].eq("previous").all()
    assert len(pd.read_csv(out / "scores.csv")) == 1000


# A writer that kills itself right after its n-th rename: every moment a kill can leave something behind.
KILLED_AFTER_RENAME = textwrap.dedent(
    """
    import os, pathlib, signal, sys
    sys.path.insert(0, {tests!r})
    from test_score_outputs import scores
    from pipelines.score import write_outputs
    rename, done = os.replace, []
    def replace(*args, **kwargs):
        rename(*args, **kwargs)
        done.append(args)
        if len(done) == {n}:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    write_outputs(scores(50, "run{n}"), pathlib.Path({out!r}))
    """
)


def test_a_writer_killed_after_any_rename_leaves_both_files_of_one_run(tmp_path):
    """#16: a kill right after the Parquet rename left scores.parquet and scores.csv from different runs."""
    out = tmp_path / "outputs"
    write_outputs(scores(20, "run0"), out)
    for n in range(1, 6):
        script = KILLED_AFTER_RENAME.format(tests=str(pathlib.Path(__file__).parent), n=n, out=str(out))
        subprocess.run([sys.executable, "-c", script], check=False)
        parquet_run = pd.read_parquet(out / "scores.parquet", columns=["run"])["run"].unique().tolist()
        csv_run = pd.read_csv(out / "scores.csv", usecols=["run"])["run"].unique().tolist()
        assert len(parquet_run) == 1 and parquet_run == csv_run, (n, parquet_run, csv_run)
        check_outputs(out)  # both files are the ones the run's manifest names, hashes included


def test_the_next_run_cleans_what_a_killed_one_left(tmp_path):
    """#16: a kill at the temporary file left a 0-byte .scores.parquet.* that later runs never cleaned."""
    out = tmp_path / "outputs"
    out.mkdir()
    (out / ".scores.parquet.k1ll3d").write_bytes(b"")  # the old writer's temporary file
    (out / ".scores.abc123").mkdir()  # a run folder being written when its writer died
    (out / ".scores.abc123" / "scores.parquet").write_bytes(b"PAR1")
    first = write_outputs(scores(10, "first"), out)
    second = write_outputs(scores(7, "second"), out)
    assert sorted(p.name for p in out.iterdir()) == ["runs", "scores.csv", "scores.parquet"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(["current", second["run"]])  # older pruned
    assert first["run"] != second["run"]
    manifest = check_outputs(out)
    assert manifest["run"] == second["run"] and manifest["rows"] == 7
    assert set(manifest["files"]) == {"scores.parquet", "scores.csv"}


def test_old_plain_files_are_replaced_by_the_published_run(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    scores(3, "old").to_parquet(out / "scores.parquet", index=False)
    scores(3, "old").to_csv(out / "scores.csv", index=False)
    write_outputs(scores(5, "new"), out)
    assert pd.read_parquet(out / "scores.parquet")["run"].eq("new").all()
    assert len(pd.read_csv(out / "scores.csv")) == 5


def test_a_hand_edited_file_fails_the_manifest_check(tmp_path):
    out = tmp_path / "outputs"
    write_outputs(scores(5, "new"), out)
    (out / "runs" / "current" / "scores.csv").write_text("customer_id\nc0\n")
    try:
        check_outputs(out)
    except ValueError as exc:
        assert str(exc).startswith(f"{out / 'scores.csv'}: does not match run ")
    else:
        raise AssertionError("a changed scores.csv passed the manifest check")


def test_scores_table_is_replaced_whole(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    write_outputs(scores(10, "first"), tmp_path / "out", db_url=url)
    summary = write_outputs(scores(7, "second"), tmp_path / "out", db_url=url)
    assert summary["table"].startswith("crmml_scores @ sqlite:///")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        table = pd.read_sql("SELECT * FROM crmml_scores", conn)
        tables = set(sa.inspect(conn).get_table_names())
    assert len(table) == 7 and table["run"].eq("second").all()
    assert tables == {"crmml_scores"}  # no staging table left behind
