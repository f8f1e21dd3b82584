"""Alert packets against the official LSST schema and lsst-alert-packet's own code."""

from __future__ import annotations

import io
import math
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from lsst.alert.packet import Schema as LsstSchema
from lsst.alert.packet import get_schema_path, retrieve_alerts

from skydm.alerts.archive import read_archive
from skydm.alerts.cutout import CutoutMaker
from skydm.alerts.outbox import Outbox
from skydm.alerts.packet import AlertValidationError, alert_record, build_record
from skydm.alerts.produce import produce_visit_alerts
from skydm.alerts.schema import available_versions, latest_version, load_schema
from skydm.alerts.serialize import PacketEncoder, decode, parse_wire
from skydm.ap.apdb import Apdb
from skydm.ap.association import object_summary
from skydm.ap.sources import dia_sources_from_table
from skydm.ap.synthetic import SyntheticField

N_VISITS = 4


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A four-visit survey of 25 variables, alerts produced into an APDB and archives."""
    d = tmp_path_factory.mktemp("survey")
    field = SyntheticField(seed=7, n_variables=25)
    apdb = Apdb(d / "apdb.sqlite3")
    results = []
    for v in range(1, N_VISITS + 1):
        sci, tmpl, diff, table = field.visit(v)
        results.append(
            produce_visit_alerts(
                table, diff, apdb=apdb, archive_dir=d / "archive", science=sci, template=tmpl
            )
        )
    return {"dir": d, "apdb": apdb, "results": results, "field": field}


def test_latest_is_what_lsst_alert_packet_says() -> None:
    from lsst.alert.packet import get_latest_schema_version

    major, minor = get_latest_schema_version()
    assert latest_version() == f"{major}.{minor}"
    schema = load_schema()
    assert schema.schema_id == major * 100 + minor
    assert schema.schema_id == schema.lsst_schema().get_schema_id()
    assert schema.default_topic == f"lsst-alerts-v{major}"


def test_every_packet_validates_with_lsst_alert_packet(survey: dict) -> None:
    lsst = load_schema().lsst_schema()
    n = 0
    for r in survey["results"]:
        assert r.n_alerts > 15 and not r.rejected
        for packet in read_archive(r.archive):
            assert lsst.validate(packet)
            n += 1
    assert n == sum(r.n_alerts for r in survey["results"])
    # The last visit's packets carry the history of earlier ones.
    last = list(read_archive(survey["results"][-1].archive))
    assert max(len(p["prvDiaSources"]) for p in last) == N_VISITS - 1
    assert max(len(p["prvDiaForcedSources"]) for p in last) == N_VISITS - 1


def test_archive_is_read_by_lsst_alert_packet(survey: dict) -> None:
    r = survey["results"][0]
    with open(r.archive, "rb") as fh:
        schema, records = retrieve_alerts(fh)
        records = list(records)
    latest = load_schema()
    assert schema.definition["name"] == f"lsst.v{latest.major}_{latest.minor}.alert"
    assert len(records) == r.n_alerts
    assert records == list(read_archive(r.archive))
    assert all(latest.lsst_schema().validate(p) for p in records)


def test_decoded_packet_equals_what_was_sent(survey: dict) -> None:
    """Rebuild one packet of the last visit from the APDB, encode it the slow,
    official way, and compare with the wire bytes and the decoded packet."""
    apdb: Apdb = survey["apdb"]
    r = survey["results"][-1]
    schema = load_schema()
    outbox = Outbox(survey["dir"] / "archive" / "outbox.sqlite3")
    messages = {m.dia_source_id: m for m in outbox.pending(10_000)}
    visit_sources = apdb.sources_of_visit(r.visit, r.detector)
    src = max(visit_sources, key=lambda s: abs(s["psfFlux"]))
    oid = src["diaObjectId"]
    mjd = src["midpointMjdTai"]
    prv = [
        build_record("diaSource", s, schema)
        for s in sorted(
            apdb.rows_by_id(
                "DiaSource", [h[0] for h in apdb.source_history([oid], since=0, before=mjd)[oid]]
            ).values(),
            key=lambda s: s["midpointMjdTai"],
        )
    ]
    prv_fs = [
        build_record("diaForcedSource", s, schema)
        for s in sorted(
            apdb.rows_by_id(
                "DiaForcedSource",
                [h[0] for h in apdb.forced_history([oid], since=0, before=mjd)[oid]],
            ).values(),
            key=lambda s: s["midpointMjdTai"],
        )
    ]
    obj = build_record("diaObject", object_summary(apdb.get_objects([oid])[oid]), schema)
    sent = messages[src["diaSourceId"]].value
    schema_id, body = parse_wire(sent)
    assert sent[0] == 0 and schema_id == schema.schema_id == int.from_bytes(sent[1:5], "big")
    decoded = schema.lsst_schema().deserialize(body)
    cutouts = {k: decoded[f"cutout{k.title()}"] for k in ("difference", "science", "template")}
    expected = alert_record(
        schema,
        dia_source=build_record("diaSource", src, schema),
        prv_dia_sources=prv,
        prv_forced_sources=prv_fs,
        dia_object=obj,
        cutouts=cutouts,
    )
    assert decoded == expected
    # Byte-for-byte what lsst-alert-packet's own serializer makes.
    assert schema.lsst_schema().serialize(expected) == body
    assert decode(sent) == expected
    assert decoded["diaObject"]["nDiaSources"] == len(prv) + 1
    fluxes = [p["psfFlux"] for p in prv] + [decoded["diaSource"]["psfFlux"]]
    assert decoded["diaObject"]["r_psfFluxMin"] == pytest.approx(min(fluxes), rel=1e-6)
    outbox.close()


@pytest.mark.parametrize("version", available_versions())
def test_every_packaged_schema_version(version: str, survey: dict) -> None:
    """A packet of any packaged version validates and round-trips through
    lsst-alert-packet's deserializer."""
    apdb: Apdb = survey["apdb"]
    schema = load_schema(version)
    r = survey["results"][1]
    src = apdb.sources_of_visit(r.visit, r.detector)[0]
    oid = src["diaObjectId"]
    obj = build_record("diaObject", object_summary(apdb.get_objects([oid])[oid]), schema)
    prv = [build_record("diaSource", s, schema) for s in apdb.sources_of_visit(1, 0)[:3]]
    packet = alert_record(
        schema,
        dia_source=build_record("diaSource", src, schema),
        prv_dia_sources=prv,
        prv_forced_sources=[],
        dia_object=obj,
        cutouts={"difference": b"SIMPLE"},
    )
    major, minor = version.split(".")
    lsst = LsstSchema.from_file(
        str(Path(get_schema_path(major, minor)) / f"lsst.v{major}_{minor}.alert.avsc")
    )
    assert lsst.validate(packet)
    body = PacketEncoder(schema).encode(packet)
    assert body == lsst.serialize(packet)
    assert lsst.deserialize(body) == packet


