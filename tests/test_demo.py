"""`vidlang demo` end to end at a tiny size: both worlds, both models, the printed report."""
from __future__ import annotations

import json

from vidlang.cli import main


def test_demo_runs_retrieval_and_captioning(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--steps", "4", "--videos", "40", "--caption-steps", "3", "--scenes", "12", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    for step in ("1/6", "4/6", "5/6", "6/6", "chance", "narration:", "caption:", "reference:"):
        assert step in out
    taco = json.loads((tmp_path / "taco" / "demo-result.json").read_text())
    mvgpt = json.loads((tmp_path / "mvgpt" / "demo-result.json").read_text())
    assert taco["split"] == "demo-world:validate" and 0 <= taco["metrics"]["t2v_R@1"] <= 100
    assert mvgpt["split"] == "narrated-world:validate" and {"BLEU-4", "CIDEr"} <= set(mvgpt["metrics"])
