"""The README's first command runs examples/demo.py: it must say what the datastore really holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_the_demo_stores_one_blob_and_counts_its_chunks_in_the_bytes_stored(tmp_path):
    done = subprocess.run([sys.executable, str(DEMO), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.search(r"datastore: (\d+) blob\(s\), ([\d.]+) MB stored for ([\d.]+) MB of archives", done.stdout)
    assert found, done.stdout
    blobs, stored, logical = int(found[1]), float(found[2]), float(found[3])
    assert blobs == 1 and 7.0 < stored < 9.0 and 23.0 < logical < 25.0
    assert "verify --deep: 1 blob(s) checked, 0 problem(s)" in done.stdout
