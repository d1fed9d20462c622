"""``vidlang demo``: a procedural video-text world, TACo trained on it on the CPU, retrieval shown.

No data and no network: the clips are rendered shapes (colours, sizes, motions) captioned from a
grammar, turned into features by a fixed hand-made descriptor, then used like any feature store.
Each clip is also written as a small mp4 (``world/media``), so ``vidlang serve --media-root`` plays it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager, redirect_stderr
from importlib import resources
from pathlib import Path

from vidlang.config import load_config
from vidlang.evaluation.metrics import retrieval_metrics
from vidlang.evaluation.retrieval import similarity
from vidlang.report import format_table, write_result_json
from vidlang.worlds.media import MEDIA_DIR
from vidlang.worlds.synthetic import WorldConfig, attribute_query_examples, write_world


def demo_recipe(name: str = "taco-demo.yaml") -> Path:
    return Path(str(resources.files("vidlang") / "recipes" / name))


def chance(num_videos: int, num_texts: int) -> dict[str, float]:
    """Expected metrics of a random ranking."""
    out = {}
    for k in (1, 5, 10):
        out[f"t2v_R@{k}"] = 100.0 * min(k, num_videos) / num_videos
        out[f"v2t_R@{k}"] = 100.0 * min(1.0, 1 - _miss_all(num_texts, num_texts // num_videos, k))
    out["t2v_MedR"] = (num_videos + 1) / 2
    return out


def _miss_all(n: int, good: int, k: int) -> float:
    """P(none of ``good`` relevant items among the top k of n random ones)."""
    p = 1.0
    for i in range(k):
        p *= max(0.0, (n - good - i) / (n - i))
    return p


def run_demo(out_dir: Path = Path("runs/demo"), steps: int | None = None, num_videos: int | None = None,
             progress: bool = True, captioner: bool = True, caption_steps: int | None = None,
             scenes: int = 160, device: str | None = None) -> dict:
    """The whole demo. ``steps`` limits both models (``caption_steps`` sets the captioner's alone);
    ``progress=False`` silences every bar and third-party loading message; ``device``: train and run there."""
    with quiet(not progress):
        return _run_demo(Path(out_dir), steps, num_videos, progress, captioner,
                         caption_steps if caption_steps is not None else steps, scenes, device)


def _run_demo(out_dir: Path, steps, num_videos, progress, captioner, caption_steps, scenes, device) -> dict:
    from vidlang.inference import load_model
    from vidlang.retrieval.query import search_store as search
    from vidlang.train import pick_device, train

    tic = time.perf_counter()
    world_cfg = WorldConfig(seed=0, **({"num_videos": num_videos} if num_videos else {}))
    total = 6 if captioner else 4
    print(f"1/{total} generating {world_cfg.num_videos} procedural clips ({world_cfg.frames} frames of "
          f"{world_cfg.size}x{world_cfg.size}) with captions, features and mp4 files ...")
    world = write_world(out_dir / "world", world_cfg, videos=True)
    annotations = json.loads((world / "annotations.json").read_text())
    example = next(iter(annotations.values()))
    print(f"    e.g. {example['captions'][0]!r} / {example['captions'][1]!r}")

    overrides = [f"data.root={world}", f"train.out_dir={out_dir / 'taco'}", *([f"train.device={device}"] if device else [])]
    if steps:
        overrides += [f"train.steps={steps}", f"train.eval_every={steps}", f"train.warmup_steps={max(1, steps // 10)}"]
    cfg = load_config(demo_recipe(), overrides)
    run_on = pick_device(cfg.train.device)
    print(f"2/{total} training TACo (L1 + 0.5 L2 + L3, cascade negatives) for {cfg.train.steps} steps on {run_on} ...")
    train(cfg, progress=progress)

    print(f"3/{total} evaluating on the held-out clips (text->video and video->text) ...")
    loaded = load_model(cfg.train.out_dir, device=run_on)
    from vidlang.data.sources import open_source

    source = open_source(cfg.data)
    val = loaded.dataset(source.split(cfg.data.val_split), source.store)
    sim, text_to_video = similarity(loaded.model, val, loaded.cfg.eval)
    metrics = retrieval_metrics(sim, text_to_video)
    rand = chance(metrics["num_videos"], metrics["num_texts"])
    keys = ["t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MedR", "v2t_R@1", "v2t_R@5", "v2t_R@10"]
    print(f"    {metrics['num_texts']} text queries over {metrics['num_videos']} unseen clips, scoring "
          f"{loaded.cfg.eval.scoring} (s1 + 0.5 s2 + s3)")
    print(format_table({"TACo": metrics, "chance": rand}, keys))
    write_result_json(Path(cfg.train.out_dir) / "demo-result.json", metrics, split="demo-world:validate",
                      scoring=loaded.cfg.eval.scoring, protocol=source.protocol, config=loaded.cfg.to_dict(), extra={"chance": rand})

    print(f"4/{total} text queries and their top clips (held-out clips; the clip's own first caption shown):")
    val_ids = [c.video_id for c in val.clips]
    val_store = _Subset(source.store, list(dict.fromkeys(val_ids)))
    for query, hits in zip(attribute_query_examples(), search(loaded, attribute_query_examples(), val_store, k=3)):
        print(f"  {query!r}")
        for vid, score in hits:
            print(f"      {score:7.2f}  {vid}  {annotations[vid]['captions'][0]!r}")
    media = world / MEDIA_DIR
    print(f"    the clips are playable videos in {media}; to search and watch them in a browser:\n"
          f"      vidlang index {out_dir / 'taco'} --features {world} --out {out_dir / 'index'}\n"
          f"      vidlang serve {out_dir / 'index'} --media-root {media}")
    if captioner:
        metrics["captioning"] = run_caption_demo(out_dir, caption_steps, progress, scenes, device)
    print(f"done in {time.perf_counter() - tic:.0f} s; run folder {out_dir}")
    return metrics


@contextmanager
def quiet(enabled: bool = True):
    """Silence progress bars and chatter of the libraries below (tqdm, transformers' weight-loading bars, the
    Java PTBTokenizer): stderr goes to a temporary file, replayed only if the block raises."""
    if not enabled:
        yield
        return
    import tempfile

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log, open(os.dup(log.fileno()), "w", encoding="utf-8") as text:
        os.dup2(log.fileno(), 2)
        try:
            with redirect_stderr(text):
                yield
        except BaseException:
            text.flush()
            sys.stderr.flush()
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read()[-20000:].decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if bars:
                hf_logging.enable_progress_bar()


def run_caption_demo(out_dir: Path, steps: int | None, progress: bool, scenes: int = 160,
                     device: str | None = None) -> dict:
    """Steps 5-6: the narrated world, an MV-GPT captioner trained on it, captions beside references."""
    from vidlang.evaluation.captioning import caption_folder, decoding_name
    from vidlang.inference import load_model
    from vidlang.train import pick_device, train
    from vidlang.worlds.narrated import NarratedConfig, write_narrated_world

    world = write_narrated_world(out_dir / "narrated", NarratedConfig(num_scenes=scenes, seed=0))
    overrides = [f"data.features={world.features}", f"data.annotations={world.captions}",
                 f"data.transcripts={world.transcripts}", f"train.out_dir={out_dir / 'mvgpt'}",
                 *([f"train.device={device}"] if device else [])]
    if steps:
        overrides += [f"train.steps={steps}", f"train.save_every={steps}", f"train.warmup_steps={max(1, steps // 10)}"]
    cfg = load_config(demo_recipe("mvgpt-demo.yaml"), overrides)
    print(f"5/6 training an MV-GPT captioner (frames + the step's narration -> caption) for {cfg.train.steps} steps "
          f"on {len(world.train_ids)} narrated scenes ...")
    train(cfg, progress=progress)
    loaded = load_model(cfg.train.out_dir, device=pick_device(cfg.train.device))
    metrics, preds, refs, dataset, _ = caption_folder(
        loaded, world.root, annotations=str(world.captions), features=str(world.features),
        transcripts=str(world.transcripts), split=str(world.root / "val_ids.txt"), meteor=False)
    print(f"6/6 captions of held-out steps ({len(preds)} clips of {len(world.val_ids)} unseen scenes, "
          f"{decoding_name(loaded.cfg)}; BLEU-4 {metrics['BLEU-4']:.3f}, CIDEr {metrics['CIDEr']:.3f}, no METEOR):")
    transcript = {k: c.transcript for k, c in zip(dataset.keys, dataset.clips)}
    for key in list(preds)[:4]:
        print(f"  {key}\n      narration: {transcript[key]!r}\n      caption:   {preds[key]!r}\n"
              f"      reference: {refs[key][0]!r}")
    write_result_json(Path(cfg.train.out_dir) / "demo-result.json", metrics, split="narrated-world:validate",
                      scoring=decoding_name(loaded.cfg), protocol="all-references", config=loaded.cfg.to_dict(), extra={"meteor": False})
    return metrics


class _Subset:
    """A view of a feature store restricted to some ids."""

    def __init__(self, store, ids: list[str]):
        self.store, self.ids, self.dim, self.fps = store, ids, store.dim, store.fps

    def __getitem__(self, video_id: str):
        return self.store[video_id]
