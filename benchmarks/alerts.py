"""Alert production and distribution benchmark; prints one JSON line.

* ``serialize_per_s``: realistic packets (three 30x30 cutouts, 100 previous
  DIA sources and 100 forced sources with every field a real DIA source
  fills, whose encodings are already stored; ``packet_kb``) encoded per
  second on one core; ``lsst_serialize_per_s`` is lsst-alert-packet's own
  ``Schema.serialize`` on the same packets.
* ``visit_10k_s``: from a visit's 10,000 DIA sources (APDB with 100 earlier
  visits of history per object) to every alert received by one consumer
  group, through a local tansu broker; ``visit_10k_5groups_s`` with five
  groups; ``visit_40k_s`` a 40,000-source visit, one group.  Each visit
  also reports the wall time of each step (``step_*_s``), the calling
  thread's CPU time per step (``step_cpu_*_s``) and the CPU time of the
  producer process, the broker and the consumers: on a shared machine the
  wall times are upper bounds.

Run: ``.venv/bin/python benchmarks/alerts.py [--quick]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fastavro
import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from skydm.alerts.localbroker import LocalBroker
from skydm.alerts.packet import alert_record, build_record
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import load_schema
from skydm.alerts.serialize import PacketEncoder
from skydm.alerts.transport import KafkaTransport
from skydm.ap.apdb import Apdb
from skydm.ap.association import make_id, unit_vectors
from skydm.ap.history import CHUNK_RECORDS, FORCED, SOURCE, HistoryChunk
from skydm.image import Exposure, GaussianPsf, VisitInfo

N_HISTORY = 100
MJD0 = 60000.0

CONSUMER = r"""
import sys, time
from confluent_kafka import Consumer
bootstrap, group, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "latest",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 20,
              "max.partition.fetch.bytes": 20000000, "enable.auto.commit": True})
ready = []
c.subscribe([topic], on_assign=lambda cons, parts: ready.append(1))
while not ready:
    c.poll(0.1)
print("ready", flush=True)
seen = set()
while len(seen) < n:
    for m in c.consume(2000, 0.5):
        if not m.error():
            seen.add(m.value()[5:16])
print("done", time.time(), flush=True)
c.close()
"""


def _wcs(shape: tuple[int, int]) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [45.0, -30.0]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cd = [[-0.2 / 3600, 0], [0, 0.2 / 3600]]
    return w


def _exposure(shape: tuple[int, int], visit: int, rng: np.random.Generator) -> Exposure:
    info = VisitInfo(instrument="bench", visit=visit, detector=0, band="r", mjd=MJD0 + visit)
    img = rng.normal(0, 10, shape).astype(np.float32)
    return Exposure(
        img, np.full(shape, 100, np.float32), None, _wcs(shape), GaussianPsf(1.7), 28.0, info
    )


def _positions(n: int, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    side = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(40, shape[1] - 40, side), np.linspace(40, shape[0] - 40, side))
    return gx.ravel()[:n], gy.ravel()[:n]


# ---------------------------------------------------------------------------
# Realistic history: every field a real DIA source fills, with plausible values.

#: Fields that stay null in real DIA sources of a non-moving, non-withdrawn object.
_NULL = {"ssObjectId", "parentDiaSourceId", "timeWithdrawnMjdTai"}


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Avro zig-zag varints of int64 values: (N, 10) bytes and which of them are used."""
    v = values.astype(np.int64)
    z = ((v << 1) ^ (v >> 63)).astype(np.uint64)
    k = np.arange(10, dtype=np.uint64)
    groups = (z[:, None] >> (np.uint64(7) * k[None, :])) & np.uint64(0x7F)
    nbytes = 1 + sum(
        (z >= (np.uint64(1) << np.uint64(7 * j))).astype(np.int64) for j in range(1, 10)
    )
    used = np.arange(10)[None, :] < nbytes[:, None]
    more = np.arange(10)[None, :] < (nbytes[:, None] - 1)
    return (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8), used


