"""The built-in tasks, by name."""

from skydm.pipeline.task import Task
from skydm.pipeline.tasks.ap import ApTask, DiaCatalogTask, DiffimTask
from skydm.pipeline.tasks.coadd import CoaddTask
from skydm.pipeline.tasks.objects import MeasureTask, ObjectCatalogTask
from skydm.pipeline.tasks.visit import CalibrateTask, WarpTask

#: Task name -> class, in data-flow order.
TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        CalibrateTask,
        WarpTask,
        CoaddTask,
        MeasureTask,
        ObjectCatalogTask,
        DiffimTask,
        ApTask,
        DiaCatalogTask,
    )
}

__all__ = ["TASKS"]
