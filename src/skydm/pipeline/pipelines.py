"""Pipelines: ordered tasks with their configs; the built-ins and user YAML files.

A user pipeline is a YAML file::

    description: calibrate and coadd only
    tasks:
      calibrate: {}
      warp: {cell_size_deg: 0.05}
      coadd: {method: clipped}

Tasks run in data-flow order whatever the order in the file; each task's
mapping overrides fields of its config.  ``--config KEY=VALUE`` on the
command line overrides ``KEY`` in every task that has it, and
``--config TASK.KEY=VALUE`` in one task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from skydm.errors import BadFileError, BadValueError, require_extra
from skydm.pipeline.task import Task, TaskConfig
from skydm.pipeline.tasks import TASKS

#: The built-in pipelines: name -> (description, task names).
BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "drp": (
        "data release: calibrate -> warp -> coadd (CompareWarp) -> detect/measure -> Object",
        ("calibrate", "warp", "coadd", "measure", "object_catalog"),
    ),
    "ap": (
        "alert production: calibrate -> diffim against the coadd -> association -> alerts",
        ("calibrate", "diffim", "ap", "dia_catalog"),
    ),
}


@dataclass(frozen=True)
class Pipeline:
    """Tasks in data-flow order.

    Attributes
    ----------
    name : str
        ``drp``, ``ap`` or the YAML file's stem.
    tasks : tuple of Task
        Configured tasks, producers before consumers.
    description : str
        One line saying what it makes.
    """

    name: str
    tasks: tuple[Task, ...]
    description: str = ""

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise BadValueError("task", name, f"a task of {self.name}: {self.task_names}")

    @property
    def task_names(self) -> str:
        """The task names, comma-separated."""
        return ", ".join(t.name for t in self.tasks)


def load_pipeline(spec: str | Path | tuple[str, ...], overrides: Sequence[str] = ()) -> Pipeline:
    """A built-in pipeline by name, or a user pipeline from a YAML file.

    Parameters
    ----------
    spec : str, Path or tuple of str
        ``drp``, ``ap``, the path of a pipeline YAML file, or task names
        (what ``skydm calibrate --repo`` and the other wrappers run).
    overrides : sequence of str
        ``KEY=VALUE`` or ``TASK.KEY=VALUE`` config overrides (values in JSON
        or YAML syntax: ``0.05``, ``true``, ``bicubic``).

    Raises
    ------
    BadValueError, BadFileError
        For an unknown pipeline, task or config field, or a bad value.
    """
    text = str(spec)
    task_configs: dict[str, dict[str, Any]]
    if isinstance(spec, tuple):
        task_configs = {n: {} for n in spec}
        name, description, where = "+".join(spec), "", f"tasks {', '.join(spec)}"
    elif text in BUILTIN:
        description, names = BUILTIN[text]
        task_configs = {n: {} for n in names}
        name, where = text, f"pipeline {text}"
    elif text.endswith((".yaml", ".yml")) or Path(text).exists():
        name, description, task_configs = _read_yaml(Path(text))
        where = text
    else:
        raise BadValueError(
            "PIPELINE", text, f"a built-in pipeline ({', '.join(BUILTIN)}) or a pipeline YAML file"
        )
    _apply_overrides(task_configs, overrides)
    order = list(TASKS)
    tasks = []
    for task_name in sorted(task_configs, key=order.index):
        cls = TASKS[task_name]
        config = cls.config_class.from_overrides(
            task_configs[task_name], where=f"{where}: {task_name}"
        )
        tasks.append(cls(config))
    return Pipeline(name, tuple(tasks), description)


def _read_yaml(path: Path) -> tuple[str, str, dict[str, dict[str, Any]]]:
    yaml = require_extra("yaml", "pipeline")
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadFileError(path, f"cannot be read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadFileError(path, f"is not valid YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("tasks"), Mapping):
        raise BadFileError(path, "needs a 'tasks:' mapping of task name -> config overrides")
    configs: dict[str, dict[str, Any]] = {}
    for task_name, values in doc["tasks"].items():
        if task_name not in TASKS:
            raise BadFileError(path, f"unknown task {task_name!r}; tasks are {', '.join(TASKS)}")
        if values is not None and not isinstance(values, Mapping):
            raise BadFileError(path, f"task {task_name!r}: give its config as a mapping")
        configs[str(task_name)] = dict(values or {})
    if not configs:
        raise BadFileError(path, "lists no tasks")
    return path.stem, str(doc.get("description", "")), configs


def _apply_overrides(configs: dict[str, dict[str, Any]], overrides: Sequence[str]) -> None:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadValueError("--config", item, "KEY=VALUE or TASK.KEY=VALUE")
        value = _parse_value(raw)
        task_name, dot, field_name = key.rpartition(".")
        targets = [task_name] if dot else list(configs)
        if dot and task_name not in configs:
            raise BadValueError("--config", item, f"a task of the pipeline: {', '.join(configs)}")
        hit = False
        for name in targets:
            if field_name in _field_names(TASKS[name].config_class):
                configs[name][field_name] = value
                hit = True
        if not hit:
            raise BadValueError(
                "--config", item, f"a config field of {', '.join(targets)} (see docs/pipeline.md)"
            )


def _field_names(cls: type[TaskConfig]) -> set[str]:
    return {f.name for f in fields(cls)}


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
