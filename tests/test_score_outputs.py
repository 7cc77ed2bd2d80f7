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

from pipelines.score import write_outputs


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
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # a new, large batch written by another process, killed while it is writing
    script = textwrap.dedent(
        f"""
        import pathlib, sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from test_score_outputs import scores
        from pipelines.score import write_outputs
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

    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after.keys() == before.keys()
    assert pd.read_parquet(out / "scores.parquet").equals(previous)
    assert pd.read_csv(out / "scores.csv")["run"].eq("previous").all()
    assert len(pd.read_csv(out / "scores.csv")) == 1000


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
