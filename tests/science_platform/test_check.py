"""``skydm platform check`` against a real ``skydm serve --auth tokens`` on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.conftest import free_port, ingest_sim_raws, make_catalog
from skydm.cli.main import main
from skydm.errors import BadValueError
from skydm.platform import CheckConfig, run_check
from skydm.platform.check import describe_failure
from skydm.repo import Repository
from skydm.services.auth.tokens import TokenStore


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Four simulated raws and a catalog, served with ``--auth tokens``."""
    repo = tmp_path_factory.mktemp("platformrepo")
    ingest_sim_raws(repo, tmp_path_factory.mktemp("platformraws"))
    make_catalog(repo)
    port = free_port()
    log_path = repo / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "skydm", "serve", "--repo", str(repo)),
                *("--port", str(port), "--auth", "tokens", "--workers", "1"),
                *("--log-level", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/tap/availability", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield base, repo
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _token(repo: Path, *scopes: str, revoke: bool = False) -> str:
    store = TokenStore.for_repo(repo)
    try:
        new = store.create("mobu", list(scopes))
        if revoke:
            store.revoke(new.info.key)
    finally:
        store.close()
    return new.token


def test_every_step_succeeds_and_is_timed(
    platform: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, repo = platform
    token = _token(repo, "read:tap", "read:image")
    assert main(["platform", "check", "--url", base, "--token", token, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out.strip().splitlines()
    assert len(out) == 1
    report = json.loads(out[0])
    assert report["ok"] is True and report["url"] == base
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["auth", "tap", "sia", "soda"]
    for step in steps.values():
        assert step["ok"] and step["ms"] > 0
    assert report["total_ms"] == pytest.approx(sum(s["ms"] for s in steps.values()), abs=0.05)
    assert steps["auth"]["detail"].startswith("user mobu (user; read:image,read:tap)")
    # ObsCore holds one row per stored image: the four raws.
    with Repository.open(repo) as r:
        raws = r.query("raw")
    assert steps["tap"]["detail"] == f"{len(raws)} rows, 3 columns"
    found = steps["sia"]["detail"].removeprefix("found ")
    assert found in {f"ivo://skydm/raw?skysim/{x.data_id.band}/{x.data_id.visit}/0" for x in raws}
    size = re.match(r"(\d+)x(\d+) px, (\d+) bytes", steps["soda"]["detail"])
    assert size is not None
    nx, ny = int(size[1]), int(size[2])
    # A 0.002° circle at the sims' ~0.2"/px: tens of pixels, well inside the 128² raw.
    assert 2 <= nx < 128 and 2 <= ny < 128


def test_the_table_names_each_step(
    platform: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, repo = platform
    monkeypatch.setenv("SKYDM_URL", base + "/")
    monkeypatch.setenv("SKYDM_TOKEN", _token(repo, "read:tap", "read:image"))
    assert main(["platform", "check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["step", "status", "ms", "detail"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["auth", "ok"],
        ["tap", "ok"],
        ["sia", "ok"],
        ["soda", "ok"],
        ["total", "ok"],
    ]


def test_a_missing_scope_fails_its_steps_only(
    platform: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, repo = platform
    token = _token(repo, "read:tap")
    assert main(["platform", "check", "--url", base, "--token", token, "--json"]) == 1
    captured = capsys.readouterr()
    steps = {s["name"]: s for s in json.loads(captured.out)["steps"]}
    assert steps["auth"]["ok"] and steps["tap"]["ok"]
    assert not steps["sia"]["ok"] and "HTTP 403" in steps["sia"]["detail"]
    assert 'scope="read:image"' in steps["sia"]["detail"]
    assert not steps["soda"]["ok"] and steps["soda"]["ms"] is None
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("skydm platform check: sia failed: HTTP 403")
    assert errors[1].startswith("skydm platform check: soda failed: skipped")
    assert token not in captured.out + captured.err


@pytest.mark.parametrize("kind", ["revoked", "wrong"])
def test_a_bad_token_fails_every_step(platform: tuple[str, Path], kind: str) -> None:
    base, repo = platform
    token = _token(repo, "read:tap", "read:image", revoke=kind == "revoked")
    if kind == "wrong":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    time.sleep(0.6)  # past the server's verification cache
    report = run_check(CheckConfig(base, token))
    assert not report.ok
    assert [s.ok for s in report.steps] == [False, False, False, False]
    for step in report.steps[:3]:
        assert step.detail.startswith("HTTP 401") and "invalid_token" in step.detail


def test_a_failing_query_is_reported(platform: tuple[str, Path]) -> None:
    base, repo = platform
    token = _token(repo, "read:tap", "read:image")
    report = run_check(CheckConfig(base, token, query="SELECT nosuchcolumn FROM Object"))
    steps = {s.name: s for s in report.steps}
    assert not steps["tap"].ok and "nosuchcolumn" in steps["tap"].detail.lower()
    assert steps["sia"].ok and steps["soda"].ok


def test_no_server_is_one_line_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["platform", "check", "--url", url, "--token", "gt-x.y", "--timeout", "5"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4
    assert all("no answer from" in e or "skipped" in e for e in errors)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--url", "ftp://example.org"], "--url 'ftp://example.org'"),
        (["--url", "http://example.org?x=1"], "--url 'http://example.org?x=1'"),
        (["--radius", "0"], "--radius 0.0"),
        (["--timeout", "-1"], "--timeout -1.0"),
        (["--query", " "], "--query ' '"),
        (["--token", ""], "--token is required"),
    ],
)
def test_bad_options_are_one_line(
    argv: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SKYDM_TOKEN", raising=False)
    base = ["platform", "check", "--url", "http://127.0.0.1:1", "--token", "gt-x.y"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_without_url_nor_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SKYDM_URL", raising=False)
    monkeypatch.delenv("SKYDM_TOKEN", raising=False)
    assert main(["platform", "check"]) == 2
    assert "--url is required" in capsys.readouterr().err
    assert main(["platform", "check", "--url", "http://127.0.0.1:1"]) == 2
    assert "SKYDM_TOKEN" in capsys.readouterr().err
    with pytest.raises(BadValueError, match="cutout_radius"):
        CheckConfig("http://127.0.0.1:1", "gt-x.y", cutout_radius=1.0)


def test_describe_failure_reads_the_servers_reason() -> None:
    dali = (
        '<VOTABLE><RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">'
        "UsageFault: bad\n  CIRCLE</INFO></RESOURCE></VOTABLE>"
    )
    assert describe_failure(httpx.Response(400, text=dali)) == "HTTP 400: UsageFault: bad CIRCLE"
    assert describe_failure(httpx.Response(404, json={"detail": "gone"})) == "HTTP 404: gone"
    limited = httpx.Response(429, headers={"Retry-After": "7"})
    assert describe_failure(limited) == "HTTP 429: rate limited, retry after 7 s"
    assert describe_failure(httpx.Response(502, text="")) == "HTTP 502"
