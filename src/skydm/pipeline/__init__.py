"""Pipelines that chain the stages: per-visit calibration and the end-to-end demo."""

from skydm.pipeline.calibrate import calibrate_raw

__all__ = ["calibrate_raw"]
