"""``skydm demo`` runs every stage and leaves a consistent repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from skydm.alerts.localbroker import LocalBroker
from skydm.cli.main import main
from skydm.repo import Repository


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo_dir = tmp_path / "repo"
    args = ["demo", "--repo", str(repo_dir), "--size", "256", "--visits", "6"]
    assert main([*args, "--template-visits", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "visits simulated and ingested : 6" in out
    assert "skydm serve --repo" in out
    with Repository.open(repo_dir) as repo:
        assert len(repo.query(dataset_type="raw")) == 6
        assert len(repo.query(dataset_type="calexp")) == 6
        assert len(repo.query(dataset_type="coadd")) == 1
        assert len(repo.query(dataset_type="diff")) == 3
        assert repo.verify() == []
    archives = sorted((repo_dir / "alerts").glob("*.avro"))
    assert len(archives) == 3
    assert (repo_dir / "catalog" / "DiaSource").is_dir()
    if importlib.util.find_spec("skydm.drp") is not None:
        assert (repo_dir / "catalog" / "Object").is_dir()
        assert "Object (" in out
    # A second run over the same repository finds the raws archived, the units done.
    assert main([*args, "--template-visits", "3", "--quiet"]) == 0
    runs = sorted((repo_dir / "pipeline" / "runs").glob("*.json"))
    assert len(runs) == 2  # drp and ap ran once each; the second demo had nothing to do
    assert (repo_dir / "catalog" / "DiaSource").is_dir()  # and kept the catalogs


@pytest.mark.slow
def test_demo_streams_to_a_broker(tmp_path: Path, broker: LocalBroker) -> None:
    from skydm.alerts.consumer import AlertConsumer
    from skydm.alerts.schema import load_schema
    from skydm.pipeline.demo import run_demo

    report = run_demo(
        tmp_path / "repo",
        size=256,
        n_visits=4,
        n_template=2,
        bootstrap=broker.bootstrap,
        quiet=True,
    )
    assert report.alerts > 0
    assert report.streamed == report.alerts and report.stream_pending == 0
    consumer = AlertConsumer(broker.bootstrap, "demo-test", [load_schema().default_topic])
    try:
        got = consumer.consume_until(report.alerts, timeout=60.0)
    finally:
        consumer.close()
    assert len({a.dia_source_id for a in got}) == report.alerts
    assert got[0].decode()["diaSource"]["diaSourceId"] == got[0].dia_source_id
