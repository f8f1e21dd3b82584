"""``skydm transfer``: checksummed, parallel, idempotent, resumable after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skydm.archive import ingest_files
from skydm.archive.transfer import TransferConfig, transfer
from skydm.cli.main import main
from skydm.repo import Repository

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def summit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with 6 simulated raws (the source site)."""
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    tmp = tmp_path_factory.mktemp("summit")
    cfg = SurveyConfig(seed=8, shape=(200, 200), n_visits=6, n_stars=80, n_galaxies=10)
    paths = write_survey(simulate_survey(cfg), tmp / "raws", clean=False)
    with Repository.open(tmp / "repo") as repo:
        assert ingest_files(repo, paths).ok
    return tmp / "repo"


def _checksums(root: Path) -> dict[str, str]:
    if not (root / "skydm-repo.json").exists():
        return {}
    with Repository.open(root, create=False) as repo:
        return {str(r.data_id): r.checksum for r in repo.query(dataset_type="raw")}


def test_transfer_copies_everything_checksummed_and_is_idempotent(summit: Path, tmp_path: Path):
    dest_root = tmp_path / "base"
    with Repository.open(summit) as src, Repository.open(dest_root) as dest:
        report = transfer(src, dest, TransferConfig(streams=3, part_bytes=16384))
        assert report.ok and [r.status for r in report.results] == ["sent"] * 6
        sizes = sum(r.size for r in src.query(dataset_type="raw"))
        assert report.bytes_sent == sizes  # each byte once
        assert all(r.parts > 1 for r in report.results)
        ref = dest.query(dataset_type="raw")[0]
        record = ref.meta["transfer"]
        assert record["from"] == str(src.root) and record["source_sha256"] == ref.checksum
        assert ref.meta["source_name"]  # ingest's metadata travels too
        assert dest.verify() == [] and dest.unregistered() == []
        again = transfer(src, dest, TransferConfig(streams=3, part_bytes=16384))
        assert [r.status for r in again.results] == ["present"] * 6 and again.bytes_sent == 0
    assert _checksums(dest_root) == _checksums(summit)


