"""``skydm demo`` runs every stage and leaves a consistent repository.

The demo is made once per session (the ``demo_run`` fixture, the default
survey: 10 visits of 512^2, 5 in the template, alerts streamed to a broker);
these tests read it, and rerun the command on a copy.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from skydm.cli.main import main
from skydm.repo import Repository
from skydm_testing import DemoRun, require_tool

VISITS, TEMPLATE = 10, 5


@pytest.mark.slow
def test_demo_end_to_end(
    demo_run: DemoRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = demo_run.report
    assert report.visits == VISITS and report.template_visits == TEMPLATE
    assert report.diff_visits == VISITS - TEMPLATE
    with Repository.open(demo_run.repo) as repo:
        assert len(repo.query(dataset_type="raw")) == VISITS
        assert len(repo.query(dataset_type="calexp")) == VISITS
        # One template coadd per sky cell and band, in the cells the report names.
        coadds = repo.query(dataset_type="coadd")
        cells = {ref.data_id.skycell for ref in coadds}
        assert len(coadds) == len({(ref.data_id.skycell, ref.data_id.band) for ref in coadds})
        assert cells == set(report.skycell.split(",")) and len(coadds) >= 1
        assert len(repo.query(dataset_type="diff")) == VISITS - TEMPLATE
        assert repo.verify() == []
    archives = sorted((demo_run.repo / "alerts").glob("*.avro"))
    assert len(archives) == VISITS - TEMPLATE
    assert sorted(report.alert_archives) == archives
    assert (demo_run.repo / "catalog" / "DiaSource").is_dir()
    if importlib.util.find_spec("skydm.drp") is not None:
        assert (demo_run.repo / "catalog" / "Object").is_dir()
        assert "Object" in report.catalog_tables

    # The same command over the same repository (a copy: the session's stays as
    # made) finds the raws archived and the units done, and reports the same
    # survey.  Same command: the broker is part of the ap configuration, and a
    # changed configuration would make the units stale.
    repo_dir = tmp_path / "repo"
    shutil.copytree(demo_run.repo, repo_dir)
    stream = ["--kafka-bootstrap", demo_run.bootstrap] if demo_run.bootstrap else []
    assert main(["demo", "--repo", str(repo_dir), "--quiet", *stream]) == 0
    out = capsys.readouterr().out
    assert f"visits simulated and ingested : {VISITS} (512x512 pixels)" in out
    assert f"alert packets (LSST schema)   : {report.alerts}," in out
    assert "skydm serve --repo" in out
    if importlib.util.find_spec("skydm.drp") is not None:
        assert "Object (" in out
    runs = sorted((repo_dir / "pipeline" / "runs").glob("*.json"))
    assert len(runs) == 2  # drp and ap ran once each; the second demo had nothing to do
    assert (repo_dir / "catalog" / "DiaSource").is_dir()  # and kept the catalogs
    with Repository.open(repo_dir) as repo:
        assert len(repo.query(dataset_type="diff")) == VISITS - TEMPLATE
        assert repo.verify() == []


@pytest.mark.slow
def test_demo_streams_to_a_broker(demo_run: DemoRun) -> None:
    from skydm.alerts.consumer import AlertConsumer
    from skydm.alerts.schema import load_schema

    require_tool("tansu broker", demo_run.bootstrap is not None, demo_run.no_broker)
    assert demo_run.bootstrap is not None
    report = demo_run.report
    assert report.alerts > 0
    assert report.streamed == report.alerts and report.stream_pending == 0
    consumer = AlertConsumer(demo_run.bootstrap, "demo-test", [load_schema().default_topic])
    try:
        got = consumer.consume_until(report.alerts, timeout=60.0)
    finally:
        consumer.close()
    assert len({a.dia_source_id for a in got}) == report.alerts
    assert got[0].decode()["diaSource"]["diaSourceId"] == got[0].dia_source_id
