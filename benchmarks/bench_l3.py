"""Benchmark 2: the cost of L3's negatives, cascade vs random vs exhaustive, at batch 128.

cascade and random are TACo.forward with taco.negatives = cascade | random (K' = 8): the fusion encoder
sees B + 2·B·K' pairs. exhaustive sends all B·B (text, video) pairs through the fusion encoder
(TACo.fusion_scores) and applies losses.fusion_loss with every other clip as a negative, on the same
encoder outputs as the library forward (caught with forward hooks; L1 and L2 come from TACo.forward).
One timed unit = forward + backward of L1 + 0.5·L2 + L3, each variant in its own fresh process.
"""
from __future__ import annotations

import torch

import common
import setups
from vidlang import losses

TITLE = "2. L3 negatives: cascade vs random vs exhaustive (training forward + backward)"


def cases(quick: bool, device: str) -> list[dict]:
    batch, steps = (32, 2) if quick else (128, 4)
    return [{"id": v, "fn": "l3_case", "kwargs": {"variant": v, "batch": batch, "steps": steps}}
            for v in ("random", "cascade", "exhaustive")]


def exhaustive_l3(model, video, text) -> torch.Tensor:
    """L3 over all B·B pairs: for each text a softmax over every video, for each video over every text."""
    b = len(video.pooled)
    pairs = torch.arange(b * b, device=video.pooled.device)
    s = model.fusion_scores(video, text, pairs % b, pairs // b).view(b, b)  # [text, video]
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    return losses.fusion_loss(s.diagonal(), s[off].view(b, b - 1), s.T[off].view(b, b - 1))


def l3_case(device: str, variant: str, batch: int, steps: int, size: str = "small") -> dict:
    net, cfg, shape = setups.build(size, "taco", device)
    net.train()
    data = setups.taco_batch(batch, shape["frames"], shape["words"], shape["video_dim"], device=device)
    gen = torch.Generator().manual_seed(0)
    loss_cfg = cfg.taco
    seen = {}
    if variant == "exhaustive":
        loss_cfg = type(cfg.taco)(**{**cfg.taco.__dict__, "fusion_weight": 0.0})
        net.video.register_forward_hook(lambda m, i, out: seen.__setitem__("video", out))
        net.text.register_forward_hook(lambda m, i, out: seen.__setitem__("text", out))
    elif variant in ("cascade", "random"):
        loss_cfg.negatives = variant
    else:
        raise ValueError(variant)
    pairs = batch * batch if variant == "exhaustive" else batch + 2 * batch * min(loss_cfg.num_negatives, batch - 1)

    def step():
        net.zero_grad(set_to_none=True)
        out = net(data, loss_cfg, gen)
        loss = out["objective"]
        if variant == "exhaustive":
            loss = loss + cfg.taco.fusion_weight * exhaustive_l3(net, seen["video"], seen["text"])
        loss.backward()

    with torch.no_grad():  # fills the frozen MiniLM's output cache (steady state of training)
        net.text(data.input_ids, data.attention_mask)
    mem = common.PeakMemory(device).start()
    times = common.repeat(step, steps, device, warmup=1)
    memory = mem.stop()
    flops, _ = common.count_flops(step)
    table, top = common.profile_table(step, device, rows=10)
    return {"variant": variant, "batch": batch, "size": size, "shape": shape, "fusion_pairs": pairs,
            "fusion_width": net.width, "fusion_layers": cfg.model.fusion_layers, "step": common.summary(times),
            "flops_per_step": flops, "memory": memory, "profile_top": top, "profile_table": table}


def summarize(results: dict, quick: bool) -> dict:
    c = results["cascade"]
    t = {k: v["step"]["median_s"] for k, v in results.items()}
    m = {k: max(v["memory"]["peak_mb"], 1.0) for k, v in results.items()}
    rows = [[k, v["fusion_pairs"], f"{t[k]:.3f}", f"{t[k] / t['cascade']:.2f}", f"{v['flops_per_step'] / 1e9:.1f}",
             v["memory"]["peak_mb"], f"{m[k] / m['cascade']:.2f}",
             ", ".join(f"{x['op']} {x['self_cpu_pct']}%" for x in v["profile_top"][:3])] for k, v in results.items()]
    cr, ec = t["cascade"] / t["random"], t["exhaustive"] / t["cascade"]
    targets = [
        {"name": "cascade time / random time", "target": "<= 1.15", "measured": round(cr, 3), "passed": cr <= 1.15,
         "detail": f"memory ratio {m['cascade'] / m['random']:.2f}"},
        {"name": "exhaustive time / cascade time", "target": ">= 5", "measured": round(ec, 2), "passed": ec >= 5,
         "detail": f"memory ratio {m['exhaustive'] / m['cascade']:.2f}"},
    ]
    cols = ["negatives", "fusion pairs", "fwd+bwd s (median)", "time / cascade", "GFLOP/step", "peak MB",
            "memory / cascade", "top ops by self CPU time"]
    return {"tables": [{"title": f"{TITLE}, batch {c['batch']}, {c['size']} size (width {c['fusion_width']}, "
                                 f"{c['fusion_layers']} fusion layer(s), {c['shape']['frames']} frames + "
                                 f"{c['shape']['words']} words)", "columns": cols, "rows": rows}],
            "targets": targets, "notes": []}
