"""schemathesis against a live ``vidlang serve`` (loopback) and its own /openapi.json, for a bounded time:
every check (no 5xx, bodies/status codes/content types as documented, invalid data refused, valid data
accepted but for the two rules in tests/schemathesis.toml) must pass."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
SECONDS = int(os.environ.get("VIDLANG_SCHEMATHESIS_SECONDS", "30"))


def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path):
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
           served["url"] + "/openapi.json", "--checks", "all", "--max-time", str(SECONDS), "--workers", "1",
           "--generation-database", "none", "--report", "junit", "--report-dir", str(tmp_path)]
    seed = os.environ.get("VIDLANG_SCHEMATHESIS_SEED")
    if seed:
        cmd += ["--seed", seed]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "Tested: 6" in out and " passed" in out, out[-3000:]
