"""The IVOA validator: ``stilts taplint`` against the running service."""

from __future__ import annotations

import subprocess

from skydm_testing import require_executable

from .conftest import Service


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
    # Uploads (UPL stage) and ObsLocTAP (LOC stage, ivoa.obsplan from the
    # repository's raws) are checked too: no error and no failure at all.
    bad = [line for line in lines if line.startswith(("E-", "F-"))]
    assert not bad, "\n".join(bad)
    assert "Section UPL" in run.stdout and "Section LOC" in run.stdout, run.stdout
    assert service.alive()
