"""``skydm prompt status``: states of the detector-visits and p50/p95 per stage."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skydm.prompt.timing import STATES, DetectorVisit, StageSummary, TimingStore, summarise


@dataclass(frozen=True)
class PromptStatus:
    """The repository's prompt-processing record, summarised."""

    counts: dict[str, int]
    stages: list[StageSummary]
    problems: list[DetectorVisit]
    visits: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN percentiles become ``None``)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "visits": self.visits,
            "detector_visits": self.counts,
            "stages": {
                s.stage: {"n": s.n, "p50_s": num(s.p50), "p95_s": num(s.p95), "max_s": num(s.max)}
                for s in self.stages
            },
            "problems": [
                {"visit": r.visit, "detector": r.detector, "state": r.state, "error": r.error}
                for r in self.problems
            ],
        }

    def lines(self) -> list[str]:
        """A table for humans."""
        total = sum(self.counts.values())
        states = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n) or "none"
        out = [f"{self.visits} visits, {total} detector-visits: {states}", ""]
        out.append(f"{'stage':<12} {'n':>5} {'p50 s':>9} {'p95 s':>9} {'max s':>9}")
        for s in self.stages:
            cells = [
                f"{x:9.3f}" if not math.isnan(x) else f"{'-':>9}" for x in (s.p50, s.p95, s.max)
            ]
            out.append(f"{s.stage:<12} {s.n:>5} {' '.join(cells)}")
        for r in self.problems:
            out.append(f"{r.state}: visit {r.visit} detector {r.detector}: {r.error or ''}")
        return out


def prompt_status(root: str | Path) -> PromptStatus:
    """Summarise ``<repo>/prompt/prompt.sqlite3``.

    Stage percentiles are over the detector-visits that finished (``done``);
    ``latency`` is raw landed -> last alert acknowledged.
    """
    store = TimingStore(root)
    try:
        rows = store.rows()
    finally:
        store.close()
    counts = {s: sum(1 for r in rows if r.state == s) for s in STATES}
    done = [r for r in rows if r.state == "done"]
    return PromptStatus(
        counts=counts,
        stages=summarise(done),
        problems=[r for r in rows if r.state in ("timed_out", "failed")],
        visits=len({r.visit for r in rows}),
    )
