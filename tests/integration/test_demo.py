"""``msgin5g demo`` (the README's first command) runs end to end and checks its own outcomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MSGIN5G = str(Path(sys.executable).parent / "msgin5g")


def test_demo_runs_and_every_ue_gets_its_outcome():
    p = subprocess.run([MSGIN5G, "demo"], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "imported 4 documents" in p.stdout
    assert "sensor-35209900-000007@msgin5g.example" in p.stdout
    assert "meter-42@msgin5g.example" in p.stdout
    assert p.stdout.count("not-found") == 2
    assert "every UE got what its provisioning implies" in p.stdout
