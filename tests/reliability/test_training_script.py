"""``scripts/train_reliability.py`` runs end to end on a small set (as in CI)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from skydm.reliability import ReliabilityModel

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_reliability.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_reliability", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_training_script_on_a_small_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script()
    out = tmp_path / "model.json"
    args = ["--train-seeds", "100", "--test-seeds", "200", "--size", "384"]
    args += ["--visits", "6", "--template-visits", "3", "--out", str(out)]
    args += ["--cache", str(tmp_path / "cache")]
    assert script.main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = ReliabilityModel.read(out)
    assert line["version"] == model.version
    assert model.info["held_out"]["auc"] == line["held_out_auc"]
    # Even one small survey teaches more than chance.
    assert line["held_out_auc"] > 0.7
    # The cache makes a rerun reuse the simulations: the same model.
    assert script.main(args) == 0
    assert ReliabilityModel.read(out).version == model.version


def test_training_script_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script()
    assert script.main(["--train-seeds", "1-2", "--test-seeds", "2"]) == 2
    assert "--test-seeds" in capsys.readouterr().err
    assert script.main(["--train-seeds", "x"]) == 2
    assert "seeds" in capsys.readouterr().err
    assert script.main(["--out", str(tmp_path / "m.pkl")]) == 2
    assert ".json" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