def test_missing_field_and_nan_coordinates_name_the_source(tmp_path: Path) -> None:
    field = SyntheticField(seed=11, n_variables=12)
    sci, _, diff, table = field.visit(1)
    sources = dia_sources_from_table(table, diff.info)
    n = len(sources)
    bad_nan, bad_missing = sources[2]["diaSourceId"], sources[5]["diaSourceId"]
    sources[2]["dec"] = math.nan
    del sources[5]["x"]  # a required field of every LSST schema
    apdb = Apdb(tmp_path / "apdb.sqlite3")
    r = produce_visit_alerts(sources, diff, apdb=apdb, archive_dir=tmp_path, science=sci)
    assert r.n_alerts == n - 2
    messages = sorted(str(e) for e in r.rejected)
    assert len(messages) == 2
    assert any(f"DIA source {bad_nan}" in m and "'dec'" in m and "NaN" in m for m in messages)
    assert any(f"DIA source {bad_missing}" in m and "'x'" in m and "missing" in m for m in messages)
    sent = {p["diaSourceId"] for p in read_archive(r.archive)}
    assert bad_nan not in sent and bad_missing not in sent and len(sent) == n - 2


def test_required_field_check_uses_the_schema() -> None:
    schema = load_schema("11.1")
    with pytest.raises(AlertValidationError, match=r"DIA source 42: field 'midpointMjdTai'"):
        build_record(
            "diaSource",
            {"diaSourceId": 42, "visit": 1, "detector": 0, "ra": 1.0, "dec": 2.0},
            schema,
            ident=42,
        )