def _float_values(name: str, n: int, rng: np.random.Generator, base: dict) -> np.ndarray:
    """Plausible measurements by field name (what matters: real-valued, not constant)."""
    lo = name.lower()
    if name in base:
        return np.asarray(base[name], np.float64)
    if lo.endswith("err") or "sigma" in lo:
        return np.abs(rng.normal(20.0, 2.0, n)) * (1e-5 if "ra" in lo or "dec" in lo else 1.0)
    if "cov" in lo:
        return rng.normal(0.0, 1e-11, n)
    if "flux" in lo:
        return rng.normal(800.0, 60.0, n)
    if lo in ("ixx", "iyy", "ixxpsf", "iyypsf"):
        return rng.normal(2.9, 0.2, n)
    if lo.startswith("ixy"):
        return rng.normal(0.0, 0.1, n)
    if "angle" in lo:
        return rng.uniform(-90.0, 90.0, n)
    if "length" in lo:
        return rng.gamma(2.0, 0.5, n)
    if "chi2" in lo:
        return rng.chisquare(280, n)
    if "lnl" in lo:
        return -rng.chisquare(280, n) / 2
    if lo in ("extendedness", "reliability"):
        return rng.uniform(0.0, 1.0, n)
    if lo == "exposuretime":
        return np.full(n, 30.0)
    return rng.normal(100.0, 10.0, n)


