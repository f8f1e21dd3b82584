"""Catalog engines: cone-search latency and full-scan time on a 10-million-row table.

Builds a seeded all-sky table (``ra``, ``dec`` and five magnitudes) with
numpy, loads it with :func:`skydm.catalog.load_table` (HEALPix-partitioned
Parquet), and prints one JSON line:

* ``rows`` — table size;
* ``load_s`` — writing the table (HEALPix indexing, sorting, Parquet);
* ``cone_p50_ms``, ``cone_p99_ms`` — 1 arcmin ADQL cone searches through the
  DuckDB engine (translation included; answered by its direct cone reader),
  random centres, one at a time;
* ``full_scan_s`` — a full-table aggregate (count and five magnitude means), median of 3;
* ``pg_*`` — the same through PostgreSQL with q3c when PostgreSQL 15 is
  installed (a throwaway server is started), plus ``pg_load_s``;
* the service figures (``cone_p99_loaded_ms``, ``cone_p50_loaded_ms``,
  ``cone_server_cpu_ms``, ``cone_client_cpu_ms``, ``submit_ms``, ``abort_s``)
  come from :func:`service_figures`, which the TAP service owns;
* ``cone_p99_loaded_ms_auth`` — ``cone_p99_loaded_ms`` measured again on a
  service started with ``--auth tokens``, every request carrying a bearer
  token (checked, scope and rate limit included). The machine is shared, so
  the loaded cone figure is measured in ``--auth-rounds`` interleaved pairs
  (no auth, auth; then auth, no auth; ...) and the key is the median of the
  auth rounds; ``cone_p99_loaded_ms_noauth_interleaved`` is the median of
  the no-auth rounds of the same pairs (the peer), with the ``p50`` of both,
  ``auth_overhead_p99_pct`` between them, and every round in
  ``cone_p99_loaded_ms_rounds`` (``[noauth, auth]`` per pair);
* ``auth_gate_us`` — what the token check costs a request, measured alone:
  median time of the auth gate (header, token cache, scope, rate limit) on
  one request in-process; ``token_verify_db_us`` — a token checked against
  the registry database (a cache miss: once per token every 0.5 s).

Run: ``.venv/bin/python benchmarks/catalog.py [--rows 10000000] [--cones 300] [--no-pg]
[--auth-rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa

from skydm.catalog import CatalogEngine, load_table, open_engine

TABLE = "bench"
CONE_RADIUS_DEG = 1 / 60
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCAN = (
    "SELECT COUNT(*) AS n, AVG(u) AS u, AVG(g) AS g, AVG(r) AS r, AVG(i) AS i, AVG(z) AS z "
    f"FROM {TABLE}"
)


def make_table(rows: int, seed: int = 42) -> pa.Table:
    """A seeded all-sky table: ra, dec (uniform on the sphere) and five magnitudes."""
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {
        "id": np.arange(rows, dtype=np.int64),
        "ra": rng.uniform(0.0, 360.0, rows),
        "dec": np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, rows))),
    }
    for band in "ugriz":
        cols[band] = rng.normal(22.0, 1.5, rows).astype(np.float32)
    return pa.table(cols)


def cone_queries(n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return [
        f"SELECT id, ra, dec, g FROM {TABLE} WHERE CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {float(a)!r}, {float(d)!r}, {CONE_RADIUS_DEG!r})) = 1"
        for a, d in zip(ra, dec, strict=True)
    ]


def time_cones(engine: CatalogEngine, queries: list[str]) -> tuple[float, float]:
    for q in queries[:10]:  # warm caches (file metadata, connections)
        engine.execute(q)
    times = []
    for q in queries:
        start = time.perf_counter()
        engine.execute(q)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_scan(engine: CatalogEngine, rows: int) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = engine.execute(SCAN)
        times.append(time.perf_counter() - start)
        assert result.table.column("n")[0].as_py() == rows
    return float(np.median(times))


def engine_figures(catalog_dir: Path, rows: int, n_cones: int) -> dict[str, float]:
    """Cone and scan figures of the DuckDB engine."""
    with open_engine(catalog_dir) as engine:
        p50, p99 = time_cones(engine, cone_queries(n_cones))
        return {
            "cone_p50_ms": round(p50, 2),
            "cone_p99_ms": round(p99, 2),
            "full_scan_s": round(time_scan(engine, rows), 3),
        }


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL 15 server in a temporary directory; yields its URL."""
    base = Path(tempfile.mkdtemp(prefix="skydm-bench-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(base, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    subprocess.run(
        [*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -k {base} -c fsync=off "
        "-c shared_buffers=1GB -c max_wal_size=4GB -c work_mem=64MB"
    )
    subprocess.run(
        [
            *prefix,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-w",
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "bench",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(
            [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def pg_figures(catalog_dir: Path, rows: int, n_cones: int) -> dict[str, float]:
    """Cone and scan figures of the PostgreSQL engine ({} without PostgreSQL)."""
    if not (PG_BIN / "initdb").exists():
        return {}
    with throwaway_postgres() as url:
        start = time.perf_counter()
        engine = open_engine(catalog_dir, url)
        load = time.perf_counter() - start
        try:
            p50, p99 = time_cones(engine, cone_queries(n_cones))
            scan = time_scan(engine, rows)
        finally:
            engine.close()
    return {
        "pg_load_s": round(load, 1),
        "pg_cone_p50_ms": round(p50, 2),
        "pg_cone_p99_ms": round(p99, 2),
        "pg_full_scan_s": round(scan, 3),
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LeanConnection:
    """One keep-alive HTTP/1.1 connection that POSTs forms: a client costing ~0.1 ms a request.

    httpx's AsyncClient spends ~3 ms of CPU per request, more than the
    service spends answering a cone search: on two shared cores the client
    was the bottleneck of the loaded figure, not the service.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        """POST ``form`` url-encoded to ``path``; the status and the body."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        body = urlencode(form).encode()
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._extra}"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if "content-length" in headers:
            return status, await self._reader.readexactly(int(headers["content-length"]))
        chunks = []  # chunked transfer (large results are streamed)
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self._reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(chunk[:-2])

    def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()


def service_figures(
    catalog_dir: Path, *, auth: bool = False, cones_only: bool = False
) -> dict[str, float]:
    """Figures through the TAP service: ``cone_p99_loaded_ms``, ``submit_ms``, ``abort_s``.

    Owned by the TAP service (``skydm.services``).  Starts ``skydm serve`` on
    the repository holding ``catalog_dir`` and measures, over HTTP:

    * ``cone_p99_loaded_ms`` (and ``cone_p50_loaded_ms``) — 99th percentile
      latency of 1 arcmin sync cone searches sent 50 at a time (4 rounds, 50
      keep-alive connections of :class:`LeanConnection`), while async full
      scans run back to back as jobs of the service (in its niced worker
      processes);
    * ``cone_server_cpu_ms``, ``cone_client_cpu_ms`` — CPU per cone of the
      service process and of this client during those rounds (the scans'
      worker processes not counted);
    * ``submit_ms`` — median time to create an async job (POST /async);
    * ``abort_s`` — time from POST PHASE=ABORT on a running cross join until
      the job is ABORTED and its worker process is gone.

    With ``auth``, the service runs with ``--auth tokens`` and only the
    loaded cone figure is measured, as ``cone_p99_loaded_ms_auth``. With
    ``cones_only``, only the loaded cone figures are measured, returned as
    ``p99_ms`` and ``p50_ms`` (with or without auth).
    """
    import httpx

    from skydm.repo import Repository
    from skydm.services.tap.uws.store import JobStore

    repo = catalog_dir.parent
    # `skydm serve` refuses a directory that is not a repository.
    Repository.open(repo).close()
    headers: dict[str, str] = {}
    if auth:
        from skydm.services.auth.tokens import TokenStore

        store = TokenStore.for_repo(repo)
        headers["Authorization"] = f"Bearer {store.create('bench', ['read:tap']).token}"
        store.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tap"
    log = open(repo / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skydm",
            "serve",
            "--repo",
            str(repo),
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
            "--auth",
            "tokens" if auth else "none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=url, timeout=120, headers=headers)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/availability").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"skydm serve did not start; see {repo / 'serve.log'}")
            time.sleep(0.2)

        def submit(query: str, run: bool) -> str:
            data = {"LANG": "ADQL", "QUERY": query}
            if run:
                data["PHASE"] = "RUN"
            return client.post("/async", data=data).headers["location"].rsplit("/", 1)[-1]

        def phase(job_id: str) -> str:
            return client.get(f"/async/{job_id}/phase").text

        cpu: dict[str, float] = {}
        submit_times = []
        for _ in range(0 if auth or cones_only else 30):
            start = time.perf_counter()
            job_id = submit(SCAN, run=False)
            submit_times.append(time.perf_counter() - start)
            client.delete(f"/async/{job_id}")

        async def cones_under_load() -> list[float]:
            queries = cone_queries(200, seed=7)
            latencies: list[float] = []
            conns = [LeanConnection("127.0.0.1", port, headers) for _ in range(50)]
            try:
                for q in queries[:20]:  # warm up
                    await conns[0].post("/tap/sync", {"LANG": "ADQL", "QUERY": q})

                async def one(conn: LeanConnection, q: str) -> None:
                    start = time.perf_counter()
                    status, body = await conn.post("/tap/sync", {"LANG": "ADQL", "QUERY": q})
                    assert status == 200, body[:500]
                    latencies.append(time.perf_counter() - start)

                cpu_start, server_start = time.process_time(), process_cpu(proc.pid)
                for i in range(0, 200, 50):
                    await asyncio.gather(
                        *(one(c, q) for c, q in zip(conns, queries[i : i + 50], strict=True))
                    )
                cpu["client"] = time.process_time() - cpu_start
                cpu["server"] = process_cpu(proc.pid) - server_start
            finally:
                for conn in conns:
                    conn.close()
            return latencies

        scans: list[str] = []
        scan_stop = False

        def keep_scanning() -> None:
            while not scan_stop:
                job_id = submit(SCAN, run=True)
                scans.append(job_id)
                while phase(job_id) in ("PENDING", "QUEUED", "EXECUTING") and not scan_stop:
                    client.get(f"/async/{job_id}", params={"WAIT": "1"})

        import threading

        scanner = threading.Thread(target=keep_scanning, daemon=True)
        scanner.start()
        while not scans or phase(scans[0]) != "EXECUTING":
            time.sleep(0.01)
        latencies = asyncio.run(cones_under_load())
        scan_stop = True
        scanner.join()
        for job_id in scans:
            client.delete(f"/async/{job_id}")
        if cones_only:
            return {
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            }
        if auth:
            return {"cone_p99_loaded_ms_auth": round(float(np.percentile(latencies, 99)) * 1000, 1)}

        store = JobStore(repo / "tap" / "jobs" / "jobs.sqlite")
        long_query = (
            f"SELECT COUNT(*) AS n FROM {TABLE} AS a, {TABLE} AS b WHERE a.u + b.g > a.r + b.i"
        )
        job_id = submit(long_query, run=True)
        while phase(job_id) != "EXECUTING" or store.get(job_id).worker_pid is None:
            time.sleep(0.01)
        time.sleep(0.5)  # let the query get going in the engine
        pid = store.get(job_id).worker_pid
        assert pid is not None
        start = time.perf_counter()
        client.post(f"/async/{job_id}/phase", data={"PHASE": "ABORT"})
        while True:
            try:
                os.kill(pid, 0)
                gone = False
            except ProcessLookupError:
                gone = True
            if gone and phase(job_id) == "ABORTED":
                break
            time.sleep(0.001)
        abort_s = time.perf_counter() - start
        client.delete(f"/async/{job_id}")
        return {
            "cone_p99_loaded_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
            "cone_p50_loaded_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "cone_server_cpu_ms": round(cpu["server"] / len(latencies) * 1000, 2),
            "cone_client_cpu_ms": round(cpu["client"] / len(latencies) * 1000, 2),
            "submit_ms": round(float(np.median(submit_times)) * 1000, 2),
            "abort_s": round(abort_s, 3),
        }
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def auth_figures(catalog_dir: Path, rounds: int) -> dict[str, object]:
    """The loaded cone figure with and without auth, interleaved ``rounds`` times (ABBA)."""
    p99: dict[bool, list[float]] = {False: [], True: []}
    p50: dict[bool, list[float]] = {False: [], True: []}
    pairs = []
    for i in range(rounds):
        # Alternate which goes first, so that a drift in the machine's load cancels.
        order = (False, True) if i % 2 == 0 else (True, False)
        pair: dict[bool, float] = {}
        for auth in order:
            found = service_figures(catalog_dir, auth=auth, cones_only=True)
            p99[auth].append(found["p99_ms"])
            p50[auth].append(found["p50_ms"])
            pair[auth] = found["p99_ms"]
        pairs.append([pair[False], pair[True]])
    med = {k: float(np.median(v)) for k, v in p99.items()}
    return {
        "cone_p99_loaded_ms_auth": round(med[True], 1),
        "cone_p99_loaded_ms_noauth_interleaved": round(med[False], 1),
        "cone_p50_loaded_ms_auth": round(float(np.median(p50[True])), 1),
        "cone_p50_loaded_ms_noauth_interleaved": round(float(np.median(p50[False])), 1),
        "auth_overhead_p99_pct": round((med[True] / med[False] - 1) * 100, 1),
        "cone_p99_loaded_ms_rounds": pairs,
        "auth_rounds": rounds,
    }


def gate_figures(repo: Path, n: int = 20_000) -> dict[str, float]:
    """The auth gate's own cost per request, and a token check in the database, in µs."""
    from skydm.repo import Repository
    from skydm.services.auth.config import AuthConfig
    from skydm.services.auth.gate import AuthGate
    from skydm.services.auth.tokens import TokenStore

    Repository.open(repo).close()
    store = TokenStore.for_repo(repo)
    try:
        token = store.create("bench-gate", ["read:tap"]).token
        # A limit that is never reached: the count is made (and costs), no 429 is answered.
        gate = AuthGate(store, AuthConfig(mode="tokens", rate_limit=10**9))
        scope = {
            "type": "http",
            "path": "/tap/sync",
            "headers": [(b"authorization", f"Bearer {token}".encode())],
        }
        passed = 0

        async def app(scope: object, receive: object, send: object) -> None:
            nonlocal passed
            passed += 1

        async def refused(message: dict[str, object]) -> None:
            raise RuntimeError(f"the gate refused the benchmark's request: {message}")

        async def run() -> list[float]:
            times = []
            for _ in range(n):
                start = time.perf_counter()
                await gate(dict(scope), None, refused, app)  # type: ignore[arg-type]
                times.append(time.perf_counter() - start)
            return times

        gate_times = asyncio.run(run())
        assert passed == n
        verify_times = []
        for _ in range(500):
            start = time.perf_counter()
            store.verify(token)
            verify_times.append(time.perf_counter() - start)
    finally:
        store.close()
    return {
        "auth_gate_us": round(float(np.median(gate_times)) * 1e6, 2),
        "token_verify_db_us": round(float(np.median(verify_times)) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--cones", type=int, default=300)
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument(
        "--auth-rounds",
        type=int,
        default=3,
        help="interleaved pairs of loaded cone runs without and with auth (3)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build the catalog here and keep it (default: a temporary dir)",
    )
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="skydm-bench-catalog-"))
    catalog_dir = work / "catalog"
    try:
        table = make_table(args.rows)
        start = time.perf_counter()
        load_table(catalog_dir, TABLE, table, mode="replace")
        figures: dict[str, object] = {
            "rows": args.rows,
            "load_s": round(time.perf_counter() - start, 2),
        }
        del table
        figures.update(gate_figures(catalog_dir.parent))
        figures.update(engine_figures(catalog_dir, args.rows, args.cones))
        if not args.no_pg:
            figures.update(pg_figures(catalog_dir, args.rows, args.cones))
        figures.update(service_figures(catalog_dir))
        figures.update(auth_figures(catalog_dir, max(1, args.auth_rounds)))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