def test_cutouts_are_fits_with_the_right_wcs(survey: dict) -> None:
    field: SyntheticField = survey["field"]
    _, _, diff, _ = field.visit(2)
    maker = CutoutMaker(diff, 31)
    x, y = float(field.x[0]), float(field.y[0])
    data = maker.cutout(x, y)
    assert len(data) % 2880 == 0
    with fits.open(io.BytesIO(data)) as hdul:
        img = hdul[0].data
        wcs = WCS(hdul[0].header)
    assert img.shape == (31, 31)
    x0, y0 = maker.corner(x, y)
    # In nJy, like the alert's fluxes (the field's zero point is AB 28).
    per_count = np.float32(10 ** ((31.4 - 28.0) / 2.5))
    np.testing.assert_array_equal(img, diff.image[y0 : y0 + 31, x0 : x0 + 31] * per_count)
    # Brokers read stamps with astropy's CCDData, which needs the unit.
    from astropy.nddata import CCDData

    ccd = CCDData.read(io.BytesIO(data), format="fits")
    assert str(ccd.unit) == "nJy"
    np.testing.assert_array_equal(ccd.data, img)
    ra, dec = wcs.pixel_to_world_values(x - x0, y - y0)
    assert ra == pytest.approx(field.ra[0], abs=1e-9)
    assert dec == pytest.approx(field.dec[0], abs=1e-9)
    # Off the edge: NaN padding, same size.
    with fits.open(io.BytesIO(maker.cutout(1.0, 1.0))) as hdul:
        edge = hdul[0].data
    assert edge.shape == (31, 31) and np.isnan(edge[0, 0]) and np.isfinite(edge[-1, -1])
    # Every edge case equals a slice of the image padded with NaN (corners,
    # sides, wholly off the image).
    ny, nx = diff.shape
    padded = np.full((ny + 62, nx + 62), np.nan, dtype=np.float32)
    padded[31:-31, 31:-31] = diff.image * per_count
    for px, py in [(0, 0), (nx - 1, ny - 1), (nx / 2, -10), (-5, ny / 2), (nx + 100, -100)]:
        with fits.open(io.BytesIO(maker.cutout(px, py))) as hdul:
            got = hdul[0].data
        cx, cy = maker.corner(px, py)
        cx, cy = min(max(cx, -31), nx), min(max(cy, -31), ny)
        np.testing.assert_array_equal(got, padded[cy + 31 : cy + 62, cx + 31 : cx + 62])


def test_archive_header_schema_is_complete(survey: dict) -> None:
    with open(survey["results"][0].archive, "rb") as fh:
        reader = fastavro.reader(fh)
        assert (
            reader.writer_schema["name"]
            == f"lsst.v{load_schema().major}_{load_schema().minor}.alert"
        )
        assert reader.codec == "null"


def test_alert_fluxes_are_in_nanojansky_from_the_zero_point(tmp_path: Path) -> None:
    """The differencing table is in counts; the LSST schema's fluxes are nJy:
    scaled by the difference image's zero point (AB 28 here).  An image
    without a zero point is a clear error naming the ZP card."""
    from skydm.errors import MissingMetadataError

    field = SyntheticField(seed=3, n_variables=12)
    sci, _, diff, table = field.visit(1)
    per_count = 10 ** ((31.4 - 28.0) / 2.5)
    res = produce_visit_alerts(
        table, diff, apdb=Apdb(tmp_path / "a.sqlite3"), archive_dir=tmp_path / "a", science=sci
    )
    packets = {p["diaSource"]["diaSourceId"]: p for p in read_archive(res.archive)}
    expected = dia_sources_from_table(table, diff.info)  # counts
    assert len(packets) == len(expected) > 0
    for src in expected:
        got = packets[src["diaSourceId"]]["diaSource"]
        assert got["psfFlux"] == pytest.approx(src["psfFlux"] * per_count, rel=1e-6)
        assert got["psfFluxErr"] == pytest.approx(src["psfFluxErr"] * per_count, rel=1e-6)
        assert got["snr"] == pytest.approx(src["snr"], rel=1e-6)  # a ratio: unscaled
    # (Forced fluxes against the truth in nJy: tests/ap/test_apdb_contract.py.)
    diff.zero_point = math.nan
    with pytest.raises(MissingMetadataError, match="ZP card"):
        produce_visit_alerts(table, diff, apdb=Apdb(tmp_path / "b.sqlite3"), archive_dir=tmp_path)
