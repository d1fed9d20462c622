"""The reward of self-critical sequence training (``mvgpt.scst_steps``; beyond the paper).

A sampled caption of a training clip earns its CIDEr-D against that clip's training references
(pycocoevalcap's formula, document frequencies over all training clips, as ``CiderD``). Captions are
PTB-tokenised in Python (vidlang.text.ptb) so that no JVM runs inside the training step.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from vidlang.errors import DataError
from vidlang.evaluation.caption_metrics import CiderD
from vidlang.text.ptb import ptb_tokenize


class CiderReward:
    """``reward(clip_index (N,), token ids) -> (N,)`` CIDEr-D of each caption against its clip's references.

    ``clip_keys[i]``: the key (video or segment) of training clip i; ``references``: {key: captions};
    ``decode``: WordPiece ids -> text (the tokenizer's ``decode`` without special tokens).
    """

    def __init__(self, clip_keys: Sequence[str], references: dict[str, list[str]],
                 decode: Callable[[list[int]], str]):
        keys = list(references)
        missing = sorted(set(clip_keys) - set(keys))
        if missing:
            raise DataError(f"SCST: training clips {missing[:3]} have no reference caption")
        self.decode = decode
        self.cider = CiderD([[ptb_tokenize(" ".join(c.split())) for c in references[k]] for k in keys])
        row = {k: i for i, k in enumerate(keys)}
        self.key_row = np.array([row[k] for k in clip_keys])
        self.first_ref = np.concatenate([[0], np.cumsum([len(references[k]) for k in keys])])

    def __call__(self, clip_index: torch.Tensor, samples: list[list[int]]) -> torch.Tensor:
        texts = [ptb_tokenize(" ".join(self.decode(s).split())) for s in samples]
        scores = self.cider.pair_scores(texts)  # (N, all references)
        rows = self.key_row[clip_index.cpu().numpy()]
        out = [scores[i, self.first_ref[r]:self.first_ref[r + 1]].mean() for i, r in enumerate(rows)]
        return torch.tensor(out, dtype=torch.float32)
