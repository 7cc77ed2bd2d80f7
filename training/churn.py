"""The churn warning model: calibrated LightGBM on stacked snapshots, with reasons and an honest protocol.

Model (:class:`ChurnModel`, scikit-learn style: ``fit``, ``predict_proba``, ``explain``)
    LightGBM (binary) trained on customer snapshots stacked over many cutoffs (one row per eligible
    customer and cutoff, ``features.snapshots.build_snapshots`` + :func:`model_features`).
    Validation is time-based: the **most recent cutoff** of the training frame is held out; the
    booster trains on the cutoffs whose label window ends on or before it (``c + horizon <= c_val``:
    no overlap of label windows), with early stopping on the validation AUC. Hyperparameters come
    from a small Optuna (TPE) search on the same time split, run on a fixed sample of customers with
    a median pruner (``tune=True``, ``n_trials``, ``tune_sample``), or fixed defaults (``tune=False``).
    Output stage (``blend``): on the held-out cutoff, by 5-fold cross-fitting over its customers,
    the model compares (a) the LightGBM margin through a calibrator (centered isotonic regression,
    or Platt), (b) a **stack**: a logistic regression on [LightGBM margin, logit BG/NBD P(no purchase),
    log(1 + recency)] that learns how far to trust BG/NBD, and (c) the BG/NBD and RFM baselines
    through isotonic calibrators. It keeps (a) or (b), whichever has the lower Brier score, unless
    a baseline beats it in both ROC-AUC and Brier: then it **falls back** to that baseline and says
    so (``chosen_``, ``fallback_``, ``choice_scores_``; in ``summary()``, the MLflow parameters
    ``output``/``fallback``, the evaluation JSON and the CLI output).
    Level (``level``): the output stage is fitted on the validation cutoff, whose churn rate differs
    from the scored cutoff's (season, trend). The log-odds are moved to the mean of the logits of
    several forecasts of the rate made from the training cutoffs' rates (the last one, the mean of the
    last four, the mean of all, and last year's seasonal change when a year of history exists);
    when the seasonal forecast applies, the row's ``cutoff`` is a declared input of the model
    (``feature_names_in_``), and no other column than the declared ones changes a score.

Features
    The catalog features (``features/catalog.py``) plus :data:`EXTRA_FEATURES`: time-decayed
    purchase activity, active months, the customer's own gap history, same-season-last-year
    activity, item seasonality, and the BG/NBD outputs (``bg_p_alive``, ``bg_expected_purchases``,
    ``bg_p_no_purchase``) fitted **per cutoff on the history before it** (``training/clv.py``).
    Every extra feature uses rows strictly before its cutoff, like the catalog ones.

Evaluation protocol (:func:`evaluate_protocol`, ``crmml evaluate churn``)
    For an evaluation cutoff ``E`` and horizon ``h``: training cutoffs every ``step_days`` going back
    from ``E - h`` (the most recent fully-labelled cutoff), so every training label ends on or
    before ``E``; the model and the three baselines (``training/churn_baselines.py``; their score ->
    probability calibrators fitted on the same training snapshots) then score the customers
    eligible at ``E`` (a purchase in the 365 days before it), whose labels are the purchases in
    ``[E, E + h)``. Metrics: ``training/churn_metrics.py``; plots: ``training/churn_plots.py``.

Reasons, tiers, value and actions: ``training/retention.py``; :func:`score_customers` puts them
together for the pipelines and the service.

Measured results on the UCI Online Retail data (the ROC-AUC of the model and the baselines, the
feature and training variants that were tried and not kept, a ceiling check) are in
``docs/experiments.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from features import catalog
from features.churn_features import EXTRA_FEATURES, backtest_cutoffs, feature_matrix, final_training_cutoffs
from features.dates import as_of_date, newest_labelled_cutoff, training_cutoffs
from features.sampling import TRAIN_CUSTOMERS, hash_unit
from training import churn_metrics as cm
from training import retention
from training.churn_baselines import BASELINES, BASELINE_DOCS, Baselines, Calibrator

log = logging.getLogger(__name__)

DEFAULT_HORIZON = 90
KEY_COLUMNS = ("customer_id", "cutoff")
LABEL_COLUMNS = ("eligible", "label_available", "churned")

DEFAULT_PARAMS = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 200,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "lambda_l2": 10.0,
    "min_split_gain": 0.0,
}


SAMPLE_CUSTOMERS = TRAIN_CUSTOMERS  # customers the backtest and the final model learn from (features.sampling)


def _tables(source, columns: list[str] | None = None) -> tuple[Any, pd.DataFrame]:
    """(source for feature_matrix, events frame, or those ``columns`` of it) from a Workspace, a path or a
    dict of tables."""
    from features.workspace import Workspace

    if isinstance(source, dict):
        return source, source["events"]
    ws = source if isinstance(source, Workspace) else Workspace(source)
    return ws, ws.read_table("events", columns=columns)


# ============================================================================================
# the model
# ============================================================================================
def _hash_fold(ids: pd.Series, k: int = 5) -> np.ndarray:
    """Deterministic fold 0..k-1 of each id (only used when there is a single cutoff to learn from)."""
    return np.array([int(hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()[:8], 16) % k for i in ids])


class _PruneCallback:
    """LightGBM callback: report the validation AUC to an Optuna trial every 25 rounds, stop it when pruned."""

    def __init__(self, trial, every: int = 25):
        self.trial, self.every = trial, every
        self.order = 30  # after early stopping's own callback

    def __call__(self, env) -> None:
        import optuna

        step = env.iteration + 1
        if step % self.every:
            return
        for data, metric, value, _ in env.evaluation_result_list:
            if data == "validation" and metric == "auc":
                self.trial.report(float(value), step)
                if self.trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {step}")
                return


# --------------------------------------------------------------------------------------------
# the output stage: LightGBM margin -> probability, possibly stacked with BG/NBD, or a baseline
# --------------------------------------------------------------------------------------------
OUTPUTS = ("lgbm", "stack", "bgnbd", "rfm")  # what ChurnModel.chosen_ can be
FALLBACKS = ("bgnbd", "rfm")  # baselines the model may serve instead of itself


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _stack_inputs(margin: np.ndarray, X: pd.DataFrame, columns=("bg_p_no_purchase", "recency_days")) -> np.ndarray:
    """The stack's columns: the LightGBM margin, logit(BG/NBD P(no purchase in the horizon)) and
    log(1 + recency), each of the two only when in ``columns`` (a constant 0 otherwise: the stack then
    gives it no weight). A customer unknown to BG/NBD counts as a certain churner, as in the baseline;
    a missing recency counts as 0."""
    from training.churn_baselines import bgnbd_score

    bg = _logit(bgnbd_score(X)) if "bg_p_no_purchase" in columns else np.zeros(len(X))
    rec = pd.to_numeric(X["recency_days"], errors="coerce").to_numpy(float) if "recency_days" in columns \
        else np.zeros(len(X))
    rec = np.log1p(np.clip(np.nan_to_num(rec, nan=0.0), 0, None))
    return np.column_stack([np.asarray(margin, float), bg, rec])


#: the columns of X each output stage reads besides the model's features
OUTPUT_INPUTS = {"lgbm": (), "stack": ("bg_p_no_purchase", "recency_days"), "bgnbd": ("bg_p_no_purchase",),
                 "rfm": ("cutoff", "recency_days", "frequency", "monetary")}


@dataclass
class OutputStage:
    """Margin (and snapshot columns) -> P(churn), one of :data:`OUTPUTS`.

    ``lgbm``: the calibrator (isotonic or Platt) on the LightGBM margin. ``stack``: a logistic regression
    on :func:`_stack_inputs` (learns how far to trust the LightGBM margin against BG/NBD and recency
    on the held-out cutoff; its margin coefficient is kept positive so the stack ranks like
    LightGBM where BG/NBD and recency agree). ``bgnbd`` / ``rfm``: the baseline's score through an
    isotonic calibrator (the fallback)."""

    kind: str
    calibration: str = "isotonic"
    calibrator_: Calibrator | None = None
    coef_: list | None = None  # the stack: [intercept, margin, logit bg, log1p recency] on raw inputs
    inputs_: list = field(default_factory=list)  # the columns of X it reads (besides the model's features)

    def _baseline_score(self, X: pd.DataFrame) -> np.ndarray:
        from training.churn_baselines import SCORERS

        return SCORERS[self.kind](X)

    def fit(self, margin, X: pd.DataFrame, y) -> "OutputStage":
        y = np.asarray(y, float)
        self.inputs_ = [c for c in OUTPUT_INPUTS.get(self.kind, ()) if c in X.columns]
        if self.kind == "lgbm":
            self.calibrator_ = Calibrator(self.calibration).fit(margin, y)
        elif self.kind == "stack":
            from sklearn.linear_model import LogisticRegression

            Z = _stack_inputs(margin, X, self.inputs_)
            mu, sd = Z.mean(axis=0), Z.std(axis=0)
            sd[sd == 0] = 1.0
            lr = LogisticRegression(C=1.0, max_iter=1000).fit((Z - mu) / sd, y)
            b = lr.coef_[0] / sd
            self.coef_ = [float(lr.intercept_[0] - np.sum(b * mu))] + [float(v) for v in b]
        elif self.kind in FALLBACKS:
            self.calibrator_ = Calibrator("isotonic").fit(self._baseline_score(X), y)
        else:
            raise ValueError(f"unknown output stage {self.kind!r}; one of {OUTPUTS}")
        return self

    def predict(self, margin, X: pd.DataFrame) -> np.ndarray:
        if self.kind == "lgbm":
            return self.calibrator_.predict(margin)
        if self.kind == "stack":
            z = self.coef_[0] + _stack_inputs(margin, X, self.inputs_) @ np.asarray(self.coef_[1:])
            return np.clip(1.0 / (1.0 + np.exp(-np.clip(z, -35, 35))), 1e-4, 1 - 1e-4)
        return self.calibrator_.predict(self._baseline_score(X))


def choose_output(margin, X: pd.DataFrame, y, ids, candidates=OUTPUTS, calibration: str = "isotonic",
                  folds: int = 5) -> tuple[str, dict]:
    """Pick the output stage on the held-out cutoff by cross-fitting (``folds`` customer folds by id hash):
    each candidate is fitted on the other folds and scored on its own, so the comparison is out of sample.

    Rule: the model's own candidate (``lgbm``, ``stack``) with the lowest Brier score; a baseline
    replaces it only when it is better in both ROC-AUC and Brier (the model would lose to it). Returns
    (chosen, ``{candidate: {"auc", "brier"}}``)."""
    y = np.asarray(y, float)
    fold = _hash_fold(pd.Series(np.asarray(ids)), folds)
    scores: dict = {}
    for kind in candidates:
        if kind in FALLBACKS and any(c not in X.columns for c in OUTPUT_INPUTS[kind] if c != "cutoff"):
            continue  # the baseline cannot be computed from this frame
        oof = np.full(len(y), np.nan)
        for k in range(folds):
            te = fold == k
            tr = ~te
            if te.sum() == 0 or len(np.unique(y[tr])) < 2:
                continue
            stage = OutputStage(kind, calibration).fit(margin[tr], X[tr], y[tr])
            oof[te] = stage.predict(margin[te], X[te])
        ok = np.isfinite(oof)
        scores[kind] = {"auc": round(cm.roc_auc(y[ok], oof[ok]), 5), "brier": round(cm.brier(y[ok], oof[ok]), 5)}
    own = [k for k in scores if k not in FALLBACKS]
    chosen = min(own, key=lambda k: scores[k]["brier"])
    better = [k for k in scores if k in FALLBACKS and scores[k]["auc"] > scores[chosen]["auc"]
              and scores[k]["brier"] < scores[chosen]["brier"]]
    if better:
        chosen = min(better, key=lambda k: scores[k]["brier"])
    return chosen, scores


#: the converted matrix of the rows being scored, per thread (``ChurnModel.one_matrix``)
_SAME_ROWS = threading.local()


class ChurnModel(ClassifierMixin, BaseEstimator):
    """Calibrated LightGBM churn model on stacked snapshots (see the module docstring).

    Parameters
    ----------
    horizon_days: label horizon; training rows whose label window overlaps the validation cutoff's
        are left out of the booster's training set.
    tier_thresholds: ``{"high": p, "medium": p}`` on the calibrated probability.
    tune / n_trials / tune_timeout: the Optuna TPE search (time-based validation AUC); off -> ``params``.
    params: LightGBM parameters overriding :data:`DEFAULT_PARAMS` (and the tuned ones).
    calibration: ``"isotonic"`` (centered isotonic regression) or ``"sigmoid"`` (Platt).
    monotone: constrain features whose catalog direction is known (more/less risk) to act monotonically.
    features: the feature columns to use (default: the catalog features and :data:`EXTRA_FEATURES`
        present in ``X`` at fit, then its other numeric columns that are neither keys nor labels).
    refit: after choosing the number of trees, retrain the booster on all cutoffs including the
        validation one (the calibrator stays the one fitted on the held-out predictions).
    seasonal_shift: shift the log-odds to the forecast level of the scored cutoff (see ``level``);
        False: the probabilities stay calibrated to the validation cutoff.
    level: ``"combined"`` (default): :meth:`level_offset`, the mean of the rate forecasts of
        :meth:`level_forecasts`. ``"seasonal"`` (the former behaviour): when the training frame holds
        a cutoff one year before the validation cutoff (within 20 days), the fitted model reads each
        row's ``cutoff`` and, where it also knows the churn rate one year before that cutoff, shifts the
        log-odds by ``logit(rate(c - 1y)) - logit(rate(c_val - 1y))`` (capped at +-1).
        ``"validation"``: no shift. Only labels of training cutoffs are used.
    blend: the output stage: ``"auto"`` (chosen on the held-out cutoff, see the module docstring),
        ``"none"`` or ``"lgbm"`` (the calibrated LightGBM margin), ``"stack"``, or a baseline name.
    tune_sample: the search trains and validates on about this many customers (a fixed sample by id
        hash, the same customers at every cutoff); None or 0: every customer (the full search).

    Inputs: ``feature_names_in_`` lists every column ``predict_proba`` reads: the features
    (``feature_names_``) and, when the seasonal shift applies, ``cutoff``. A missing one is an
    error; any other column of ``X`` is ignored, so the same rows score the same whatever else
    the frame carries.

    Reasons (``contributions``, ``explain``) always come from the LightGBM part, on its log-odds scale:
    the stack keeps a positive weight on the LightGBM margin (an ``auto`` stack that would not is
    discarded), so the drivers that raise the margin raise the served probability too, but the
    BG/NBD and recency terms the stack adds are not among the reasons; after a fallback the reasons
    still explain the LightGBM margin, not the baseline's score (``fallback_`` says so).

    Learned: ``booster_``, ``calibrator_``, ``output_`` (:class:`OutputStage`), ``chosen_``, ``fallback_``,
    ``choice_scores_``, ``feature_names_``, ``feature_names_in_``, ``categories_``,
    ``best_iteration_``, ``best_params_``, ``validation_cutoff_``, ``train_cutoffs_``, ``cutoff_rates_``,
    ``validation_metrics_``, ``study_summary_``.
    """

    def __init__(self, horizon_days: int = DEFAULT_HORIZON, tier_thresholds: dict | None = None, tune: bool = True,
                 n_trials: int = 10, tune_timeout: float | None = 300.0, params: dict | None = None,
                 calibration: str = "isotonic", monotone: bool = False, features: list[str] | None = None,
                 refit: bool = False, seasonal_shift: bool = True, max_rounds: int = 3000,
                 early_stopping_rounds: int = 100, random_state: int = 0, n_jobs: int = 2, verbose: bool = False,
                 blend: str = "auto", level: str = "combined", tune_sample: int | None = 2500):
        self.horizon_days = horizon_days
        self.tier_thresholds = tier_thresholds
        self.tune = tune
        self.n_trials = n_trials
        self.tune_timeout = tune_timeout
        self.params = params
        self.calibration = calibration
        self.monotone = monotone
        self.features = features
        self.refit = refit
        self.seasonal_shift = seasonal_shift
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.blend = blend
        self.level = level
        self.tune_sample = tune_sample

    # -- features -----------------------------------------------------------------------------
    def _select_features(self, X: pd.DataFrame) -> list[str]:
        if self.features is not None:
            missing = [f for f in self.features if f not in X.columns]
            if missing:
                raise KeyError(f"feature column(s) missing from X: {missing}")
            return list(self.features)
        known = list(catalog.feature_names()) + [f for f in EXTRA_FEATURES if f not in catalog.FEATURES]
        names = [c for c in known if c in X.columns]
        # anything else numeric that is not a key or label (e.g. a caller's own features)
        names += [c for c in X.columns if c not in names and c not in KEY_COLUMNS and c not in LABEL_COLUMNS
                  and pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])]
        return [c for c in names if X[c].notna().any()]

    def _is_categorical(self, name: str, X: pd.DataFrame) -> bool:
        spec = catalog.FEATURES.get(name)
        if spec is not None:
            return spec.dtype == "category"
        return not pd.api.types.is_numeric_dtype(X[name])

    @contextmanager
    def one_matrix(self, X: pd.DataFrame):
        """Within the block, every method given this very ``X`` converts it once (predict and explain
        of the same rows); per thread, so concurrent callers never see each other's rows."""
        _SAME_ROWS.frame, _SAME_ROWS.matrix = X, self._matrix(X)
        try:
            yield
        finally:
            _SAME_ROWS.frame = _SAME_ROWS.matrix = None

    def _matrix(self, X: pd.DataFrame) -> pd.DataFrame:
        if getattr(_SAME_ROWS, "frame", None) is X:
            return _SAME_ROWS.matrix
        missing = [f for f in self.feature_names_ if f not in X.columns]
        if missing:
            raise KeyError(f"X lacks the model's feature column(s) {missing}; "
                           "build it with features.churn_features.feature_matrix")
        out = {}
        numeric = [n for n in self.feature_names_ if n not in self.categories_]
        block = None
        if numeric and all(pd.api.types.is_numeric_dtype(X[n]) for n in numeric):
            # one conversion for every numeric column: per-column pandas calls cost more than the
            # prediction itself when a few customers are scored at a time (the service, on first need)
            block = X[numeric].to_numpy(dtype="float64", na_value=np.nan)
        for name in self.feature_names_:
            if name in self.categories_:
                cats = self.categories_[name]
                # codes by dict lookup of the string values: unknown and missing values get -1 (NaN)
                at = {c: i for i, c in enumerate(cats)}
                vals = X[name].astype("string").to_numpy(dtype=object, na_value=None)
                codes = np.fromiter((at.get(v, -1) for v in vals), dtype=np.int64, count=len(vals))
                out[name] = pd.Categorical.from_codes(codes, categories=cats)
            elif block is None:
                out[name] = pd.to_numeric(X[name], errors="coerce").astype("float64").to_numpy()
        if block is not None:
            at = {n: i for i, n in enumerate(numeric)}
            out = {n: out[n] if n in out else block[:, at[n]] for n in self.feature_names_}
        return pd.DataFrame(out, index=X.index)

    # -- fitting ------------------------------------------------------------------------------
    def _split(self, cutoffs: pd.Series | None, ids: pd.Series) -> tuple[np.ndarray, np.ndarray, dict]:
        n = len(ids)
        if cutoffs is None or cutoffs.nunique() < 2:
            fold = _hash_fold(ids)
            val = fold == 0
            warnings.warn("ChurnModel.fit: a single cutoff, validation falls back to a fixed 20% of customers "
                          "(by id hash); stack several cutoffs for a time-based validation", stacklevel=3)
            return ~val, val, {"validation": "customer-hash 20% (single cutoff)"}
        c = pd.to_datetime(cutoffs).to_numpy("datetime64[us]")
        c_val = c.max()
        val = c == c_val
        horizon = np.timedelta64(int(self.horizon_days), "D")
        train = c + horizon <= c_val
        info = {"validation_cutoff": str(pd.Timestamp(c_val).date())}
        if not train.any():
            train = c < c_val
            info["note"] = "label windows of training and validation overlap (cutoffs closer than the horizon)"
        info["train_cutoffs"] = sorted(str(pd.Timestamp(x).date()) for x in np.unique(c[train]))
        info["gap_cutoffs_dropped"] = sorted(str(pd.Timestamp(x).date()) for x in np.unique(c[~train & ~val]))
        if n != len(c):
            raise RuntimeError(f"split of {len(c)} rows built for {n}")
        return train, val, info

    def _lgb_params(self, params: dict) -> dict:
        p = {**DEFAULT_PARAMS, **params}
        out = {
            "objective": "binary",
            "metric": ["auc", "binary_logloss"],
            "first_metric_only": True,
            "verbosity": -1,
            "num_threads": int(self.n_jobs),
            "seed": int(self.random_state),
            "deterministic": True,
            "force_col_wise": True,
            "bagging_freq": 1,
            "learning_rate": p["learning_rate"],
            "num_leaves": int(p["num_leaves"]),
            "min_child_samples": int(p["min_child_samples"]),
            "feature_fraction": p["feature_fraction"],
            "bagging_fraction": p["bagging_fraction"],
            "lambda_l2": p["lambda_l2"],
            "min_split_gain": p.get("min_split_gain", 0.0),
            "max_cat_to_onehot": 8,
            "cat_smooth": 20,
            "min_data_per_group": 50,
        }
        for k, v in p.items():  # any other LightGBM parameter passed explicitly
            if k not in DEFAULT_PARAMS and k not in out:
                out[k] = v
        if self.monotone:
            out["monotone_constraints"] = [
                0 if n in self.categories_ else int(retention.feature_direction(n)) for n in self.feature_names_
            ]
            out["monotone_constraints_method"] = "advanced"
        return out

    def _train(self, params: dict, dtrain, dval, rounds: int | None = None, callbacks: list | None = None,
               patience: int | None = None, max_rounds: int | None = None):
        import lightgbm as lgb

        callbacks = list(callbacks or [])
        valid = []
        if rounds is None:
            callbacks.append(lgb.early_stopping(patience or self.early_stopping_rounds, first_metric_only=True,
                                                verbose=False))
            valid = [dval]
        booster = lgb.train(self._lgb_params(params), dtrain, num_boost_round=rounds or max_rounds or self.max_rounds,
                            valid_sets=valid, valid_names=["validation"][: len(valid)], callbacks=callbacks)
        return booster

    def fit(self, X: pd.DataFrame, y=None, cutoff=None, sample_weight=None) -> "ChurnModel":
        """Fit on a stacked snapshot frame.

        ``y``: churn labels (default: ``X["churned"]``); rows with a missing label are dropped.
        ``cutoff``: the snapshot date of each row (default: ``X["cutoff"]``).
        """
        import lightgbm as lgb

        t0 = time.perf_counter()
        X = X.reset_index(drop=True)
        if y is None:
            if "churned" not in X.columns:
                raise ValueError("pass y or a 'churned' column")
            y = X["churned"]
        y = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").reset_index(drop=True)
        if cutoff is None and "cutoff" in X.columns:
            cutoff = X["cutoff"]
        keep = y.notna().to_numpy()
        X, y = X.loc[keep].reset_index(drop=True), y[keep].astype(float).reset_index(drop=True)
        cut = None if cutoff is None else pd.Series(np.asarray(cutoff)[keep])
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)[keep]
        if len(np.unique(y)) < 2:
            raise ValueError("ChurnModel.fit needs both churners and stayers")

        self.classes_ = np.array([0, 1])
        self.feature_names_ = self._select_features(X)
        self.categories_ = {}
        for name in self.feature_names_:
            if self._is_categorical(name, X):
                counts = X[name].astype("string").value_counts()
                self.categories_[name] = [str(v) for v in counts.index[:50]]
        M = self._matrix(X)
        ids = X["customer_id"] if "customer_id" in X.columns else pd.Series(np.arange(len(X)))
        train, val, split_info = self._split(cut, ids)
        self.split_info_ = split_info
        self.validation_cutoff_ = split_info.get("validation_cutoff")
        self.train_cutoffs_ = split_info.get("train_cutoffs", [])
        yv = y.to_numpy()
        if len(np.unique(yv[train])) < 2 or len(np.unique(yv[val])) < 2:
            raise ValueError("the time split leaves only one class in training or validation")

        cat_cols = list(self.categories_)
        # feature_pre_filter off: the search changes min_child_samples on the same Dataset
        ds_params = {"feature_pre_filter": False, "verbosity": -1}
        dtrain = lgb.Dataset(M[train], yv[train], weight=None if w is None else w[train],
                             categorical_feature=cat_cols or "auto", free_raw_data=False, params=ds_params)
        dval = lgb.Dataset(M[val], yv[val], reference=dtrain, categorical_feature=cat_cols or "auto",
                           free_raw_data=False, params=ds_params)

        params = dict(self.params or {})
        self.study_summary_ = None
        if self.tune and self.n_trials > 0:
            tuned, self.study_summary_ = self._search(*self._search_data(M, yv, w, train, val, ids, cat_cols,
                                                                         ds_params))
            params = {**tuned, **params}
        self.best_params_ = {**DEFAULT_PARAMS, **params}

        booster = self._train(params, dtrain, dval)
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        raw_val = booster.predict(M[val], raw_score=True, num_iteration=self.best_iteration_)
        self.calibrator_ = Calibrator(self.calibration).fit(raw_val, yv[val])
        Xval = X.loc[val].reset_index(drop=True)
        self._fit_output(raw_val, Xval, yv[val], ids[val])
        p_val = self.output_.predict(raw_val, Xval)
        self.validation_metrics_ = {k: v for k, v in cm.evaluate(yv[val], p_val).items()}
        self.validation_metrics_["auc_uncalibrated"] = cm.roc_auc(yv[val], raw_val)
        if self.refit:
            dall = lgb.Dataset(M, yv, weight=w, categorical_feature=cat_cols or "auto")
            n_train = int(train.sum())
            rounds = int(round(self.best_iteration_ * (n_train + int(val.sum())) / max(n_train, 1)))
            booster = self._train(params, dall, None, rounds=rounds)
            self.best_iteration_ = rounds
        self.booster_ = booster
        self.cutoff_rates_ = {}
        if cut is not None and cut.nunique() >= 2:
            rates = pd.Series(yv).groupby(pd.to_datetime(cut).to_numpy()).mean()
            self.cutoff_rates_ = {str(pd.Timestamp(k).date()): float(v) for k, v in rates.items()}
        self.feature_names_in_ = self._declared_inputs()
        self.n_features_in_ = len(self.feature_names_in_)
        self.n_train_rows_ = int(train.sum())
        self.n_validation_rows_ = int(val.sum())
        self.fit_seconds_ = round(time.perf_counter() - t0, 2)
        return self

    def _fit_output(self, margin, Xval: pd.DataFrame, yval, ids) -> None:
        """Choose and fit the output stage on the held-out cutoff (``blend``): ``chosen_``, ``fallback_``,
        ``choice_scores_``, ``output_``."""
        mode = self.blend or "none"
        if mode == "none":
            chosen, scores = "lgbm", {}
        elif mode in OUTPUTS:
            chosen, scores = mode, {}
        elif mode == "auto":
            chosen, scores = choose_output(margin, Xval, yval, ids, calibration=self.calibration)
        else:
            raise ValueError(f"blend must be 'auto', 'none' or one of {OUTPUTS}, not {self.blend!r}")
        stage = OutputStage(chosen, self.calibration).fit(margin, Xval, yval)
        if chosen == "stack" and stage.coef_[1] <= 0 and mode == "auto":
            # a stack that reverses the LightGBM margin would make its reasons meaningless
            chosen = min((k for k in scores if k not in FALLBACKS and k != "stack"), key=lambda k: scores[k]["brier"])
            stage = OutputStage(chosen, self.calibration).fit(margin, Xval, yval)
        self.chosen_ = chosen
        self.fallback_ = chosen if chosen in FALLBACKS else None
        self.choice_scores_ = scores
        self.output_ = stage
        if self.fallback_:
            log.warning("churn model: on the held-out cutoff the %s baseline beats the model in ROC-AUC and Brier; "
                        "the model serves the baseline's probabilities", self.fallback_)

    def _search_data(self, M, yv, w, train, val, ids, cat_cols, ds_params):
        """The search's training and validation Datasets: the same time split, restricted to a fixed sample of
        ``tune_sample`` customers (by id hash, the same customers in every cutoff) when there are more.

        Why: a trial's cost grows with the rows while the ranking of hyperparameters is stable on a few
        thousand customers; the final booster still trains on every row with the chosen parameters."""
        import lightgbm as lgb

        keep = np.ones(len(yv), dtype=bool)
        n_customers = int(pd.Series(ids).nunique())
        self.tune_customers_ = n_customers
        if self.tune_sample and n_customers > int(self.tune_sample):
            share = int(self.tune_sample) / n_customers
            keep = hash_unit(ids) < share
            self.tune_customers_ = int(pd.Series(ids)[keep].nunique())
        tr, va = train & keep, val & keep
        if len(np.unique(yv[tr])) < 2 or len(np.unique(yv[va])) < 2:
            tr, va = train, val  # a tiny sample with one class: search on every row
        dtrain = lgb.Dataset(M[tr], yv[tr], weight=None if w is None else w[tr],
                             categorical_feature=cat_cols or "auto", free_raw_data=False, params=ds_params)
        dval = lgb.Dataset(M[va], yv[va], reference=dtrain, categorical_feature=cat_cols or "auto",
                           free_raw_data=False, params=ds_params)
        return dtrain, dval

    def _search(self, dtrain, dval) -> tuple[dict, dict]:
        """Optuna TPE over the main LightGBM knobs; objective = validation AUC at the early-stopped round.

        Trials report their validation AUC every 25 rounds; a median pruner stops a trial that is
        below the median of the earlier trials at the same round (after 4 complete trials). Each trial
        stops after 50 rounds without progress (at most 1,000 rounds): it only has to rank the settings,
        the final booster trains with the full patience."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def objective(trial):
            params = {
                "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.08, log=True),
                "num_leaves": trial.suggest_int("num_leaves", 4, 32, log=True),
                "min_child_samples": trial.suggest_int("min_child_samples", 50, 1500, log=True),
                "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
                "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
                "lambda_l2": trial.suggest_float("lambda_l2", 1e-2, 300.0, log=True),
                "min_split_gain": trial.suggest_float("min_split_gain", 0.0, 1.0),
            }
            # a trial only ranks parameters: a shorter patience and a round cap are enough for that
            booster = self._train(params, dtrain, dval, callbacks=[_PruneCallback(trial)],
                                  patience=min(50, self.early_stopping_rounds), max_rounds=min(1000, self.max_rounds))
            trial.set_user_attr("best_iteration", int(booster.best_iteration))
            return float(booster.best_score["validation"]["auc"])

        sampler = optuna.samplers.TPESampler(seed=self.random_state, n_startup_trials=min(5, self.n_trials))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=50, interval_steps=25)
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        study.enqueue_trial({k: v for k, v in DEFAULT_PARAMS.items()})
        study.optimize(objective, n_trials=self.n_trials, timeout=self.tune_timeout, show_progress_bar=False)
        best = study.best_trial
        summary = {
            "n_trials": len(study.trials),
            "pruned_trials": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
            "customers": getattr(self, "tune_customers_", None),
            "best_value_auc": float(best.value),
            "default_value_auc": float(study.trials[0].value) if study.trials[0].value is not None else None,
            "best_params": dict(best.params),
            "best_iteration": best.user_attrs.get("best_iteration"),
        }
        if self.verbose:
            log.info("optuna: %s", summary)
        return dict(best.params), summary

    # -- prediction ---------------------------------------------------------------------------
    def _check(self):
        if not hasattr(self, "booster_"):
            raise RuntimeError("ChurnModel is not fitted")

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Raw LightGBM margin (log-odds before calibration)."""
        self._check()
        return self.booster_.predict(self._matrix(X), raw_score=True, num_iteration=self.best_iteration_)

    def _declared_inputs(self) -> np.ndarray:
        """The columns the fitted model reads: its features, and ``cutoff`` when the seasonal shift
        can apply at all (a rate is known one year before the validation cutoff)."""
        reads_cutoff = bool(self.seasonal_shift) and self._season_reference_rate() is not None
        output = getattr(self, "output_", None)
        extra = [c for c in (output.inputs_ if output is not None else ()) if c not in self.feature_names_]
        if reads_cutoff and "cutoff" not in extra:
            extra.append("cutoff")
        return np.asarray(self.feature_names_ + extra, dtype=object)

    def _inputs(self) -> np.ndarray:
        # models pickled before the inputs were declared at fit get them derived the same way
        names = getattr(self, "feature_names_in_", None)
        return self._declared_inputs() if names is None else names

    def _check_inputs(self, X: pd.DataFrame) -> None:
        """A ValueError naming the declared inputs other than the features that ``X`` lacks (the
        features themselves are checked by ``_matrix``)."""
        missing = [c for c in self._inputs() if c not in self.feature_names_ and c not in X.columns]
        if missing:
            raise ValueError(f"X lacks the column(s) {missing} that this model reads (feature_names_in_): "
                             "the snapshot date of each row sets its level shift, and the output stage "
                             f"({self.output_kind()}) reads its own columns")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated ``[P(stay), P(churn)]`` per row, from the columns in ``feature_names_in_`` only
        (with the seasonal shift of each row's ``cutoff`` when the model reads it)."""
        self._check()
        self._check_inputs(X)
        output = getattr(self, "output_", None)
        margin = self.decision_function(X)
        p = self.calibrator_.predict(margin) if output is None else output.predict(margin, X)
        if self.seasonal_shift:
            delta = self.level_offset(X["cutoff"] if "cutoff" in self._inputs() else None, len(X))
            if np.any(delta != 0):
                z = np.log(p / (1 - p)) + delta
                p = np.clip(1.0 / (1.0 + np.exp(-z)), self.calibrator_.eps, 1 - self.calibrator_.eps)
        return np.column_stack([1.0 - p, p])

    def _rate_near(self, date: pd.Timestamp, tolerance_days: int = 20) -> float | None:
        best, dist = None, None
        for key, rate in getattr(self, "cutoff_rates_", {}).items():
            d = abs((pd.Timestamp(key) - date).days)
            if d <= tolerance_days and (dist is None or d < dist) and 0 < rate < 1:
                best, dist = rate, d
        return best

    def _season_reference_rate(self) -> float | None:
        """The churn rate one year before the validation cutoff (None when unknown: no shift)."""
        if not self.validation_cutoff_:
            return None
        return self._rate_near(pd.Timestamp(self.validation_cutoff_) - pd.Timedelta(days=365))

    def season_offset(self, cutoffs) -> np.ndarray:
        """Log-odds shift per row for its cutoff (0 where last year's rates are not known)."""
        c = pd.to_datetime(pd.Series(np.asarray(cutoffs)))
        out = np.zeros(len(c))
        r0 = self._season_reference_rate()
        if r0 is None:
            return out
        year = pd.Timedelta(days=365)
        for value in c.dropna().unique():
            r1 = self._rate_near(pd.Timestamp(value) - year)
            if r1 is not None:
                delta = np.log(r1 / (1 - r1)) - np.log(r0 / (1 - r0))
                out[(c == value).to_numpy()] = float(np.clip(delta, -1.0, 1.0))
        return out

    def output_kind(self) -> str:
        """What turns scores into probabilities: ``lgbm``, ``stack`` or the baseline fallen back to."""
        return getattr(self, "chosen_", "lgbm")

    def level_forecasts(self, cutoff=None) -> dict:
        """Forecasts of the churn rate at a scored cutoff from the training cutoffs' rates (``cutoff_rates_``):
        ``last`` (the validation cutoff's rate, what the output stage is calibrated to), ``last4`` (the
        mean of the last four), ``pooled`` (the mean of all), and ``seasonal`` (the last rate moved by last
        year's change between the two seasons, when ``cutoff`` is given and both rates are known)."""
        rates = {pd.Timestamp(k): v for k, v in getattr(self, "cutoff_rates_", {}).items() if 0 < v < 1}
        r0 = self._rate_near(pd.Timestamp(self.validation_cutoff_)) if self.validation_cutoff_ else None
        if r0 is None or len(rates) < 2:
            return {}
        known = [rates[k] for k in sorted(rates) if k <= pd.Timestamp(self.validation_cutoff_)]
        out = {"last": r0, "last4": float(np.mean(known[-4:])), "pooled": float(np.mean(known))}
        if (cutoff is not None and self._season_reference_rate() is not None
                and self._rate_near(pd.Timestamp(cutoff) - pd.Timedelta(days=365)) is not None):
            delta = float(self.season_offset([cutoff])[0])
            out["seasonal"] = float(1 / (1 + np.exp(-(np.log(r0 / (1 - r0)) + delta))))
        return out

    def level_offset(self, cutoffs=None, n: int | None = None) -> np.ndarray:
        """Log-odds shift per row: the output stage is calibrated on the validation cutoff, whose churn rate
        differs from the scored cutoff's by season and trend.

        ``level="seasonal"``: :meth:`season_offset` (last year's seasonal change, 0 when unknown).
        ``level="combined"`` (default): ``mean(logit(forecasts)) - logit(rate at the validation cutoff)``
        over :meth:`level_forecasts` (an equal-weight forecast combination: on the UCI data no single rule
        was best at every cutoff; see docs/experiments.md). ``level="validation"``: no shift."""
        n = len(cutoffs) if cutoffs is not None else int(n or 0)
        mode = getattr(self, "level", "seasonal")
        if mode == "seasonal":
            return self.season_offset(cutoffs) if cutoffs is not None else np.zeros(n)
        if mode == "validation":
            return np.zeros(n)
        if mode != "combined":
            raise ValueError(f"level must be 'combined', 'seasonal' or 'validation', not {mode!r}")

        def offset(c) -> float:
            f = self.level_forecasts(c)
            if not f:
                return 0.0
            z = np.mean([np.log(v / (1 - v)) for v in f.values()])
            return float(z - np.log(f["last"] / (1 - f["last"])))

        if cutoffs is None:
            return np.full(n, offset(None))
        c = pd.to_datetime(pd.Series(np.asarray(cutoffs)))
        out = np.full(n, offset(None))
        for value in c.dropna().unique():
            out[(c == value).to_numpy()] = offset(pd.Timestamp(value))
        return out

    def predict(self, X: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= threshold).astype(int)

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """SHAP values (TreeSHAP, ``pred_contrib=True``) on the log-odds scale; last column = bias."""
        self._check()
        out = self.booster_.predict(self._matrix(X), pred_contrib=True, num_iteration=self.best_iteration_)
        return np.asarray(out)

    def explain(self, X: pd.DataFrame, top_k: int = 3) -> list[list[dict]]:
        """Per customer, up to ``top_k`` reasons that push the risk up:
        ``[{"feature", "value", "contribution", "sentence"}, ...]`` (strongest first), from the LightGBM
        part (see the class docstring for what the output stage does to them)."""
        contrib = self.contributions(X)
        return retention.reasons_from_contributions(contrib, X.reset_index(drop=True), self.feature_names_, top_k)

    def risk_tier(self, p) -> np.ndarray:
        return retention.risk_tier(p, self.tier_thresholds)

    def feature_importance(self) -> pd.DataFrame:
        self._check()
        gain = self.booster_.feature_importance("gain", iteration=self.best_iteration_)
        split = self.booster_.feature_importance("split", iteration=self.best_iteration_)
        return (pd.DataFrame({"feature": self.feature_names_, "gain": gain, "split": split})
                .sort_values("gain", ascending=False).reset_index(drop=True))

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``model.joblib`` + ``booster.txt`` + ``model.json`` (readable summary) under ``directory``."""
        import joblib

        from features.workspace import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "model.joblib", lambda tmp: joblib.dump(self, tmp))
        atomic_write(directory / "booster.txt", lambda tmp: self.booster_.save_model(str(tmp)))
        atomic_write(directory / "model.json",
                     lambda tmp: tmp.write_text(json.dumps(self.summary(), indent=2, default=str)))
        return directory / "model.joblib"

    @staticmethod
    def load(path: str | Path) -> "ChurnModel":
        import joblib

        path = Path(path)
        return joblib.load(path / "model.joblib" if path.is_dir() else path)

    def summary(self) -> dict:
        self._check()
        return {
            "horizon_days": self.horizon_days,
            "features": self.feature_names_,
            "categorical": self.categories_,
            "best_params": self.best_params_,
            "best_iteration": self.best_iteration_,
            "calibration": self.calibration,
            "validation_cutoff": self.validation_cutoff_,
            "train_cutoffs": self.train_cutoffs_,
            "validation_metrics": self.validation_metrics_,
            "study": self.study_summary_,
            "tier_thresholds": {**retention.DEFAULT_TIERS, **(self.tier_thresholds or {})},
            "n_train_rows": self.n_train_rows_,
            "n_validation_rows": self.n_validation_rows_,
            "fit_seconds": self.fit_seconds_,
            "seasonal_shift": self.seasonal_shift,
            "cutoff_churn_rates": getattr(self, "cutoff_rates_", {}),
            "blend": self.blend,
            "level": self.level,
            "level_forecasts": self.level_forecasts() if self.seasonal_shift else {},
            "chosen": getattr(self, "chosen_", "lgbm"),
            "fallback": getattr(self, "fallback_", None),
            "choice_scores": getattr(self, "choice_scores_", {}),
            "stack_coef": getattr(getattr(self, "output_", None), "coef_", None),
        }


# ============================================================================================
# scoring for the CRM
# ============================================================================================
def merge_clv(snapshot_df: pd.DataFrame, clv_df: pd.DataFrame | None, columns=None) -> pd.DataFrame:
    """The snapshot rows (ids as text, a fresh index) with the columns of ``clv_df`` they lack (only
    ``columns`` of them, when given), matched on ``customer_id``; ``clv_12m`` is NaN where unknown."""
    snap = snapshot_df.reset_index(drop=True).copy()
    snap["customer_id"] = snap["customer_id"].astype(str)
    if clv_df is not None and len(clv_df):
        clv = clv_df.copy()
        clv["customer_id"] = clv["customer_id"].astype(str)
        wanted = clv.columns if columns is None else columns
        take = [c for c in wanted if c in clv.columns and c not in snap.columns and c != "customer_id"]
        snap = snap.merge(clv[["customer_id", *take]].drop_duplicates("customer_id"), on="customer_id", how="left")
    if "clv_12m" not in snap.columns:
        snap["clv_12m"] = np.nan
    return snap


def score_customers(model: ChurnModel, snapshot_df: pd.DataFrame, clv_df: pd.DataFrame | None = None,
                    top_k: int = 3, predict=None, high_value=...) -> pd.DataFrame:
    """Score one snapshot: ``customer_id, churn_probability, risk_tier, reasons, value_at_stake, clv_12m,
    suggested_action`` (+ ``action_text``, ``cutoff`` when present), sorted by value at stake.

    ``snapshot_df``: a ``features.churn_features.feature_matrix`` frame (every input of the model).
    ``clv_df``: :func:`training.clv.clv_frame` output (``customer_id``, ``clv_12m``); when the snapshot
    lacks the ``bg_*`` features the model needs, they are taken from ``clv_df`` too (same BG/NBD fit).
    ``predict``: ``f(inputs) -> DataFrame`` of ``churn_probability, risk_tier, reasons`` (a list per row),
    one row per input row in order, for scoring elsewhere (a Spark UDF); the model in-process by default.
    ``high_value``: the CLV threshold of the suggested actions (``retention.attach_actions``); by default
    that of the scored rows, so a few rows scored at a time need the one of their whole population.
    """
    snap = merge_clv(snapshot_df, clv_df, [*model.feature_names_, "clv_12m"])
    out = pd.DataFrame({"customer_id": snap["customer_id"].to_numpy()})
    if "cutoff" in snap.columns:
        out["cutoff"] = snap["cutoff"].to_numpy()
    if predict is None:
        with model.one_matrix(snap):
            p = model.predict_proba(snap)[:, 1]
            out["churn_probability"] = p
            out["risk_tier"] = model.risk_tier(p)
            out["reasons"] = model.explain(snap, top_k=top_k)
    else:
        predicted = predict(snap)
        for c in ("churn_probability", "risk_tier", "reasons"):
            out[c] = predicted[c].to_numpy()
    out["clv_12m"] = pd.to_numeric(snap["clv_12m"], errors="coerce").to_numpy()
    out = retention.attach_actions(out, high_value=high_value)
    cols = ["customer_id", "churn_probability", "risk_tier", "reasons", "value_at_stake", "clv_12m",
            "suggested_action", "action_text"] + (["cutoff"] if "cutoff" in out.columns else [])
    return out[cols].sort_values("value_at_stake", ascending=False, kind="stable").reset_index(drop=True)


# ============================================================================================
# evaluation protocol
# ============================================================================================
@dataclass
class Evaluation:
    """Everything one run of the protocol produced."""

    cutoff: pd.Timestamp
    horizon_days: int
    metrics: dict  # name -> metrics dict (model first, then the baselines)
    y: np.ndarray
    scores: dict  # name -> {"score", "proba"}
    scored: pd.DataFrame  # score_customers output for the evaluated customers (+ churned)
    model: ChurnModel
    baselines: Baselines
    train_cutoffs: list
    contributions: np.ndarray | None  # None without details (evaluate_protocol)
    X_eval: pd.DataFrame
    timings: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON of ``crmml evaluate churn``: keys model, recency, rfm, bgnbd (each with auc, pr_auc,
        brier, top_decile_lift, ...), plus n_customers, churn_rate and the protocol's details."""
        out: dict = {}
        for name, m in self.metrics.items():
            out[name] = {k: _clean(v) for k, v in m.items()}
        out["n_customers"] = int(len(self.y))
        out["churn_rate"] = float(np.mean(self.y))
        out["cutoff"] = str(self.cutoff.date())
        out["horizon_days"] = int(self.horizon_days)
        out["protocol"] = {
            "train_cutoffs": [str(pd.Timestamp(c).date()) for c in self.train_cutoffs],
            "validation_cutoff": self.model.validation_cutoff_,
            "booster_train_cutoffs": self.model.train_cutoffs_,
            "labels_end_on_or_before": str(self.cutoff.date()),
            "eligible": "a purchase in the 365 days before the cutoff",
            "baselines": BASELINE_DOCS,
            "baseline_probabilities": "score -> probability by centered isotonic regression fitted on the "
                                      "training snapshots (all training cutoffs)",
            "model_calibration": f"output stage '{self.model.output_kind()}' fitted on the held-out validation cutoff"
            + (f", level shifted ({self.model.level})" if self.model.seasonal_shift else ""),
            "tuned": bool(self.model.tune),
        }
        out["model_info"] = {
            "best_params": {k: _clean(v) for k, v in self.model.best_params_.items()},
            "best_iteration": self.model.best_iteration_,
            "n_features": len(self.model.feature_names_),
            "validation_auc": _clean(self.model.validation_metrics_.get("auc")),
            "seasonal_shift_logodds": _clean(float(self.model.season_offset([self.cutoff])[0]))
            if self.model.seasonal_shift else 0.0,
            "level_shift_logodds": _clean(float(self.model.level_offset([self.cutoff])[0]))
            if self.model.seasonal_shift else 0.0,
            "level_forecasts": self.model.level_forecasts(self.cutoff) if self.model.seasonal_shift else {},
            "chosen": self.model.output_kind(),
            "fallback": getattr(self.model, "fallback_", None),
            "choice_scores": getattr(self.model, "choice_scores_", {}),
            "study": self.model.study_summary_,
        }
        out["calibration_curve"] = self.calibration
        out["tiers"] = _tier_table(self.scored)
        out["timings_s"] = self.timings
        out["notes"] = self.notes
        return out


def _clean(v):
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _tier_table(scored: pd.DataFrame) -> list[dict]:
    rows = []
    for tier in retention.TIERS:
        g = scored[scored["risk_tier"] == tier]
        rows.append({
            "tier": tier,
            "customers": int(len(g)),
            "mean_probability": _clean(g["churn_probability"].mean()) if len(g) else None,
            "observed_churn_rate": _clean(g["churned"].mean()) if len(g) and "churned" in g else None,
            "value_at_stake": _clean(g["value_at_stake"].sum()) if "value_at_stake" in g else None,
        })
    return rows


def evaluate_protocol(source, cutoff, horizon_days: int = DEFAULT_HORIZON, tune: bool = True, n_trials: int = 10,
                      step_days: int = 30, min_history_days: int = 60, model_kwargs: dict | None = None,
                      engine: str = "duckdb", progress: Callable[[str], None] | None = None,
                      sample_customers: int | None = SAMPLE_CUSTOMERS, details: bool = True) -> Evaluation:
    """Train on labels that end on or before ``cutoff``; score the customers eligible at ``cutoff``; compare
    the model with the baselines on the same customers (see the module docstring).
    ``sample_customers``: train and evaluate on a hash sample of about this many customers (None: all;
    see :data:`SAMPLE_CUSTOMERS`).

    ``details``: also score the customers as the CRM would (:func:`score_customers`: reasons, CLV, value
    at stake, action) and keep their SHAP contributions, what :func:`write_report` draws; False: the
    metrics only (``scored`` has the probability and tier, ``contributions`` is None)."""
    from features.bgnbd import purchase_days
    from features.sampling import in_sample
    from training.clv import CLVModel

    say = progress or (lambda msg: log.info(msg))
    timings: dict = {}
    t0 = time.perf_counter()
    cutoff = pd.Timestamp(cutoff).normalize()
    src, events = _tables(source)
    first, last = events["timestamp"].min(), events["timestamp"].max()
    if cutoff + pd.Timedelta(days=horizon_days) > last + pd.Timedelta(seconds=1):
        raise ValueError(
            f"cutoff {cutoff.date()} + {horizon_days} days ends after the last event ({last}): no labels to evaluate; "
            f"use a cutoff on or before {(last.normalize() - pd.Timedelta(days=horizon_days)).date()}"
        )
    cuts = backtest_cutoffs(first, cutoff, horizon_days, step_days, min_history_days)[:-1]
    if len(cuts) < 2:
        raise ValueError(f"only {len(cuts)} training cutoff(s) fit between the first event ({first.date()}) and "
                         f"{cutoff.date()} - {horizon_days} days; use a later cutoff or a smaller --step-days")
    say(f"building snapshots for {len(cuts)} training cutoffs + the evaluation cutoff")
    frame = feature_matrix(src, cuts + [cutoff], horizon_days=horizon_days, engine=engine, events=events,
                           sample=sample_customers)
    n_all = int(events["customer_id"].nunique())
    if sample_customers and n_all > int(sample_customers):  # the CLV of the sampled customers only
        say(f"sampled about {int(sample_customers):,} of {n_all:,} customers (by id hash)")
        events = events[in_sample(events["customer_id"].to_numpy(), sample_customers, n_all)]
    timings["features"] = round(time.perf_counter() - t0, 1)
    frame = frame[frame["eligible"]]
    train = frame[(frame["cutoff"] < cutoff) & frame["label_available"] & frame["churned"].notna()]
    # guard: every training label window ends on or before the evaluation cutoff
    if not (train["cutoff"] + pd.Timedelta(days=horizon_days) <= cutoff).all():  # python -O keeps this guard
        raise RuntimeError(f"a training label window ends after the evaluation cutoff {cutoff}: leakage")
    test = frame[(frame["cutoff"] == cutoff) & frame["churned"].notna()].reset_index(drop=True)
    if test.empty or test["churned"].nunique() < 2:
        raise ValueError(f"no customers with both outcomes at {cutoff.date()}")

    t1 = time.perf_counter()
    say(f"training on {len(train):,} snapshots ({train['cutoff'].nunique()} cutoffs)"
        + (f", tuning with {n_trials} Optuna trials" if tune else ""))
    model = ChurnModel(horizon_days=horizon_days, tune=tune, n_trials=n_trials, **(model_kwargs or {}))
    model.fit(train)
    timings["model_fit"] = round(time.perf_counter() - t1, 1)
    baselines = Baselines().fit(train, train["churned"].to_numpy())

    t2 = time.perf_counter()
    y = test["churned"].to_numpy(dtype=float)
    p_model = model.predict_proba(test)[:, 1]
    scores = {"model": {"score": p_model, "proba": p_model}}
    for name, s in baselines.predict(test).items():
        scores[name] = s
    metrics = {name: cm.evaluate(y, s["proba"], score=s["score"]) for name, s in scores.items()}
    metrics["model"]["auc_uncalibrated"] = cm.roc_auc(y, model.decision_function(test))

    if details:
        say("scoring customers: reasons, CLV, value at stake")
        clv_model = CLVModel().fit(events, cutoff, days=purchase_days(events))
        clv = clv_model.predict()
        # TreeSHAP is the costly part of scoring: computed once, for the reasons and the SHAP plot alike,
        # with the probabilities already computed for the metrics
        contrib = model.contributions(test)

        def predicted(snap: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"churn_probability": p_model, "risk_tier": model.risk_tier(p_model),
                                 "reasons": retention.reasons_from_contributions(contrib, snap,
                                                                                 model.feature_names_)})

        scored = score_customers(model, test, clv, predict=predicted)
    else:  # metrics only (``crmml evaluate churn --cutoffs N``): no reasons, CLV or value at stake
        contrib = None
        scored = pd.DataFrame({"customer_id": test["customer_id"].astype(str).to_numpy(),
                               "churn_probability": p_model, "risk_tier": model.risk_tier(p_model)})
        if "cutoff" in test.columns:
            scored["cutoff"] = test["cutoff"].to_numpy()
    scored = scored.merge(test[["customer_id", "churned"]].astype({"customer_id": str}), on="customer_id",
                          how="left")
    timings["scoring"] = round(time.perf_counter() - t2, 1)
    timings["total"] = round(time.perf_counter() - t0, 1)
    notes = []
    if model.split_info_.get("note"):
        notes.append(model.split_info_["note"])
    return Evaluation(
        cutoff=cutoff, horizon_days=horizon_days, metrics=metrics, y=y, scores=scores, scored=scored,
        model=model, baselines=baselines, train_cutoffs=cuts, contributions=contrib, X_eval=test,
        timings=timings, calibration={"model": cm.calibration_table(y, p_model, 10, "quantile")}, notes=notes,
    )


