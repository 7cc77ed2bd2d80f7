"""pipelines.quiet drops only the named third-party notices; other records and warnings still show."""

from __future__ import annotations

import logging
import warnings

from pipelines import quiet


def test_drops_the_cloudpickle_notice_and_keeps_other_records(caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)  # install() sets it; undone after the test
    quiet.install()
    quiet.install()  # idempotent: one filter, not two
    logger = logging.getLogger("mlflow.pyfunc")
    assert sum(isinstance(f, quiet._DropMessages) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="mlflow.pyfunc"):
        logger.warning("Passing a Python object as `python_model` causes it to be serialized using CloudPickle")
        logger.warning("a different MLflow warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a different MLflow warning"]


def test_ignores_only_the_named_warnings(monkeypatch):
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("PySpark does not yet fully support pandas >= 3.0.0", FutureWarning)
        warnings.warn("crmml's own warning", UserWarning)
    assert [str(w.message) for w in caught] == ["crmml's own warning"]
