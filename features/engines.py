"""Engine helpers: one Ibis definition, two engines (DuckDB embedded, PySpark for large data).

``connect(engine)`` returns an Ibis backend; ``load_tables(con, source)`` gives Ibis tables of the
canonical tables of a workspace (read straight from its Parquet files) or of a dict of DataFrames.
A Spark session is created once per process (local mode, UTC, no UI) and reused.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from pathlib import Path

import ibis
import pandas as pd

from features.contract import TABLES, conform
from features.workspace import Workspace

ENGINES = ("duckdb", "spark")
CANONICAL = ("events", "customers", "items", "tickets", "campaigns")

_spark_lock = threading.Lock()
_spark_session = None
_spark_tmp: tempfile.TemporaryDirectory | None = None


def spark_session(cores: int | str = 2, memory: str = "4g"):
    """The process's local SparkSession (created on first use; settings suited to tests and laptops)."""
    global _spark_session
    with _spark_lock:
        if _spark_session is not None:
            return _spark_session
        from pyspark.sql import SparkSession

        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        builder = (
            SparkSession.builder.master(f"local[{cores}]")
            .appName("crmml-features")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.warehouse.dir", str(_spark_tmpdir() / "warehouse"))
            .config("spark.driver.memory", memory)
            .config("spark.sql.shuffle.partitions", str(cores))  # local mode: one partition per core
            .config("spark.sql.adaptive.enabled", "true")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        )
        _spark_session = builder.getOrCreate()
        _spark_session.sparkContext.setLogLevel("ERROR")
        return _spark_session


def stop_spark() -> None:
    global _spark_session
    with _spark_lock:
        if _spark_session is not None:
            _spark_session.stop()
            _spark_session = None


def connect(engine: str = "duckdb", threads: int | None = None):
    """An Ibis backend for ``engine`` ("duckdb" or "spark")."""
    if engine == "duckdb":
        con = ibis.duckdb.connect()
        con.raw_sql("SET preserve_insertion_order = false")  # results are sorted explicitly; faster, less memory
        if threads:
            con.raw_sql(f"SET threads = {int(threads)}")
        return con
    if engine == "spark":
        return ibis.pyspark.connect(spark_session())
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def engine_of(con) -> str:
    return "spark" if con.name == "pyspark" else con.name


def _spark_tmpdir() -> Path:
    global _spark_tmp
    if _spark_tmp is None:
        _spark_tmp = tempfile.TemporaryDirectory(prefix="crmml-spark-")
    return Path(_spark_tmp.name)


def _conformed(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Canonical columns and dtypes for a handmade frame (missing optional columns become empty)."""
    spec = TABLES[name]
    if list(df.columns[: len(spec.columns)]) == spec.column_names and all(
        str(df[c.name].dtype).startswith("datetime64") for c in spec.columns if c.dtype == "datetime"
    ):
        return df
    return conform(name, df, f"{name} frame")


def load_tables(con, source) -> dict:
    """Ibis tables for the canonical tables in ``source`` (a Workspace, a workspace path, or a dict of DataFrames).

    Absent optional tables are simply not in the result. Parquet files are read by the engine itself.
    """
    engine = engine_of(con)
    out = {}
    if isinstance(source, (str, Path)):
        source = Workspace(source)
    if isinstance(source, Workspace):
        for name in CANONICAL:
            if source.has_table(name):
                path = source.table_path(name)
                out[name] = con.read_parquet(str(path), table_name=f"crmml_{name}_{os.getpid()}")
        if "events" not in out:
            raise FileNotFoundError(f"no events table in workspace {source.root}; run `crmml ingest` first")
        return out
    if not isinstance(source, dict):
        raise TypeError(f"expected a Workspace, a path or a dict of DataFrames, got {type(source).__name__}")
    for name in CANONICAL:
        df = source.get(name)
        if df is None:
            continue
        df = _conformed(name, df)
        if engine == "duckdb":
            out[name] = ibis.memtable(df)
        else:  # via Parquet: avoids pandas-3 conversion quirks of createDataFrame, same types as a workspace
            path = _spark_tmpdir() / f"{name}_{uuid.uuid4().hex}.parquet"
            df.to_parquet(path, index=False)
            out[name] = con.read_parquet(str(path))
    if "events" not in out:
        raise ValueError("the tables need at least 'events'")
    return out
