"""Pipelines over a repository: tasks, the graph of work units, executors, provenance.

>>> from skydm.pipeline import run_pipeline
>>> outcome = run_pipeline("drp", "skydm-repo", where="band = 'r'")  # doctest: +SKIP

``calibrate_raw`` (raw -> calexp) is the calibration the ``calibrate`` task
runs; ``demo.run_demo`` runs the built-in pipelines on a simulated survey.
See ``docs/pipeline.md``.
"""

from skydm.pipeline.calibrate import calibrate_raw
from skydm.pipeline.graph import Graph, build_graph, plan
from skydm.pipeline.pipelines import BUILTIN, Pipeline, load_pipeline
from skydm.pipeline.runner import RunOutcome, run_pipeline
from skydm.pipeline.task import Connection, DatasetKey, Task, TaskConfig, WorkUnit

__all__ = [
    "BUILTIN",
    "Connection",
    "DatasetKey",
    "Graph",
    "Pipeline",
    "RunOutcome",
    "Task",
    "TaskConfig",
    "WorkUnit",
    "build_graph",
    "calibrate_raw",
    "load_pipeline",
    "plan",
    "run_pipeline",
]