# ============================================================================================
# report
# ============================================================================================
EVALUATION_NAME = "churn_evaluation"  # reports/churn_evaluation.json (+ _plots/): the backtest at the newest cutoff


def evaluation_json(reports_dir: str | Path) -> Path:
    """Where :func:`write_report` puts the backtest's JSON."""
    return Path(reports_dir) / f"{EVALUATION_NAME}.json"


def evaluation_plots(reports_dir: str | Path) -> Path:
    """The folder where :func:`write_report` puts the backtest's PNG plots."""
    return Path(reports_dir) / f"{EVALUATION_NAME}_plots"


def write_report(ev: Evaluation, out_dir: str | Path, name: str = EVALUATION_NAME) -> dict:
    """Write ``<name>.json`` and the PNG plots in ``<name>_plots/`` under ``out_dir``; returns
    ``{"json": path, "figures": {kind: path}}``. The page that shows them is ``crmml report``'s
    churn evaluation section (``pipelines.report``): one report implementation."""
    from features.workspace import atomic_write, atomic_write_json
    from training import churn_plots as plots

    out_dir = Path(out_dir)
    fig_dir = out_dir / f"{name}_plots"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc": plots.roc_figure(ev.y, ev.scores),
        "precision_recall": plots.pr_figure(ev.y, ev.scores),
        "calibration": plots.calibration_figure(ev.y, ev.scores),
        "gains_lift": plots.gains_figure(ev.y, ev.scores),
        "shap_summary": plots.shap_summary_figure(ev.contributions, ev.X_eval, ev.model.feature_names_),
        "tiers": plots.tiers_figure(ev.scored),
    }
    paths: dict = {}
    for key, fig in figures.items():
        path = fig_dir / f"{key}.png"
        atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, dpi=110, format="png"))
        plots.close(fig)
        paths[key] = path
    data = ev.to_json()
    json_path = out_dir / f"{name}.json"
    atomic_write_json(json_path, data)
    return {"json": json_path, "figures": paths}


