"""Keep third-party notices out of crmml's normal output.

``install()`` runs once, when the ``crmml`` command starts and before any heavy library is
imported. Each rule below names one notice that libraries print on every normal run and that
asks nothing of a crmml user; everything else (crmml's own logs, warnings and errors, and any
other library warning) still shows. Where a notice could be removed at its source it was: the
pyfuncs' ``predict`` carries type hints and the recommender declares its signature
(``training/*_pyfunc.py``), and the registry mutes MLflow's "already exists" notice for the
model it created itself (``training/registry.py``).
"""

from __future__ import annotations

import logging
import os
import warnings

# MLflow's INFO events ("Creating initial MLflow database tables", "Validating input example
# against model signature") are its bookkeeping; its warnings and errors still show. Set
# MLFLOW_LOGGING_LEVEL=INFO to see them. Inherited by the `bentoml serve` child as well.
MLFLOW_LOGGING_LEVEL = "WARNING"

# (logger, message start) pairs dropped from a library's logger.
DROPPED_LOG_RECORDS = (
    # said at every log_model: crmml logs its own pyfunc classes, never foreign pickles
    ("mlflow.pyfunc", "Passing a Python object as `python_model`"),
)

# (category, message regex) pairs ignored by the warnings module.
IGNORED_WARNINGS = (
    # PySpark 4 on pandas 3: the Spark engine's results are checked against DuckDB's in tests
    (FutureWarning, r"PySpark does not yet fully support pandas"),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def install() -> None:
    """Install the rules above (idempotent)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", MLFLOW_LOGGING_LEVEL)
    by_logger: dict[str, list[str]] = {}
    for name, prefix in DROPPED_LOG_RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(tuple(prefixes)))
    for category, message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
