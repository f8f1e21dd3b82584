"""Benchmark of prompt processing; prints one JSON line.

Two simulated nights against a real Kafka-protocol broker (tansu), each
with its own repository and templates, served by :class:`PromptService`
with ``--workers`` worker processes:

* a night of ``--visits`` one-detector visits: ``detector_latency_p50_s``
  and ``detector_latency_p95_s`` are raw landed -> the detector's last alert
  acknowledged by Kafka (preload excluded, as Rubin's design allows), and
  ``stages_s`` the p50 seconds of every stage (``preload`` counts from the
  next-visit event, ``queue`` from the raw landing to a worker starting,
  ``export`` is the detector's outputs written after its alerts, outside
  the latency);
* a night of ``--visits`` four-detector visits: ``visit_4det_over_1det`` is
  the p50 over visits of (first raw landed -> last alert of the visit)
  divided by the same for the one-detector visits.

The cadence is long enough that visits do not queue behind each other
(``--cadence``, default 40 s at ``--speedup 1``).

Usage: ``python benchmarks/prompt.py [--size 4096 --stars 10000 --visits 5]
[--keep DIR] [--no-defer-export]``.  The defaults are reduced to fit a small shared machine; the
JSON says which size was run.

Making the templates (simulating, calibrating, warping and coadding the
template visits) is not part of a night and at 4096 pixels takes far longer
than the night itself: ``template_prep_s`` reports it apart.  With ``--keep
DIR`` the two repositories stay in ``DIR/one`` and ``DIR/four``, and a later
run with the same ``--keep DIR`` (and the same size, stars, templates and
seed) reuses their templates: each night comes under new visit numbers
after the last one there (:func:`skydm.prompt.simulate.prepare_night`), and
only that night's detector-visits are counted.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _log(line: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {line}", file=sys.stderr, flush=True)


def night_config(detectors: int, args: argparse.Namespace) -> Any:
    """The :class:`NightConfig` of a night of ``detectors`` detectors."""
    from skydm.prompt import NightConfig

    return NightConfig(
        visits=args.visits, cadence=args.cadence, detectors=detectors, size=args.size,
        stars=args.stars, templates=args.templates, speedup=args.speedup, seed=args.seed,
    )  # fmt: skip


@dataclass
class Night:
    """One served night: its timing rows and the seconds its templates took."""

    rows: list[Any]
    template_prep_s: float
    templates_made: bool


def night(root: Path, bootstrap: str, *, detectors: int, args: argparse.Namespace) -> Night:
    """Templates (made or reused), then a served night."""
    from skydm.prompt import PromptConfig, PromptService, simulate_night
    from skydm.prompt.config import load_config
    from skydm.prompt.simulate import prepare_night
    from skydm.prompt.timing import TimingStore

    cfg = night_config(detectors, args)
    t_prep = time.perf_counter()
    made = prepare_night(root, cfg, render=False, jobs=args.workers, log=_log).templates_made
    template_prep_s = time.perf_counter() - t_prep
    # The night's raws are rendered before the service starts: at 4096 pixels
    # rendering takes minutes, longer than the service's idle exit.
    prepared = prepare_night(root, cfg, render=True, jobs=args.workers, log=_log)
    config = load_config(root).updated(workers=args.workers, defer_export=args.defer_export)
    assert isinstance(config, PromptConfig)
    service = PromptService(root, bootstrap, config)
    report: dict[str, Any] = {}

    # Idle for longer than the gap between visits: otherwise the service
    # would stop after the first visit and the night's later visits go unserved.
    idle_exit_s = 10.0 + 2.0 * args.cadence / max(args.speedup, 1e-3)

    def serve() -> None:
        report["serve"] = service.run(idle_exit_s=idle_exit_s)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        # Workers start (and import) before the first event, as a deployed service's are.
        time.sleep(5.0)
        sent = simulate_night(root, bootstrap, cfg, config=config, prepared=prepared)
    finally:
        thread.join()
        service.close()
    store = TimingStore(root)
    # A kept repository holds the earlier nights' rows too: count this one's.
    tonight = set(sent.visits)
    rows = [r for r in store.rows() if r.visit in tonight]
    store.close()
    return Night(rows, template_prep_s, made)


def visit_latencies(rows: list[Any]) -> list[float]:
    """Per visit: first raw landed -> last alert acknowledged (visits fully done only)."""
    by: dict[int, list[Any]] = {}
    for r in rows:
        by.setdefault(r.visit, []).append(r)
    out = []
    for rs in by.values():
        if all(r.state == "done" and "raw" in r.stamps for r in rs):
            out.append(max(r.stamps["alerts"] for r in rs) - min(r.stamps["raw"] for r in rs))
    return out


def prepare_only(args: argparse.Namespace) -> None:
    """Make the templates of both nights under ``--keep`` and print their seconds."""
    from skydm.prompt.simulate import prepare_night

    out: dict[str, Any] = {"benchmark": "prompt", "prepare_only": True, "size": args.size}
    for name, detectors in (("one", 1), ("four", 4)):
        t = time.perf_counter()
        prepared = prepare_night(
            args.keep / name, night_config(detectors, args), render=False, jobs=args.workers,
            log=_log,
        )  # fmt: skip
        out[f"template_prep_{name}_s"] = round(time.perf_counter() - t, 1)
        out[f"templates_made_{name}"] = prepared.templates_made
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="detector side, pixels (512)")
    p.add_argument("--stars", type=int, default=None, help="stars per detector")
    p.add_argument("--visits", type=int, default=4, help="visits per night (4)")
    p.add_argument("--templates", type=int, default=3, help="template visits (3)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--cadence", type=float, default=40.0, help="seconds between visits (40)")
    p.add_argument("--speedup", type=float, default=1.0, help="simulated s per wall s (1)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--no-defer-export", dest="defer_export", action="store_false",
        help="each worker exports a detector before its next one (PromptConfig.defer_export off)",
    )  # fmt: skip
    p.add_argument(
        "--keep", type=Path, default=None,
        help="keep the repositories here and reuse their templates on the next run",
    )  # fmt: skip
    p.add_argument(
        "--prepare-only", action="store_true",
        help="make (or find) the templates of both nights in --keep DIR, serve no night",
    )  # fmt: skip
    args = p.parse_args()
    if args.prepare_only and args.keep is None:
        p.error("--prepare-only needs --keep DIR (where the templates are kept)")
    if args.prepare_only:
        prepare_only(args)
        return

    from skydm.alerts.localbroker import LocalBroker
    from skydm.prompt.timing import percentile, summarise

    work = Path(tempfile.mkdtemp(prefix="skydm-bench-prompt-")) if args.keep is None else args.keep
    t0 = time.perf_counter()
    try:
        with LocalBroker() as broker:
            night1 = night(work / "one", broker.bootstrap, detectors=1, args=args)
        with LocalBroker() as broker:
            night4 = night(work / "four", broker.bootstrap, detectors=4, args=args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    one, four = night1.rows, night4.rows
    done = [r for r in one if r.state == "done"]
    lat = [d for r in done if (d := r.duration("latency")) is not None]
    stages = {s.stage: round(s.p50, 3) for s in summarise(done) if not math.isnan(s.p50)}
    v1, v4 = visit_latencies(one), visit_latencies(four)
    ratio = percentile(v4, 50) / percentile(v1, 50) if v1 and v4 else math.nan
    print(
        json.dumps(
            {
                "benchmark": "prompt",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "size": args.size,
                "stars_per_detector": args.stars or round(200 * (args.size / 256) ** 2),
                "detector_latency_p50_s": round(percentile(lat, 50), 3),
                "detector_latency_p95_s": round(percentile(lat, 95), 3),
                "stages_s": stages,
                "visits": len({r.visit for r in one}),
                "detectors_per_visit": 1,
                "workers": args.workers,
                "defer_export": args.defer_export,
                "visit_4det_over_1det": round(ratio, 3),
                "visit_latency_1det_p50_s": round(percentile(v1, 50), 3),
                "visit_latency_4det_p50_s": round(percentile(v4, 50), 3),
                "states_1det": {s: sum(r.state == s for r in one) for s in {r.state for r in one}},
                "states_4det": {
                    s: sum(r.state == s for r in four) for s in {r.state for r in four}
                },
                "cadence_s": args.cadence / args.speedup,
                "wall_s": round(time.perf_counter() - t0, 1),
                # Not part of a night: 0-ish when --keep reused the templates.
                "template_prep_s": round(night1.template_prep_s + night4.template_prep_s, 1),
                "templates_made": night1.templates_made or night4.templates_made,
                "night_s": round(
                    time.perf_counter() - t0 - night1.template_prep_s - night4.template_prep_s, 1
                ),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
