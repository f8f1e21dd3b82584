"""Acceptance: the demo's alerts, scored by the shipped model, judged by truth."""

from __future__ import annotations

import numpy as np
import pytest

from skydm.reliability import packaged_model
from skydm.reliability.sample import label_alerts
from skydm.reliability.truth import IGNORED, REAL
from skydm_testing import DemoRun


@pytest.mark.slow
def test_demo_alerts_at_reliability_half_are_complete_and_pure(demo_run: DemoRun) -> None:
    # The demo's own survey (seed 42, 10 visits of 512^2, made once per
    # session): never trained on (the shipped model's training seeds are 100-115).
    report = demo_run.report
    alerts = label_alerts(report.alert_archives, 42)
    assert len(alerts) == report.alerts > 50
    # Every packet carries the score and the model's version.
    assert (alerts["reliabilityVersion"] == packaged_model().version).all()
    rel = np.asarray(alerts["reliability"])
    assert np.isfinite(rel).all() and (rel >= 0).all() and (rel <= 1).all()

    labels = np.asarray(alerts["label"])
    real = np.isin(labels, REAL)
    counted = ~np.isin(labels, IGNORED)  # moving objects are neither
    kept = rel >= 0.5
    assert real.sum() >= 20
    assert (kept & real).sum() >= 0.95 * real.sum(), f"kept {(kept & real).sum()}/{real.sum()}"
    purity = (kept & real).sum() / (kept & counted).sum()
    assert purity >= 0.9, f"{(kept & counted & ~real).sum()} bogus of {(kept & counted).sum()} kept"
