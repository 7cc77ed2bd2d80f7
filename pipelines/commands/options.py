"""Options shared by every command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

WorkspaceOption = Annotated[
    Optional[Path], typer.Option("--workspace", envvar="CRMML_WORKSPACE", help="Workspace folder.")
]

# rolling-origin evaluation (training.rolling): `crmml evaluate <model> --cutoffs N [--every DAYS]`, and
# `crmml train <model> --backtest-cutoffs N [--every DAYS]` for the grade of a trained model
CutoffsOption = Annotated[
    Optional[int], typer.Option("--cutoffs", min=1, help="Rolling-origin evaluation at N cutoffs back from the newest "
                                "one whose test window is complete (instead of --cutoff); graded A/B/C against the "
                                "best baseline.")
]
EveryOption = Annotated[
    Optional[int], typer.Option("--every", min=1, help="Days between the rolling cutoffs (default: the horizon or "
                                "window).")
]
BacktestCutoffsOption = Annotated[
    int, typer.Option("--backtest-cutoffs", min=1, help="Backtest at N rolling cutoffs (the newest labelled one and "
                      "earlier ones); the model is graded A/B/C on them.")
]


# the churn model's training sample (the default, features.sampling.TRAIN_CUSTOMERS, is not imported here:
# loading the CLI loads no library)
SampleCustomersOption = Annotated[
    Optional[int], typer.Option("--sample-customers", min=0, help="Train (and backtest) on a fixed sample of about this "
                                "many customers, by id hash, when the shop has more; 0 = every customer. Default: "
                                "features.sampling.TRAIN_CUSTOMERS.", show_default=False)
]


class Engine(str, Enum):
    """Where the batch work runs: DuckDB embedded in this process, or PySpark (local, or a cluster's session)."""

    duckdb = "duckdb"
    spark = "spark"