def encode_records(
    specs: tuple, values: dict[str, np.ndarray], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Avro encodings of ``n`` flat records, vectorised: (flat bytes, end offsets).

    Integer fields come from ``values``; floats from ``values`` or
    :func:`_float_values`; booleans are mostly false; strings from ``values``.
    """
    blocks, masks = [], []
    for f in specs:
        if f.nullable:
            branch = 1 if f.null_first else 0
            if f.name in _NULL:
                blocks.append(np.full((n, 1), 2 * (1 - branch), np.uint8))
                masks.append(np.ones((n, 1), bool))
                continue
            blocks.append(np.full((n, 1), 2 * branch, np.uint8))
            masks.append(np.ones((n, 1), bool))
        if f.base in ("long", "int"):
            v = np.broadcast_to(np.asarray(values.get(f.name, 0), np.int64), (n,))
            b, m = _varints(v)
        elif f.base in ("float", "double"):
            v = np.broadcast_to(_float_values(f.name, n, rng, values), (n,))
            dt = "<f4" if f.base == "float" else "<f8"
            b = np.ascontiguousarray(v.astype(dt)).view(np.uint8).reshape(n, -1)
            m = np.ones(b.shape, bool)
        elif f.base == "boolean":
            b = (rng.random((n, 1)) < 0.03).astype(np.uint8)
            m = np.ones((n, 1), bool)
        elif f.base == "string":
            data = str(values.get(f.name, "r")).encode()
            b = np.tile(np.frombuffer(bytes([2 * len(data)]) + data, np.uint8), (n, 1))
            m = np.ones(b.shape, bool)
        else:
            raise ValueError(f"benchmark records: no generator for {f.name} ({f.base})")
        blocks.append(b)
        masks.append(m)
    block, mask = np.hstack(blocks), np.hstack(masks)
    return block[mask], np.cumsum(mask.sum(axis=1))


def _populate(apdb: Apdb, n: int, shape: tuple[int, int], first_visit: int) -> None:
    """DIA objects with N_HISTORY earlier sources and forced sources each, written in bulk.

    Every field a real DIA source fills has a plausible value (fluxes,
    errors, positions, shapes, dipole and trail fits, flags), so that the
    stored history is as large as Rubin's; the records are encoded with
    numpy (a million of them) and checked against skydm's encoder.
    """
    schema = load_schema()
    enc = PacketEncoder(schema)
    rng = np.random.default_rng(5)
    x, y = _positions(n, shape, 0)
    ra, dec = _wcs(shape).pixel_to_world_values(x, y)
    oids = np.array([make_id(first_visit, 0, i) for i in range(n)], np.int64)
    objs = []
    for i in range(n):
        v = unit_vectors(np.array([ra[i]]), np.array([dec[i]]))[0]
        objs.append(
            {
                "diaObjectId": int(oids[i]),
                "ra": float(ra[i]),
                "dec": float(dec[i]),
                "sumX": v[0] * N_HISTORY,
                "sumY": v[1] * N_HISTORY,
                "sumZ": v[2] * N_HISTORY,
                "validityStartMjdTai": MJD0 + first_visit,
                "nDiaSources": N_HISTORY,
                "firstDiaSourceMjdTai": MJD0 + first_visit,
                "lastDiaSourceMjdTai": MJD0 + first_visit + N_HISTORY - 1,
                "r_n": float(N_HISTORY),
                "r_sw": 1.0,
                "r_swf": 100.0,
                "r_sf": 100.0 * N_HISTORY,
                "r_sf2": 1e4 * N_HISTORY,
                "r_serr": 10.0 * N_HISTORY,
                "r_min": 50.0,
                "r_max": 150.0,
                "r_lastFlux": 100.0,
                "r_lastMjd": MJD0 + first_visit + N_HISTORY - 1,
            }
        )
    with apdb.engine.begin() as conn:
        conn.execute(apdb.objects.insert(), objs)
    raw = apdb.engine.raw_connection()
    cur = raw.cursor()
    visits = first_visit + np.arange(N_HISTORY)
    for lo in range(0, n, 2000):
        idx = np.arange(lo, min(lo + 2000, n))
        m = len(idx) * N_HISTORY
        obj = np.repeat(idx, N_HISTORY)  # object-major: each object's records together
        visit = np.tile(visits, len(idx))
        ids = ((visit * 1024) << 20) | obj
        mjd = MJD0 + visit.astype(np.float64)
        jitter = rng.normal(0, 0.05 / 3600, (2, m))
        base = {
            "diaSourceId": ids,
            "diaForcedSourceId": ids,
            "visit": visit,
            "detector": 0,
            "diaObjectId": oids[obj],
            "midpointMjdTai": mjd,
            "timeProcessedMjdTai": mjd + 0.01,
            "ra": ra[obj] + jitter[0],
            "dec": dec[obj] + jitter[1],
            "trailRa": ra[obj] + jitter[0],
            "trailDec": dec[obj] + jitter[1],
            "x": x[obj] + rng.normal(0, 0.2, m),
            "y": y[obj] + rng.normal(0, 0.2, m),
            "psfNdata": 289,
            "trailNdata": 289,
            "dipoleNdata": 578,
            "bboxSize": 17,
            "trailAlgorithm": 1,
            "band": "r",
            "reliabilityVersion": "v0.3",
        }
        srows, frows, chunks = [], [], []
        for kind, name in ((SOURCE, "diaSource"), (FORCED, "diaForcedSource")):
            flat, ends = encode_records(schema.records[name], base, m, rng)
            data = flat.tobytes()
            # Check one record against skydm's encoder (and so against fastavro).
            first = fastavro.schemaless_reader(
                io.BytesIO(data[: ends[0]]), schema.record_schemas[name], None
            )
            assert enc.encode_record(name, first) == data[: ends[0]]
            for j, i in enumerate(idx):
                r0 = j * N_HISTORY
                size = CHUNK_RECORDS[kind]
                for c0 in range(0, N_HISTORY, size):
                    a, b = r0 + c0, r0 + min(c0 + size, N_HISTORY)
                    start = int(ends[a - 1]) if a else 0
                    chunk = HistoryChunk(
                        int(oids[i]),
                        kind,
                        c0 // size,
                        schema.schema_id,
                        ids[a:b].tolist(),
                        mjd[a:b].tolist(),
                        (ends[a:b] - start).tolist(),
                        data[start : int(ends[b - 1])],
                    )
                    chunks.append(chunk.row())
        rows = list(
            zip(
                ids.tolist(),
                oids[obj].tolist(),
                visit.tolist(),
                [0] * m,
                ["r"] * m,
                mjd.tolist(),
                base["ra"].tolist(),
                base["dec"].tolist(),
                rng.normal(800.0, 60.0, m).tolist(),
                np.abs(rng.normal(20.0, 2.0, m)).tolist(),
                strict=True,
            )
        )
        srows.extend(rows)
        frows.extend((*r, r[5] + 0.01) for r in rows)
        cur.executemany(
            'INSERT INTO "DiaSource" ("diaSourceId","diaObjectId",visit,detector,band,'
            '"midpointMjdTai",ra,dec,"psfFlux","psfFluxErr") VALUES (?,?,?,?,?,?,?,?,?,?)',
            srows,
        )
        cur.executemany(
            'INSERT INTO "DiaForcedSource" ("diaForcedSourceId","diaObjectId",visit,detector,'
            'band,"midpointMjdTai",ra,dec,"psfFlux","psfFluxErr","timeProcessedMjdTai") '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            frows,
        )
        cur.executemany(
            'INSERT INTO "DiaHistory" ("diaObjectId", kind, chunk, "avroSchemaId", "nRecords", '
            '"firstMjdTai", "lastMjdTai", ids, mjds, ends, avro) VALUES (?,?,?,?,?,?,?,?,?,?,?)',
            chunks,
        )
    raw.commit()
    raw.close()


def _dia_table(n: int, shape: tuple[int, int]) -> Table:
    x, y = _positions(n, shape, 0)
    ra, dec = _wcs(shape).pixel_to_world_values(x, y)
    t = Table()
    t["x"], t["y"], t["ra"], t["dec"] = x, y, ra, dec
    t["snr"] = np.full(n, 12.0)
    t["flux"], t["flux_err"] = np.full(n, 240.0), np.full(n, 20.0)
    t["psf_flux"], t["psf_flux_err"] = np.full(n, 230.0), np.full(n, 19.0)
    for c in ("flagged", "flag_dipole", "flag_edge", "flag_sat", "flag_cr", "flag_bad"):
        t[c] = np.zeros(n, bool)
    return t


def _realistic_history(schema, rng: np.random.Generator) -> tuple[list[bytes], list[bytes]]:
    """N_HISTORY encoded previous DIA sources and forced sources, every field filled."""
    ids = 5_000_000_000 + np.arange(N_HISTORY)
    mjd = MJD0 - N_HISTORY + np.arange(N_HISTORY, dtype=np.float64)
    base = {
        "diaSourceId": ids,
        "diaForcedSourceId": ids,
        "visit": np.arange(N_HISTORY) + 900,
        "detector": 0,
        "diaObjectId": 7,
        "midpointMjdTai": mjd,
        "timeProcessedMjdTai": mjd + 0.01,
        "ra": 45.0 + rng.normal(0, 1e-5, N_HISTORY),
        "dec": -30.0 + rng.normal(0, 1e-5, N_HISTORY),
        "trailRa": np.full(N_HISTORY, 45.0),
        "trailDec": np.full(N_HISTORY, -30.0),
        "x": rng.normal(100.5, 0.2, N_HISTORY),
        "y": rng.normal(100.5, 0.2, N_HISTORY),
        "psfNdata": 289,
        "trailNdata": 289,
        "dipoleNdata": 578,
        "bboxSize": 17,
        "trailAlgorithm": 1,
        "band": "r",
        "reliabilityVersion": "v0.3",
    }
    out = []
    for name in ("diaSource", "diaForcedSource"):
        flat, ends = encode_records(schema.records[name], base, N_HISTORY, rng)
        data = flat.tobytes()
        starts = np.concatenate([[0], ends[:-1]])
        out.append([data[a:b] for a, b in zip(starts, ends, strict=True)])
    return out[0], out[1]


def _decode(schema, kind: str, data: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data), schema.record_schemas[kind], None)


def bench_serialize(n: int) -> dict[str, float]:
    schema = load_schema()
    enc = PacketEncoder(schema)
    rng = np.random.default_rng(1)
    from skydm.alerts.cutout import CutoutMaker

    exp = _exposure((200, 200), 1, rng)
    maker = CutoutMaker(exp, 30)
    cut = maker.cutout(100, 100)
    src = dict(
        diaSourceId=1,
        visit=5,
        detector=0,
        diaObjectId=7,
        midpointMjdTai=MJD0,
        ra=45.0,
        dec=-30.0,
        x=100.5,
        y=100.5,
        apFlux=100.0,
        apFluxErr=5.0,
        snr=20.0,
        psfFlux=98.0,
        psfFluxErr=4.9,
        band="r",
        timeProcessedMjdTai=MJD0,
        isNegative=False,
    )
    prv, prv_fs = _realistic_history(schema, rng)
    from skydm.ap.association import add_source, new_object, object_summary

    obj = new_object(src)
    add_source(obj, src)
    obj_values = object_summary(obj)
    obj_rec = build_record("diaObject", obj_values, schema)
    recs = [build_record("diaSource", {**src, "diaSourceId": i}, schema) for i in range(n)]
    packets = [
        alert_record(
            schema,
            dia_source=rec,
            prv_dia_sources=prv,
            prv_forced_sources=prv_fs,
            dia_object=obj_rec,
            cutouts={"difference": cut, "science": cut, "template": cut},
        )
        for rec in recs
    ]
    t0 = time.perf_counter()
    for packet in packets:
        size = len(enc.encode(packet))
    dt = time.perf_counter() - t0
    t2 = time.perf_counter()
    for i in range(n):
        rec = build_record("diaSource", {**src, "diaSourceId": i}, schema)
        packet = alert_record(
            schema,
            dia_source=rec,
            prv_dia_sources=prv,
            prv_forced_sources=prv_fs,
            dia_object=build_record("diaObject", obj_values, schema),
            cutouts={"difference": maker.cutout(100, 100), "science": cut, "template": cut},
        )
        enc.encode(packet)
    dt2 = time.perf_counter() - t2
    full = {
        **packet,
        "prvDiaSources": [_decode(schema, "diaSource", r) for r in prv],
        "prvDiaForcedSources": [_decode(schema, "diaForcedSource", r) for r in prv_fs],
    }
    lsst = schema.lsst_schema()
    m = max(n // 20, 20)
    t1 = time.perf_counter()
    for _ in range(m):
        lsst.serialize(full)
    dt1 = time.perf_counter() - t1
    return {
        "serialize_per_s": n / dt,
        "build_and_serialize_per_s": n / dt2,
        "lsst_serialize_per_s": m / dt1,
        "packet_kb": size / 1000,
    }


def bench_visit(
    work: Path, n: int, groups: int, first_visit: int, shape: tuple[int, int]
) -> dict[str, float]:
    broker = LocalBroker().start()
    try:
        topic = load_schema().default_topic
        KafkaTransport(broker.bootstrap, partitions=8).ensure_topics([topic])
        apdb = Apdb(work / f"apdb-{n}-{groups}.sqlite3")
        t = time.perf_counter()
        _populate(apdb, n, shape, first_visit)
        setup = time.perf_counter() - t
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        consumers = [
            subprocess.Popen(
                [sys.executable, "-c", CONSUMER, broker.bootstrap, f"g{g}", topic, str(n)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for g in range(groups)
        ]
        for c in consumers:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        rng = np.random.default_rng(2)
        visit = first_visit + N_HISTORY
        sci, tmpl, diff = (_exposure(shape, visit, rng) for _ in range(3))
        table = _dia_table(n, shape)
        t0 = time.time()
        cpu0 = time.process_time()
        res = produce_visit_alerts(
            table,
            diff,
            apdb=apdb,
            archive_dir=work / f"arch-{n}-{groups}",
            science=sci,
            template=tmpl,
            bootstrap=broker.bootstrap,
        )
        produced = time.time()
        cpu = time.process_time() - cpu0
        ends = []
        for c in consumers:
            assert c.stdout is not None
            line = c.stdout.readline().split()
            ends.append(float(line[1]))
            c.wait()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        consumers_cpu = (children.ru_utime + children.ru_stime) - (
            children0.ru_utime + children0.ru_stime
        )
        assert res.n_alerts == n and res.stream is not None and res.stream.pending == 0
        return {
            "total_s": max(ends) - t0,
            "produce_and_send_s": produced - t0,
            "setup_s": setup,
            "producer_cpu_s": cpu,
            "broker_cpu_s": broker.cpu_seconds(),
            "consumers_cpu_s": consumers_cpu,
            **{f"step_{k}_s": round(v, 2) for k, v in res.timings.items()},
            **{f"step_cpu_{k}_s": round(v, 2) for k, v in res.cpu_timings.items()},
        }
    finally:
        broker.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1,000-source visits (a smoke run)")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    out: dict[str, float | int | str] = {}
    out.update(bench_serialize(2000 // (scale // 2 or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v10 = bench_visit(work, 10_000 // scale, 1, 1000, (4096, 4096))
        out["visit_10k_s"] = v10["total_s"]
        out.update({f"visit_10k_{k}": v for k, v in v10.items() if k != "total_s"})
        v5 = bench_visit(work, 10_000 // scale, 5, 2000, (4096, 4096))
        out["visit_10k_5groups_s"] = v5["total_s"]
        for k in ("broker_cpu_s", "consumers_cpu_s", "producer_cpu_s"):
            out[f"visit_10k_5groups_{k}"] = v5[k]
        v40 = bench_visit(work, 40_000 // scale, 1, 3000, (8192, 8192))
        out["visit_40k_s"] = v40["total_s"]
        out.update({f"visit_40k_{k}": v for k, v in v40.items() if k != "total_s"})
    out["cores"] = os.cpu_count() or 0
    out["note"] = "quick (1/10 scale)" if args.quick else "full scale"
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