def test_a_part_corrupted_in_transit_is_detected_and_resent(
    summit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKYDM_TEST_CORRUPT_PART", "5")
    with Repository.open(summit) as src, Repository.open(tmp_path / "base") as dest:
        report = transfer(src, dest, TransferConfig(streams=1, part_bytes=16384))
        assert report.ok
        assert sum(r.parts_resent for r in report.results) == 1
        sizes = sum(r.size for r in src.query(dataset_type="raw"))
        assert report.bytes_sent == sizes + 16384  # the damaged part went twice
        resent = next(r for r in report.results if r.parts_resent)
        got = dest.get_bytes("raw", resent.ref.data_id)
        assert got == src.get_bytes("raw", resent.ref.data_id)
    assert _checksums(tmp_path / "base") == _checksums(summit)


def test_kill_9_then_rerun_sends_only_what_is_missing(summit: Path, tmp_path: Path, capsys):
    dest_root = tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": str(SRC), "SKYDM_TEST_PAUSE": "register:4"}
    cmd = [sys.executable, "-m", "skydm", "transfer", "--from", str(summit), "--to",
           str(dest_root), "--streams", "1", "--part-mb", "0.016", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if "skydm-test-pause register 4" in line:
            break
        assert time.monotonic() < deadline, "the transfer never reached the pause point"
    os.kill(proc.pid, signal.SIGKILL)  # the 4th file is in place but not registered
    proc.wait(timeout=30)
    done = _checksums(dest_root)
    assert len(done) == 3
    with Repository.open(summit) as src:
        missing = sum(r.size for r in src.query(dataset_type="raw") if str(r.data_id) not in done)
    args = ["transfer", "--from", str(summit), "--to", str(dest_root), "--part-mb", "0.016"]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("sent: raw") == 3
    mb = float(out.rsplit("; ", 1)[1].split(" MB")[0])
    assert mb == pytest.approx(missing / 1e6, abs=0.05)  # no completed file re-sent
    assert _checksums(dest_root) == _checksums(summit)
    with Repository.open(dest_root) as dest:
        assert dest.verify() == [] and dest.unregistered() == []


def test_where_conflicts_and_bad_options(summit: Path, tmp_path: Path, capsys) -> None:
    dest_root = tmp_path / "base"
    assert main(["transfer", "--from", str(summit), "--to", str(dest_root),
                 "--where", "visit <= 2", "--quiet"]) == 0  # fmt: skip
    assert len(_checksums(dest_root)) == 2
    capsys.readouterr()
    assert main(["transfer", "--from", str(summit), "--to", str(dest_root),
                 "--streams", "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--streams" in err[0]
    assert main(["transfer", "--from", str(summit), "--to", str(summit)]) == 2
    assert "--to" in capsys.readouterr().err


def test_end_to_end_check_refuses_a_file_that_is_not_what_the_source_recorded(
    tmp_path: Path,
) -> None:
    from skydm.errors import DataCorruptionError
    from skydm.repo import DataId

    with Repository.open(tmp_path / "repo") as repo:
        did = DataId("skysim", 0, 1, "r")
        with pytest.raises(DataCorruptionError):
            repo.put_file(lambda fh: fh.write(b"abc"), "raw", did, expect_checksum="0" * 64)
        assert repo.query() == [] and repo.unregistered() == []


def test_watch_copies_raws_as_they_land(summit: Path, tmp_path: Path) -> None:
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    source_root, dest_root = tmp_path / "summit", tmp_path / "base"
    with Repository.open(source_root):
        pass
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "skydm", "transfer", "--from", str(source_root), "--to",
           str(dest_root), "--watch", "--interval", "0.3", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        cfg = SurveyConfig(seed=9, shape=(128, 128), n_visits=2, n_stars=40, n_galaxies=5)
        paths = write_survey(simulate_survey(cfg), tmp_path / "raws", clean=False)
        with Repository.open(source_root) as src:  # raws land at the summit while it watches
            assert ingest_files(src, paths).ok
        deadline = time.monotonic() + 60
        while len(_checksums(dest_root)) < 2:
            assert time.monotonic() < deadline, "--watch never copied the new raws"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    assert _checksums(dest_root) == _checksums(source_root)


def _kill_at_part(summit: Path, dest_root: Path, part: int, part_bytes: int) -> None:
    """Run ``skydm transfer`` (one stream) and ``kill -9`` it right after its ``part``-th part."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "SKYDM_TEST_PAUSE": f"part:{part}"}
    cmd = [sys.executable, "-m", "skydm", "transfer", "--from", str(summit), "--to",
           str(dest_root), "--streams", "1", "--part-mb", str(part_bytes / 1e6),
           "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if f"skydm-test-pause part {part}" in line:
            break
        assert time.monotonic() < deadline, "the transfer never reached the pause point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _interrupted(
    summit: Path, done: dict[str, str], part_bytes: int, parts: int
) -> tuple[int, int]:
    """(bytes of the files not registered, bytes of the interrupted file's parts already sent).

    With one stream the files go one after another, so the ``parts``-th part
    overall fell in the first unregistered file, after the registered ones' parts.
    """
    with Repository.open(summit) as src:
        refs = src.query(dataset_type="raw")
    done_parts = sum(-(-r.size // part_bytes) for r in refs if str(r.data_id) in done)
    missing = sum(r.size for r in refs if str(r.data_id) not in done)
    return missing, (parts - done_parts) * part_bytes


def test_kill_9_mid_file_resumes_without_resending_completed_parts(
    summit: Path, tmp_path: Path
) -> None:
    part_bytes, parts = 16384, 9  # files of ~80 kB travel in 5-6 parts: part 9 is mid-file
    dest_root = tmp_path / "archive"
    _kill_at_part(summit, dest_root, parts, part_bytes)
    done = _checksums(dest_root)
    missing, journaled = _interrupted(summit, done, part_bytes, parts)
    assert journaled > 0 and len(done) >= 1  # killed inside a file, with a file done
    assert list((dest_root / ".transfer").glob("*.journal"))
    with Repository.open(summit) as src, Repository.open(dest_root) as dest:
        report = transfer(src, dest, TransferConfig(streams=2, part_bytes=part_bytes))
        assert report.ok
        # Neither the completed files nor the interrupted file's completed parts went again.
        assert report.bytes_sent == missing - journaled
        resumed = [r for r in report.results if r.parts_resumed]
        assert len(resumed) == 1 and resumed[0].parts_resumed * part_bytes == journaled
        ref = dest.find("raw", resumed[0].ref.data_id)
        assert ref is not None and ref.meta["transfer"]["parts_resumed"] == journaled // part_bytes
        assert dest.verify() == [] and dest.unregistered() == []
    assert _checksums(dest_root) == _checksums(summit)
    assert not list((dest_root / ".transfer").glob("*"))  # journals go when files are stored


def test_a_journaled_part_damaged_on_disk_is_sent_again(summit: Path, tmp_path: Path) -> None:
    part_bytes, parts = 16384, 9
    dest_root = tmp_path / "archive"
    _kill_at_part(summit, dest_root, parts, part_bytes)
    missing, journaled = _interrupted(summit, _checksums(dest_root), part_bytes, parts)
    (partial,) = (dest_root / ".transfer").glob("*.part")
    data = bytearray(partial.read_bytes())
    data[journaled - 100] ^= 0xFF  # the last journaled part is not what arrived any more
    partial.write_bytes(bytes(data))
    with Repository.open(summit) as src, Repository.open(dest_root) as dest:
        report = transfer(src, dest, TransferConfig(streams=1, part_bytes=part_bytes))
        assert report.ok
        assert report.bytes_sent == missing - journaled + part_bytes  # that part, once more
    assert _checksums(dest_root) == _checksums(summit)


def test_a_rerun_with_another_part_size_starts_the_interrupted_file_again(
    summit: Path, tmp_path: Path
) -> None:
    dest_root = tmp_path / "archive"
    _kill_at_part(summit, dest_root, 9, 16384)
    missing, _ = _interrupted(summit, _checksums(dest_root), 16384, 9)
    with Repository.open(summit) as src, Repository.open(dest_root) as dest:
        report = transfer(src, dest, TransferConfig(streams=1, part_bytes=32768))
        assert report.ok and report.bytes_sent == missing
    assert _checksums(dest_root) == _checksums(summit)
