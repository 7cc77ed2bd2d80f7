"""Churn metric functions on small hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import churn_metrics as cm

# 10 customers, 3 churners; scores strictly decreasing
Y = [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
P = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def test_auc_hand_computed():
    # 21 (churner, stayer) pairs; only (0.6 vs 0.7) is ordered wrongly -> 20/21
    assert cm.roc_auc(Y, P) == pytest.approx(20 / 21)
    assert math.isnan(cm.roc_auc([1, 1], [0.2, 0.3]))


def test_pr_auc_hand_computed():
    # average precision: churners at ranks 1, 2, 4 -> (1/1 + 2/2 + 3/4) / 3
    assert cm.pr_auc(Y, P) == pytest.approx((1 + 1 + 0.75) / 3)


def test_lift_and_capture_hand_computed():
    # top 10% = 1 customer, a churner: precision 1, base rate 0.3
    assert cm.lift_at(Y, P, 0.10) == pytest.approx(1 / 0.3)
    assert cm.capture_at(Y, P, 0.10) == pytest.approx(1 / 3)
    # top 30% = 3 customers, 2 churners
    assert cm.precision_at(Y, P, 0.30) == pytest.approx(2 / 3)
    assert cm.lift_at(Y, P, 0.30) == pytest.approx((2 / 3) / 0.3)
    assert cm.capture_at(Y, P, 0.30) == pytest.approx(2 / 3)
    # everyone: lift 1, capture 1
    assert cm.lift_at(Y, P, 1.0) == pytest.approx(1.0)
    assert cm.capture_at(Y, P, 1.0) == pytest.approx(1.0)
    # fractional cut: top 5% of 10 = half a customer of the first (a churner)
    assert cm.capture_at(Y, P, 0.05) == pytest.approx(0.5 / 3)


def test_lift_with_ties_counts_expected_positives():
    y, p = [1, 0, 1, 0], [1.0, 1.0, 0.0, 0.0]
    # top 25% = 1 slot inside a tied block of 2 with 1 churner -> 0.5 expected churners
    assert cm.precision_at(y, p, 0.25) == pytest.approx(0.5)
    assert cm.lift_at(y, p, 0.25) == pytest.approx(1.0)
    assert cm.capture_at(y, p, 0.5) == pytest.approx(0.5)
    # a constant score is exactly random
    assert cm.lift_at(Y, np.zeros(10), 0.1) == pytest.approx(1.0)


def test_gains_curve_endpoints_and_monotone():
    fracs, captured = cm.gains_curve(Y, P, n_points=11)
    assert fracs[0] == 0 and fracs[-1] == 1
    assert captured[0] == 0 and captured[-1] == pytest.approx(1)
    assert np.all(np.diff(captured) >= -1e-12)
    assert captured[1] == pytest.approx(1 / 3)


def test_brier_and_log_loss_hand_computed():
    assert cm.brier([1, 0], [0.8, 0.4]) == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert cm.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # clipping keeps it finite
    assert math.isfinite(cm.log_loss([1, 0], [0.0, 1.0]))


def test_ece_hand_computed():
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    # bin [0.1, 0.2): predicted 0.1, observed 0.5 -> 0.4 * 2/4; bin [0.9, 1]: 0.9 vs 1.0 -> 0.1 * 2/4
    assert cm.ece(y, p) == pytest.approx(0.4 * 0.5 + 0.1 * 0.5)
    rows = cm.calibration_table(y, p)
    assert [r["n"] for r in rows] == [2, 2]
    assert rows[0]["observed_rate"] == pytest.approx(0.5)
    # a probability of exactly 1.0 falls into the last bin, not outside
    assert cm.calibration_table([1], [1.0])[0]["bin_high"] == 1.0
    # perfectly calibrated bins -> 0
    assert cm.ece([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)


def test_evaluate_keys_and_separate_ranking_score():
    out = cm.evaluate(Y, np.full(10, 0.3), score=P)
    for key in ("auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "top_5pct_capture",
                "n_customers", "churn_rate"):
        assert key in out
    assert out["auc"] == pytest.approx(20 / 21)  # ranked by score
    assert out["ece"] == pytest.approx(0.0)  # constant 0.3 = base rate
    assert out["n_customers"] == 10 and out["churn_rate"] == pytest.approx(0.3)


def test_input_validation():
    with pytest.raises(ValueError):
        cm.brier([1, 0], [0.5])
    with pytest.raises(ValueError):
        cm.brier([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError):
        cm.capture_at(Y, P, 0.0)