# ============================================================================================
# final training and the registry gate
# ============================================================================================
def train_final(source, horizon_days: int = DEFAULT_HORIZON, tune: bool = True, n_trials: int = 10,
                step_days: int = 30, min_history_days: int = 60, model_kwargs: dict | None = None,
                engine: str = "duckdb", progress: Callable[[str], None] | None = None,
                sample_customers: int | None = SAMPLE_CUSTOMERS) -> tuple[ChurnModel, dict]:
    """Train on every labelled snapshot (cutoffs back from the last labelled one) of a hash sample of about
    ``sample_customers`` customers (None: all; see :data:`SAMPLE_CUSTOMERS`); returns (model, info)."""
    say = progress or (lambda msg: log.info(msg))
    src, events = _tables(source, columns=["timestamp"])
    cuts = final_training_cutoffs(events["timestamp"].min(), as_of_date(events["timestamp"]), horizon_days, step_days,
                                  min_history_days)
    if len(cuts) < 2:
        raise ValueError("not enough history for two labelled cutoffs")
    say(f"building snapshots for {len(cuts)} cutoffs ({cuts[0].date()} .. {cuts[-1].date()})")
    frame = feature_matrix(src, cuts, horizon_days=horizon_days, engine=engine, sample=sample_customers)
    frame = frame[frame["eligible"] & frame["label_available"] & frame["churned"].notna()]
    say(f"training on {len(frame):,} snapshots" + (f", tuning with {n_trials} Optuna trials" if tune else ""))
    model = ChurnModel(horizon_days=horizon_days, tune=tune, n_trials=n_trials, **(model_kwargs or {}))
    model.fit(frame)
    info = {
        "cutoffs": [str(c.date()) for c in cuts],
        "n_rows": int(len(frame)),
        "churn_rate": float(frame["churned"].mean()),
        "example": frame.head(5),
    }
    return model, info


