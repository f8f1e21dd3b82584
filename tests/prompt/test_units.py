"""Events, config, lock cells, percentiles and the Prometheus endpoint (no broker)."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import pytest

from skydm.errors import BadFileError, BadValueError
from skydm.prompt.config import PromptConfig, load_config, save_config
from skydm.prompt.events import DetectorPointing, NextVisit, RawArrival, parse_event
from skydm.prompt.locks import region_cells
from skydm.prompt.timing import Metrics, TimingStore, percentile, summarise


def _event() -> NextVisit:
    return NextVisit(
        "skysim", 12, "r", 150.0, 2.0, 30.0, 1.7e9,
        (DetectorPointing(0, 149.99, 2.0), DetectorPointing(1, 150.01, 2.0)),
    )  # fmt: skip


def test_events_round_trip_through_json() -> None:
    ev = _event()
    assert parse_event(ev.to_json()) == ev
    raw = RawArrival("skysim", 12, 1, "r", 1.7e9 + 31, "/x.fits")
    assert parse_event(raw.to_json()) == raw


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"visit": -1}, "field visit"),
        ({"dec": 91}, "field dec"),
        ({"detectors": []}, "field detectors"),
        ({"exptime": 0}, "field exptime"),
        ({"kind": "nope"}, '"kind"'),
    ],
)
def test_bad_events_are_named(change: dict[str, object], named: str) -> None:
    doc = json.loads(_event().to_json())
    doc.update(change)
    with pytest.raises(BadValueError) as err:
        parse_event(json.dumps(doc).encode(), where="topic t offset 3")
    assert "topic t offset 3" in str(err.value) and named in str(err.value)


def test_not_json_is_named() -> None:
    with pytest.raises(BadValueError, match="a JSON document"):
        parse_event(b"{nope", where="m")


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = PromptConfig()
    assert cfg.timeout_for(30.0) == 80.0  # Rubin's rule: 2 x exptime + 20 s
    assert PromptConfig(raw_timeout_s=5).timeout_for(30.0) == 5.0
    for bad in ({"workers": 0}, {"raw_timeout_s": -1.0}, {"lock_cell_deg": 0.0},
                {"pipeline": ("nokey",)}, {"next_visit_topic": "a b"},
                {"session_timeout_s": 3.0}, {"worker_threads": 0},
                {"defer_export": "yes"}, {"defer_export_max": 0}):  # fmt: skip
        with pytest.raises(BadValueError):
            PromptConfig(**bad)  # type: ignore[arg-type]
    save_config(tmp_path, PromptConfig(workers=3, pipeline=("ra0=1",)))
    assert load_config(tmp_path) == PromptConfig(workers=3, pipeline=("ra0=1",))
    (tmp_path / "prompt" / "config.json").write_text('{"wrokers": 3}')
    with pytest.raises(BadFileError, match="wrokers"):
        load_config(tmp_path)


def test_region_cells_cover_the_region_and_wrap() -> None:
    assert region_cells([(10.1, 10.2)], (2.1, 2.2), 0.5) == ["20_4"]
    assert region_cells([(10.4, 10.6)], (2.4, 2.6), 0.5) == ["20_4", "20_5", "21_4", "21_5"]
    # Across RA 0: two RA ranges, cells on both sides.
    cells = region_cells([(359.9, 360.0), (0.0, 0.1)], (0.0, 0.1), 0.5)
    assert cells == ["0_0", "719_0", "720_0"]


def test_percentile_and_summary(tmp_path: Path) -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isnan(percentile([], 95))
    store = TimingStore(tmp_path)
    for det in range(3):
        store.expect("skysim", 5, det, "r", 100.0)
        store.arrived("skysim", 5, det, "r", 130.0)
        for stage, t in (("preload", 101), ("start", 131), ("calibrate", 132 + det),
                         ("diffim", 135 + det), ("association", 136 + det),
                         ("alerts", 137 + det)):  # fmt: skip
            store.stamp("skysim", 5, det, stage, float(t))
        store.finish("skysim", 5, det, "done", n_sources=4, n_alerts=4)
    rows = store.rows()
    store.close()
    by = {s.stage: s for s in summarise(rows)}
    assert by["latency"].n == 3 and by["latency"].p50 == 8.0  # 7, 8, 9 s
    assert by["calibrate"].p50 == 2.0 and by["preload"].p50 == 1.0


def test_metrics_endpoint_serves_stage_histograms(tmp_path: Path) -> None:
    store = TimingStore(tmp_path)
    store.expect("skysim", 1, 0, "r", 10.0)
    store.arrived("skysim", 1, 0, "r", 40.0)
    for stage, t in (("start", 40.5), ("calibrate", 42.0), ("diffim", 44.0),
                     ("association", 45.0), ("alerts", 45.5)):  # fmt: skip
        store.stamp("skysim", 1, 0, stage, t)
    store.finish("skysim", 1, 0, "done", n_sources=3, n_alerts=3)
    row = store.rows()[0]
    store.close()
    metrics = Metrics(port=0)
    try:
        metrics.observe(row)
        assert metrics.port is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        metrics.close()
    assert 'skydm_prompt_stage_seconds_count{stage="calibrate"} 1.0' in text
    assert 'skydm_prompt_stage_seconds_sum{stage="latency"} 5.5' in text
    assert 'skydm_prompt_detectors_total{state="done"} 1.0' in text
    assert "skydm_prompt_alerts_total 3.0" in text


def test_the_table_is_a_durable_queue(tmp_path: Path) -> None:
    import sqlite3

    # A table from before the durable queue gets the job's columns on opening.
    (tmp_path / "prompt").mkdir()
    old = sqlite3.connect(tmp_path / "prompt" / "prompt.sqlite3")
    cols = ", ".join(f"t_{s} REAL" for s in ("event", "raw", "preload", "start", "calibrate",
                                            "diffim", "association", "alerts"))  # fmt: skip
    old.execute(
        "CREATE TABLE detector_visit (instrument TEXT NOT NULL, visit INTEGER NOT NULL, "
        "detector INTEGER NOT NULL, band TEXT NOT NULL, state TEXT NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER, n_sources INTEGER, "
        f"n_alerts INTEGER, error TEXT, {cols}, PRIMARY KEY (instrument, visit, detector))"
    )
    old.execute("INSERT INTO detector_visit VALUES ('skysim',1,0,'r','done',1,NULL,2,2,NULL,"
                "1,2,3,4,5,6,7,8)")  # fmt: skip
    old.commit()
    old.close()
    store = TimingStore(tmp_path)
    assert store.open_jobs() == [] and store.rows()[0].state == "done"
    # A raw notified before its event makes a row, but no job (no centre, no deadline).
    store.arrived("skysim", 2, 1, "r", 50.0)
    assert store.open_jobs() == []
    for det in (0, 1, 2):
        store.expect("skysim", 2, det, "r", 40.0, ra=150.0 + det, dec=2.0, deadline=120.0)
    store.stamp("skysim", 2, 0, "preload", 41.0)
    store.stamp("skysim", 2, 0, "preload", 99.0, keep=True)  # a re-load keeps the first
    store.set_state("skysim", 2, 1, "ready")
    assert store.start_attempt("skysim", 2, 0, 1234) == 1
    store.finish("skysim", 2, 2, "timed_out", error="no raw")
    store.close()
    store = TimingStore(tmp_path)  # as a restarted service reads it
    jobs = {r.detector: r for r in store.open_jobs()}
    store.close()
    assert {d: r.state for d, r in jobs.items()} == {0: "running", 1: "ready"}
    assert jobs[1].stamps["raw"] == 50.0 and jobs[1].ra == 151.0 and jobs[1].deadline == 120.0
    # The preload happened on the event: a processing attempt keeps its stamp.
    assert jobs[0].stamps["preload"] == 41.0 and jobs[0].pid == 1234


def test_a_raw_found_in_the_registry_is_stamped_as_landed(tmp_path: Path) -> None:
    """Without its Kafka notice (a restarted service's consumer may still wait
    for the group to rebalance) a raw found by the registry poll makes the
    detector ready and stamps its arrival, so its latency is still measured."""
    import numpy as np
    from astropy.io import fits

    from skydm.prompt.service import PromptService, ServeReport
    from skydm.prompt.timing import now
    from skydm.repo import DataId, Repository

    with Repository.open(tmp_path, create=True) as repo:
        store = TimingStore(tmp_path)
        store.expect("skysim", 7, 0, "r", now(), ra=150.0, dec=2.0, deadline=now() + 600)
        store.close()
        service = PromptService(tmp_path, "127.0.0.1:9", PromptConfig())
        try:
            service._resume(ServeReport(), lambda _: None)
            service._check_waiting(repo, ServeReport(), lambda _: None)
            assert service.store.row("skysim", 7, 0).state == "waiting"  # no raw yet
            hdu = fits.PrimaryHDU(np.zeros((4, 4), dtype=np.int32))
            repo.put_hdulist(fits.HDUList([hdu]), "raw", DataId("skysim", detector=0, visit=7,
                                                                 band="r"))  # fmt: skip
            before = now()
            service._last_registry_poll = 0.0  # the next check polls the registry
            service._check_waiting(repo, ServeReport(), lambda _: None)
            row = service.store.row("skysim", 7, 0)
            assert row.state == "ready" and before <= row.stamps["raw"] <= now()
        finally:
            service.close()
