"""The export after the alerts: a worker killed while it writes a detector's outputs.

A detector's datasets go from task to task in memory and are written to the
repository only after its alerts are acknowledged (``skydm.prompt.handoff``).
A real worker process (``process_detector``, real tansu broker) is killed
with SIGKILL once its calexp is written and before the rest; the retry must
compute the detector again, send no alert twice (an independent consumer
counts them), and register every output with its file and a provenance
that names the inputs' current checksums.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import DETECTORS, SIZE, assert_every_alert_once
from skydm.alerts.localbroker import LocalBroker
from skydm.prompt.simulate import NightConfig, prepare_night
from skydm.prompt.timing import STAMPS, TimingStore
from skydm.prompt.worker import DetectorJob, process_detector
from skydm.repo import DataId, Repository

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

# Runs one detector in a fresh process whose export writes the first held
# output (the calexp) and then dies by SIGKILL, as a worker killed mid-write.
_EXPORT_AND_DIE = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from skydm.prompt import handoff, worker

    real = handoff.Handoff.export

    def die(self, repo):
        self.exports = self.exports[:1]
        real(self, repo)
        print("exported", self.exports[0].key.dataset_type, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    handoff.Handoff.export = die
    with open(sys.argv[1], "rb") as fh:
        worker.process_detector(pickle.load(fh))
    """
)


def test_a_worker_killed_during_its_export_loses_and_duplicates_nothing(
    repo: Path, broker: LocalBroker
) -> None:
    from skydm.archive import ingest_files

    # The focal plane of the templates, with only its first detector's raw rendered.
    night = NightConfig(
        visits=1, detectors=DETECTORS, size=SIZE, templates=3,
        missing=tuple((1, d) for d in range(1, DETECTORS)),
    )  # fmt: skip
    prepared = prepare_night(repo, night)
    visit = min(prepared.visits)
    sim, raw = prepared.visits[visit][0]
    assert raw is not None
    with Repository.open(repo, create=False) as r:
        result = ingest_files(r, [raw])
    assert result.ok, result.results[0].line()
    data_id = result.results[0].data_id
    assert data_id is not None
    ny, nx = sim.config.shape
    ra, dec = sim.wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    job = DetectorJob(
        str(repo), data_id.instrument, visit, int(data_id.detector), night.band,
        float(ra) % 360.0, float(dec), time.time() + 600, broker.bootstrap, prepared.prompt,
    )  # fmt: skip
    store = TimingStore(repo)
    store.expect(*job.key, job.band, time.time(), ra=job.ra, dec=job.dec, deadline=job.deadline)
    store.arrived(*job.key, job.band, time.time())
    store.close()
    job_file = repo.parent / "job.pickle"
    job_file.write_bytes(pickle.dumps(job))

    killed = subprocess.run(
        [sys.executable, "-c", _EXPORT_AND_DIE, str(job_file)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "exported calexp" in killed.stdout
    store = TimingStore(repo)
    row = store.row(*job.key)
    store.close()
    # Killed after its alerts were acknowledged, during the export.
    assert row is not None and row.state == "running" and row.attempts == 1
    assert "alerts" in row.stamps and "export" not in row.stamps
    with Repository.open(repo, create=False) as r:
        first_calexp = r.find("calexp", data_id)
        assert first_calexp is not None
        assert [t for t in ("diff", "dia_src", "alert_summary") if r.find(t, data_id)] == []

    outcome = process_detector(job)  # the retry, as the service would send it
    assert outcome.state == "done" and outcome.attempt == 2, outcome
    store = TimingStore(repo)
    rows = store.rows()
    store.close()
    assert set(STAMPS) <= set(rows[0].stamps)
    assert rows[0].stamps["alerts"] <= rows[0].stamps["export"]

    with Repository.open(repo, create=False) as r:
        refs = {t: r.find(t, data_id) for t in ("calexp", "diff", "dia_src", "alert_summary")}
        assert all(ref is not None for ref in refs.values()), refs
        assert r.find("diff_template", data_id) is None  # handed over in memory only
        # The retry computed the same calexp (the alerts' source is the one stored).
        assert refs["calexp"].checksum == first_calexp.checksum  # type: ignore[union-attr]
        summary = json.loads(r.get_bytes("alert_summary", data_id))  # checksum verified
        assert summary["resumed"] is True and summary["n_sources"] == outcome.n_sources
        for t in ("calexp", "diff", "dia_src"):
            r.get_bytes(t, data_id)  # every file present and intact
        checksums = {t: ref.checksum for t, ref in refs.items() if ref is not None}
        prov = refs["alert_summary"].meta["provenance"]  # type: ignore[union-attr]
        assert {i["type"]: i["checksum"] for i in prov["inputs"]} == {
            t: checksums[t] for t in ("calexp", "diff", "dia_src")
        }
        diff_inputs = refs["diff"].meta["provenance"]["inputs"]  # type: ignore[union-attr]
        assert {"type": "calexp", "data_id": DataId.as_dict(data_id),
                "checksum": checksums["calexp"]} in diff_inputs  # fmt: skip

    assert_every_alert_once(repo, broker.bootstrap, rows)
