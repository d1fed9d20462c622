"""vidlang.text.ptb (coco-caption's PTB tokenisation in Python) against the jar, and metrics without Java."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from vidlang.text.ptb import ptb_tokenize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CASES = {  # caption -> the jar's tokens (stanford-corenlp-3.4.1, -preserveLines -lowerCase, punctuation dropped)
    "A Man, running!\nFast...": "a man running fast",
    "he doesn't and can't, won't; it's cannot gonna": "he does n't and ca n't wo n't it 's can not gon na",
    "a man (not shown) says \"hi\" [loudly]": "a man -lrb- not shown -rrb- says hi -lsb- loudly -rsb-",
    "at 4:16 add 1,000 g or 2.5 cups of the t-shirt's dye": "at 4:16 add 1,000 g or 2.5 cups of the t-shirt 's dye",
    "the girls' jack o'lantern for the @user #tag player #8": "the girls ' jack o'lantern for the @user #tag player # 8",
    "Café crème": "café crème",
}


@pytest.mark.parametrize("caption", list(CASES))
def test_known_cases(caption):
    assert ptb_tokenize(caption) == " ".join(t for t in CASES[caption].split() if t != "'")


@pytest.mark.skipif(shutil.which("java") is None, reason="the jar needs Java")
@pytest.mark.skipif(not (SHARED / "msrvtt-annotations").is_dir(), reason="needs ../shared/data/msrvtt-annotations")
def test_same_as_the_jar_on_real_captions():
    from vidlang.evaluation.caption_metrics import tokenize

    with zipfile.ZipFile(SHARED / "msrvtt-annotations" / "test_videodatainfo.json.zip") as z:
        caps = [s["caption"] for s in json.loads(z.read("test_videodatainfo.json"))["sentences"][:5000]]
    caps += list(CASES)
    jar = tokenize({0: caps})[0]
    assert [ptb_tokenize(c) for c in caps] == jar


@pytest.mark.skipif(shutil.which("java") is None, reason="compares with the jar")
def test_metrics_without_java_match_with_java(monkeypatch):
    import vidlang.evaluation.caption_metrics as cm

    refs = {"a": ["a man is slicing a tomato", "someone cuts a tomato."], "b": ["a dog runs on the beach"],
            "c": ["two women are dancing", "women dance on a stage"]}
    preds = {"a": "a man slices a tomato", "b": "a dog is running", "c": "two women dance"}
    with_java = cm.caption_metrics(preds, refs, meteor=False)
    monkeypatch.setattr(cm.shutil, "which", lambda name: None)
    monkeypatch.setattr(cm, "_checked", set())
    with pytest.warns(UserWarning, match="no Java"):
        without = cm.caption_metrics(preds, refs, meteor=False)
    assert without == with_java
    with pytest.raises(cm.VidlangError, match="apt-get install default-jre-headless"):
        cm.preflight(meteor=True)
