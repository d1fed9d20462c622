"""The peer's side of bench_side_by_side.py: a training step of microsoft/UniVL on CPU.

A driver only (adapted from shared/tools/peer_univl_bench.py): it imports UniVL's own modules at run
time from the source folder given as ``--univl-src`` (a ``git archive`` of github:microsoft/UniVL)
and holds none of UniVL's code. The model is built by UniVL's ``UniVL.from_pretrained`` with random
init (no weights are loaded). The one file supplied is a ``bert_config.json`` with the standard
bert-base-uncased values, which UniVL's README downloads with the weights.

Tasks: ``joint`` (main_task_retrieval.py, FT-Joint: text and video encoders, mean-pooled similarity,
MaxMarginRankingLoss), ``align`` (--train_sim_after_cross, FT-Align: adds the 2-layer cross encoder on
all B x B pairs), ``caption`` (main_task_caption.py --stage_two: cross encoder on the B pairs, 3-layer
decoder, token cross-entropy). A step is forward + backward + clip_grad_norm_(1.0) + BertAdam.step()
+ zero_grad(), as in UniVL's train_epoch().
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import types

import _machine as machine

# bert-base-uncased (what UniVL's README puts in modules/bert-base-uncased/bert_config.json)
BERT_BASE_UNCASED = {
    "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 512,
    "num_attention_heads": 12, "num_hidden_layers": 12, "type_vocab_size": 2, "vocab_size": 30522,
}
MEASURES = {"joint": "univl_ft_joint", "align": "univl_ft_align", "caption": "univl_caption_stage_two"}


def stub_missing(names: list[str]) -> list[str]:
    """UniVL's modules/file_utils.py imports boto3/botocore/requests (weight downloads only): stub the absent ones."""
    stubbed = []
    for name in names:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod not in sys.modules:
                sys.modules[mod] = types.ModuleType(mod)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[mod])
        stubbed.append(name)
    if "botocore.exceptions" in sys.modules and not hasattr(sys.modules["botocore.exceptions"], "ClientError"):
        sys.modules["botocore.exceptions"].ClientError = type("ClientError", (Exception,), {})
    return stubbed


def _scaled(base: dict, hidden: int) -> dict:
    cfg = dict(base)
    if hidden != cfg["hidden_size"]:
        cfg.update(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=max(1, hidden // 64))
    return cfg


def write_configs(src: str, hidden: int, tmp: str) -> dict[str, str]:
    """Config folders for from_pretrained: bert (standard values) and UniVL's own visual/cross/decoder JSONs."""
    names = {}
    for kind, fname, base in (("bert", "bert_config.json", BERT_BASE_UNCASED), ("visual", "visual_config.json", None),
                              ("cross", "cross_config.json", None), ("decoder", "decoder_config.json", None)):
        if base is None:
            with open(os.path.join(src, "modules", kind + "-base", fname)) as f:
                base = json.load(f)
        folder = os.path.join(tmp, kind)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, fname), "w") as f:
            json.dump(_scaled(base, hidden), f)
        names[kind] = folder
    return names


def build_univl(job: dict, sizes: dict):
    """(model in train mode, its parameters, one batch, BertAdam, stubbed imports) for UniVL's ``job["kind"]`` step."""
    import torch

    torch.manual_seed(0)
    src = os.path.abspath(job["univl_src"])
    sys.path.insert(0, src)
    stubbed = stub_missing(["boto3", "botocore.exceptions", "requests"])
    logging.disable(logging.WARNING)
    from modules.modeling import UniVL  # UniVL's own code, imported at run time
    from modules.optimization import BertAdam

    size, task = sizes[job["size"]], job["kind"]
    B, Lw, Lf, Dv = job["batch"], job["words"], job["frames"], job["video_dim"]
    if Dv != 1024:
        raise SystemExit("video_dim must equal UniVL's visual_config vocab_size (1024)")
    cfg = types.SimpleNamespace(
        do_pretrain=False, do_train=True, task_type="caption" if task == "caption" else "retrieval",
        max_words=Lw, max_frames=Lf, video_dim=Dv, batch_size=B, n_gpu=1, n_pair=1, margin=0.1,
        hard_negative_rate=0.5, negative_weighting=1, use_mil=False, local_rank=0,
        text_num_hidden_layers=size["text_layers"], visual_num_hidden_layers=size["video_layers"],
        cross_num_hidden_layers=size["fusion_layers"], decoder_num_hidden_layers=size["decoder_layers"])
    if task == "align":
        cfg.train_sim_after_cross = True
    if task == "caption":
        cfg.stage_two = True
    with tempfile.TemporaryDirectory() as tmp:
        names = write_configs(src, size["hidden"], tmp)
        model = UniVL.from_pretrained(names["bert"], names["visual"], names["cross"], names["decoder"],
                                      cache_dir=tmp, state_dict=None, task_config=cfg)
    model.train()
    params = list(model.parameters())
    optimizer = BertAdam([{"params": params, "weight_decay": 0.01}], lr=3e-5, warmup=0.1, schedule="warmup_linear",
                         t_total=1000, weight_decay=0.01, max_grad_norm=1.0)
    g = torch.Generator().manual_seed(1)
    vocab = model.bert_config.vocab_size
    batch = dict(input_ids=torch.randint(1, vocab, (B, 1, Lw), generator=g),
                 token_type_ids=torch.zeros(B, 1, Lw, dtype=torch.long),
                 attention_mask=torch.ones(B, 1, Lw, dtype=torch.long),
                 video=torch.randn(B, 1, Lf, Dv, generator=g), video_mask=torch.ones(B, 1, Lf, dtype=torch.long))
    if task == "caption":
        batch.update(input_caption_ids=torch.randint(1, vocab, (B, 1, Lw), generator=g),
                     decoder_mask=torch.ones(B, 1, Lw, dtype=torch.long),
                     output_caption_ids=torch.randint(1, vocab, (B, 1, Lw), generator=g))
    return model, params, batch, optimizer, stubbed


def child_univl(job: dict, sizes: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    model, params, batch, optimizer, stubbed = build_univl(job, sizes)
    size, task, B = sizes[job["size"]], job["kind"], job["batch"]
    rss_setup = machine.rss_bytes() / 2**20

    def step():
        t0 = time.perf_counter()
        loss = model(**batch)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        value = loss.detach().item()
        if not torch.isfinite(torch.tensor(value)):
            raise SystemExit("non-finite loss")
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2, value

    rows, others, discarded = machine.timed_loop(step, job, f"UniVL {task}/{job['size']}/B{B}")
    flops = None
    if job["count_flops"]:
        flops = machine.flops_of(lambda: model(**batch).backward())
        optimizer.zero_grad()
    res = {"measure": MEASURES[task], "size": job["size"], "hidden": size["hidden"],
           "layers": {"text": size["text_layers"], "visual": size["video_layers"],
                      "cross": size["fusion_layers"] if task != "joint" else 0,
                      "decoder": size["decoder_layers"] if task == "caption" else 0},
           "batch": B, "max_words": job["words"], "max_frames": job["frames"], "video_dim": job["video_dim"],
           "threads": job["threads"],
           **machine.summarize(rows, others, discarded, job, B),
           "peak_rss_mib": machine.maxrss_mib(), "rss_after_setup_mib": rss_setup,
           "params_total": sum(p.numel() for p in params), "flops_counted_per_step": flops,
           "stubbed_imports": stubbed}
    res["achieved_gflops"] = flops / res["step_s_median"] / 1e9 if flops else None
    return res