def output_params(model: ChurnModel) -> dict:
    """The output stage as MLflow run parameters: ``output`` (lgbm, stack or the baseline served),
    ``fallback`` (the baseline, or "none"), ``blend`` and ``level`` (the settings)."""
    return {"output": model.output_kind(), "fallback": getattr(model, "fallback_", None) or "none",
            "blend": model.blend, "level": model.level}


def gate_evaluator(workspace) -> Callable[[str], dict]:
    """For ``crmml models promote``: score a model URI on the newest fully-labelled cutoff.

    The window is the last cutoff whose horizon ends inside the data; both the champion and the
    challenger are scored on the same customers. Returns the model metrics (auc, brier, ...).
    """
    from training.churn_pyfunc import load_churn

    cache: dict = {}

    def evaluate(model_uri: str) -> dict:
        model = load_churn(model_uri)
        horizon = int(model.horizon_days)
        key = horizon
        if key not in cache:
            src, events = _tables(workspace, columns=["timestamp"])
            c = newest_labelled_cutoff(as_of_date(events["timestamp"]), horizon)
            frame = feature_matrix(src, [c], horizon_days=horizon)
            frame = frame[frame["eligible"] & frame["churned"].notna()].reset_index(drop=True)
            cache[key] = (c, frame)
        c, frame = cache[key]
        y = frame["churned"].to_numpy(float)
        p = model.predict_proba(frame)[:, 1]
        out = cm.evaluate(y, p)
        out["window"] = str(c.date())
        return out

    return evaluate


__all__ = [
    "ChurnModel", "DEFAULT_PARAMS", "EXTRA_FEATURES", "Evaluation", "evaluate_protocol",
    "gate_evaluator", "output_params", "score_customers", "train_final", "training_cutoffs",
    "write_report", "BASELINES",
]
