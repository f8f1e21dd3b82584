"""The simulated night's raws rendered by a pool process are the files the parent writes."""

from __future__ import annotations

from pathlib import Path

from skydm.prompt import NightConfig
from skydm.prompt.simulate import _survey, _write_raw_of, survey_config, write_raws
from skydm.sim import simulate_survey


def test_pool_process_writes_the_same_raws(tmp_path: Path) -> None:
    # What a pool process runs (the survey simulated again from its config,
    # then the visit rendered), called here: a pool's start would cost CI
    # seconds, and the pool adds nothing that could change the bytes.
    night = NightConfig(visits=1, detectors=2, size=96, stars=30, templates=1)
    cfg = survey_config(night)
    visits = simulate_survey(cfg).visits
    assert len(visits) == 4
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    serial = write_raws(visits, one, jobs=1)
    _survey.cache_clear()
    pooled = [_write_raw_of(cfg, (v.visit, v.detector), two) for v in visits]
    assert len({p.name for p in serial}) == 4
    for a, b in zip(serial, pooled, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name
    # Pixels released once written: a night's raws are not all held in memory.
    assert not any(v.rendered for v in visits)
