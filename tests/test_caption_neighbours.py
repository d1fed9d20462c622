"""mvgpt.neighbour_captions: the transcript slot holds the consensus captions of the nearest training videos."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import N_TRAIN
from helpers import MVGPT_TINY

from vidlang.errors import ConfigError
from vidlang.evaluation.caption_rerank import BANK_FILE, CaptionBank, neighbour_transcripts

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="consensus captions need java (PTB tokenizer)")


def _nearest_by_loop(bank_feats: np.ndarray, query: np.ndarray) -> list[int]:
    """Bank rows by falling cosine of standardised features (ties: the lower row), one row at a time."""
    mean, std = bank_feats.mean(0), bank_feats.std(0)
    std[std == 0] = 1
    q = (query - mean) / std
    scores = []
    for j, row in enumerate((bank_feats - mean) / std):
        scores.append((-(q @ row) / (np.linalg.norm(q) * np.linalg.norm(row)), j))
    return [j for _, j in sorted(scores)]


def test_each_row_reads_its_k_nearest_training_videos_consensus_and_never_its_own():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 5)).astype(np.float32)
    consensus = [f"caption of video {i}" for i in range(6)]
    bank = CaptionBank([f"v{i}" for i in range(6)], [[c] for c in consensus], feats, consensus)
    held = rng.normal(size=(3, 5)).astype(np.float32)
    queries = np.concatenate([held, feats[[2, 4]]])
    got = neighbour_transcripts(bank, queries, 2, ["new0", "new1", "new2", "v2", "v4"])
    for text, query, key in zip(got, queries, ["new0", "new1", "new2", "v2", "v4"]):
        order = [j for j in _nearest_by_loop(feats, query) if f"v{j}" != key][:2]
        assert text == " . ".join(consensus[j] for j in order)
    assert "video 2" not in got[3] and "video 4" not in got[4]  # a training video never reads its own captions
    assert neighbour_transcripts(bank, feats[[2]], 2) != neighbour_transcripts(bank, feats[[2]], 2, ["v2"])
    with pytest.raises(ConfigError, match="neighbour_captions"):
        neighbour_transcripts(bank, held, 6, None)


@needs_java
def test_the_bank_computes_each_videos_own_consensus_once_and_keeps_it(tmp_path):
    from vidlang.evaluation.baselines import consensus_captions

    caps = [["a man is slicing a tomato", "a man slices a red tomato", "someone plays a guitar"],
            ["a dog runs in the park", "a dog is running in a park", "a cat sleeps"],
            ["a woman sings a song", "a woman is singing", "cars race on a track"]]
    feats = np.eye(3, dtype=np.float32)
    bank = CaptionBank(["a", "b", "c"], caps, feats)
    assert bank.consensus_captions() == consensus_captions(feats, caps, feats, k=1)  # each video its own nearest
    assert [c for c, own in zip(bank.consensus, caps) if c == own[-1]] == []  # never the odd one out
    (tmp_path / BANK_FILE).write_bytes(bank.to_bytes())
    assert CaptionBank.load(tmp_path / BANK_FILE).consensus == bank.consensus


@pytest.fixture(scope="module")
def neighbour_run(tmp_path_factory, data_dir):
    if shutil.which("java") is None:
        pytest.skip("consensus captions need java (PTB tokenizer)")
    from vidlang.config import load_config
    from vidlang.train import train

    out = tmp_path_factory.mktemp("neighbours") / "run"
    train(load_config(None, [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=validate",
                             "mvgpt.use_transcript=true", "mvgpt.neighbour_captions=2", "data.max_words=40", "eval.metric=CIDEr",
                             "train.steps=2", "train.save_every=2", "train.eval_every=2", "train.threads=1",
                             "train.batch_size=8", "data.max_frames=6", f"train.out_dir={out}"]), progress=False)
    return out


def test_training_and_validation_read_the_neighbours_the_bank_gives(neighbour_run, data_dir):
    import vidlang
    from vidlang.tasks.mvgpt import TASK, build_caption_experiment

    loaded = vidlang.load_model(neighbour_run)
    bank = loaded.caption_bank
    assert bank.keys == [f"video{i}" for i in range(N_TRAIN)] and len(bank.consensus) == N_TRAIN  # saved, not redone
    exp = build_caption_experiment(loaded.cfg)
    feats = np.load(data_dir / "features.npy")
    tok = loaded.tokenizer
    for dataset, training in ((exp.train_set, True), (exp.val_set, False)):
        for i, key in enumerate(dataset.keys):
            row = int(key.removeprefix("video"))
            want = neighbour_transcripts(bank, feats[row].mean(0, keepdims=True), 2, [key] if training else None)[0]
            assert tok.decode(dataset.transcripts[i], skip_special_tokens=True) == tok.decode(
                tok(want)["input_ids"], skip_special_tokens=True)
            if training:  # none of the clip's own captions
                assert bank.consensus[bank.keys.index(key)] not in want.split(" . ")
    assert TASK.scoring(loaded.cfg).endswith("consensus captions of the 2 nearest training videos")


def test_caption_feeds_an_array_the_same_neighbours_as_the_folder_and_ignores_speech(neighbour_run, data_dir,
                                                                                      monkeypatch):
    import vidlang
    from vidlang.evaluation.captioning import decoding_name
    from vidlang.models.mvgpt import MVGPT

    seen = []
    real = MVGPT.generate

    def generate(self, video, video_mask, transcript_ids, transcript_mask, **settings):
        seen.append(transcript_ids[:, : int(transcript_mask.sum(1).max())].tolist())
        return real(self, video, video_mask, transcript_ids, transcript_mask, **settings)

    monkeypatch.setattr(MVGPT, "generate", generate)
    loaded = vidlang.load_model(neighbour_run)
    feats = np.load(data_dir / "features.npy")
    held = feats[N_TRAIN]
    text = neighbour_transcripts(loaded.caption_bank, held.mean(0, keepdims=True), 2)[0]
    vidlang.caption(loaded, held, transcript="some speech that is ignored")
    assert seen[-1] == [loaded.tokenizer(text, truncation=True, max_length=40)["input_ids"]]
    assert decoding_name(loaded.cfg) == "greedy-max8-nbr2"


def test_neighbour_captions_need_a_captioner_that_reads_its_transcript_slot(data_dir, tmp_path):
    from vidlang.config import load_config
    from vidlang.train import train

    base = [*MVGPT_TINY, f"data.root={data_dir}", "data.train_split=train", "data.val_split=none", "train.steps=1",
            "train.threads=1", f"train.out_dir={tmp_path / 'r'}", "mvgpt.neighbour_captions=2"]
    with pytest.raises(ConfigError, match="use_transcript=true"):
        train(load_config(None, base), progress=False)
    with pytest.raises(ConfigError, match="data.transcripts"):
        train(load_config(None, [*base, "mvgpt.use_transcript=true", f"data.transcripts={tmp_path / 'asr.jsonl'}"]),
              progress=False)


def test_the_server_runs_no_asr_for_a_captioner_that_reads_neighbours(neighbour_run, tmp_path):
    import vidlang
    from vidlang.serve.speech import UploadSpeech, clip_transcript

    speech = UploadSpeech(vidlang.load_model(neighbour_run), model="tiny.en")
    assert not speech.on and "neighbour_captions" in speech.reason
    text, source = speech.transcript(tmp_path / "never-read.mp4", 60)  # Whisper is never loaded
    assert text is None and "2 nearest training videos" in source
    said = {"v": [type("U", (), {"start": 0.0, "end": 2.0, "text": "hello there"})()]}
    assert clip_transcript(speech, said, "v", None, None) == (None, source)
