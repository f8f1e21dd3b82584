"""Several real processes writing to one SQLite registry at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from skydm.repo import DataId, Repository

WRITER = textwrap.dedent(
    """
    import sys, time
    from skydm.repo import DataId, Repository

    root, worker, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    repo = Repository.open(root)
    while time.time() < start:  # every process starts writing at the same moment
        time.sleep(0.001)
    for i in range(n):
        content = f"worker {worker} dataset {i}".encode()
        repo.put_file(lambda fh: fh.write(content), "calexp", DataId("skysim", worker, i + 1, "r"))
        # Every worker also replaces one shared data ID: concurrent replacements.
        shared = f"shared by {worker} at {i}".encode()
        repo.put_file(
            lambda fh: fh.write(shared), "diff", DataId("skysim", 0, 1, "r"), replace=True
        )
    repo.close()
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.open(root).close()
    workers, n = 4, 12
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(w), str(n), str(start)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, errors
    with Repository.open(root, create=False) as repo:
        calexps = repo.query(dataset_type="calexp")
        assert len(calexps) == workers * n
        for ref in calexps:
            expected = f"worker {ref.data_id.detector} dataset {ref.data_id.visit - 1}"
            assert repo.get_bytes("calexp", ref.data_id) == expected.encode()
        shared = repo.query(dataset_type="diff")
        assert len(shared) == 1
        assert repo.get_bytes("diff", shared[0].data_id).startswith(b"shared by ")
        # Nothing registered without its file, and no file left without registration.
        assert repo.verify() == []
        assert repo.unregistered() == []


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path: Path) -> None:
    import sqlite3

    with Repository.open(tmp_path / "repo") as repo:
        repo.put_file(lambda fh: fh.write(b"x"), "raw", DataId("skysim", 0, 1, "r"))
        # Another process holding the write lock makes a writer wait (busy
        # timeout), not fail; a reader is never blocked (WAL).
        other = sqlite3.connect(tmp_path / "repo" / "registry.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        assert len(repo.query()) == 1  # reads go on during another's write
        release = time.monotonic() + 1.0

        def write() -> None:
            repo.put_file(lambda fh: fh.write(b"y"), "raw", DataId("skysim", 0, 2, "r"))

        import threading

        t = threading.Thread(target=write)
        t.start()
        time.sleep(max(0.0, release - time.monotonic()))
        assert t.is_alive()  # still waiting for the lock
        other.execute("COMMIT")
        t.join(timeout=30)
        assert not t.is_alive()
        other.close()
        assert len(repo.query()) == 2


def test_parallel_ingest_commands_into_a_new_repository(tmp_path: Path) -> None:
    import numpy as np
    from astropy.io import fits

    files = []
    for k in range(6):
        hdu = fits.PrimaryHDU(np.random.default_rng(k).integers(0, 5000, (64, 64), dtype=np.int32))
        h = hdu.header
        h["INSTRUME"], h["VISIT"], h["DETECTOR"], h["FILTER"] = "SKYSIM", k + 1, 0, "r"
        h["MJD-OBS"] = 60000.0 + k
        files.append(tmp_path / f"raw{k}.fits")
        hdu.writeto(files[-1])
    root = tmp_path / "repo"  # does not exist yet: every process may try to create it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "skydm.cli.main", "ingest", "-q", "--repo", str(root)]
    procs = [
        subprocess.Popen([*cmd, *map(str, files[i::3])], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    with Repository.open(root, create=False) as repo:
        assert sorted(r.data_id.visit for r in repo.query(dataset_type="raw")) == [1, 2, 3, 4, 5, 6]
        assert repo.verify() == [] and repo.unregistered() == []
