"""The IVOA validator: ``stilts taplint`` against the running service."""

from __future__ import annotations

import subprocess

from conftest import require_executable

from .conftest import Service

#: Fatal reports that only say an optional feature is not offered: table
#: uploads (the service declares no upload method) and ObsLocTAP (there is no
#: ivoa.obsplan table).  taplint stops those stages with an F; nothing else may.
NOT_OFFERED = ("F-UPL-NOUP-", "F-LOC-NOTP-")


def test_taplint_reports_no_errors(service: Service) -> None:
    stilts = require_executable("stilts", "install the Debian package stilts")
    run = subprocess.run(
        [stilts, "taplint", f"tapurl={service.url}", "report=EFW", "maxrepeat=3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = run.stdout.splitlines()
    assert any(line.startswith("Totals:") for line in lines), run.stdout + run.stderr
    bad = [
        line
        for line in lines
        if line.startswith("E-") or (line.startswith("F-") and not line.startswith(NOT_OFFERED))
    ]
    assert not bad, "\n".join(bad)
    assert service.alive()
