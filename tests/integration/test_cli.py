"""`python -m gateway` refuses a bad models file at start, naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.procs import ROOT


def test_bad_models_file_stops_the_gateway_with_the_field_named(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n  - name: m\n    model: x\n    workers:\n      - name: w\n"
        "        gpus: [0]\n        port: 99999\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "models[0] (name=m).workers[0] (name=w).port" in result.stderr
