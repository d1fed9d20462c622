"""The caption decoder and decoding: causality, the KV cache, greedy / beam / nucleus against
exhaustive search and plain loops, n-gram blocking, length penalty, bad settings."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from vidlang.models import decoding
from vidlang.errors import ConfigError
from vidlang.models.blocks import Encoded
from vidlang.models.decoder import CaptionDecoder

V, BOS, EOS = 6, 0, 1  # tiny vocabulary: 0 = start, 1 = end, 2..5 words


def tiny_decoder(seed: int = 0, vocab: int = V, embed: int = 12, width: int = 16) -> CaptionDecoder:
    torch.manual_seed(seed)
    dec = CaptionDecoder(nn.Embedding(vocab, embed), width, layers=2, heads=2, max_positions=16, dropout=0.1,
                         share=False)
    return dec.eval()


def memory(batch: int = 3, seed: int = 1, width: int = 16) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, 5, width, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False  # padding in the memory
    return Encoded(tokens, mask, tokens.mean(1))


def logprobs(dec, mem: Encoded, row: int, prefix: list[int]) -> torch.Tensor:
    """log p(. | [BOS] + prefix) for one item, from a full pass without cache."""
    item = Encoded(mem.tokens[row : row + 1], mem.mask[row : row + 1], mem.pooled[row : row + 1])
    logits, _ = dec(torch.tensor([[BOS, *prefix]]), item)
    return torch.log_softmax(logits[0, -1], -1)


# ----------------------------------------------------------------------------- the decoder
@torch.no_grad()
def test_causal_mask_lets_no_future_token_leak():
    dec, mem = tiny_decoder(), memory()
    ids = torch.tensor([[BOS, 2, 3, 4, 5, 2], [BOS, 5, 5, 4, 3, 3], [BOS, 4, 2, 2, 3, 5]])
    base, _ = dec(ids, mem)
    for t in range(ids.shape[1] - 1):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % V
        logits, _ = dec(changed, mem)
        assert torch.allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(logits[:, t + 1 :], base[:, t + 1 :], atol=1e-4)


@torch.no_grad()
def test_memory_padding_is_ignored():
    dec, mem = tiny_decoder(), memory()
    ids = torch.tensor([[BOS, 2, 3]] * 3)
    base, _ = dec(ids, mem)
    noisy = Encoded(mem.tokens.clone(), mem.mask, mem.pooled)
    noisy.tokens[0, 3:] = 100.0
    assert torch.allclose(dec(ids, noisy)[0], base, atol=1e-6)


@torch.no_grad()
def test_incremental_cache_equals_full_pass():
    dec, mem = tiny_decoder(), memory()
    ids = torch.tensor([[BOS, 2, 3, 4, 5, 2], [BOS, 5, 5, 4, 3, 3], [BOS, 4, 2, 2, 3, 5]])
    full, _ = dec(ids, mem)
    cache, steps = None, []
    for t in range(ids.shape[1]):
        logits, cache = dec(ids[:, t : t + 1], mem, cache)
        steps.append(logits)
    assert cache.length == ids.shape[1]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    first, cache = dec(ids[:, :2], mem)  # chunks of several tokens, explicit start_pos
    rest, _ = dec(ids[:, 2:], mem, cache, start_pos=2)
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="start_pos=1"):
        dec(ids[:, 2:3], mem, cache, start_pos=1)
    with pytest.raises(ConfigError, match="16 positions"):
        dec(torch.zeros(1, 17, dtype=torch.long), Encoded(mem.tokens[:1], mem.mask[:1], mem.pooled[:1]))


def test_output_projection_is_tied_to_the_word_embeddings():
    dec = tiny_decoder()
    ids = torch.tensor([[BOS, 2, 3]])
    logits, _ = dec(ids, memory(1))
    logits[0, -1, 4].backward()
    assert dec.word_embeddings.weight.grad is not None and dec.word_embeddings.weight.grad[4].abs().sum() > 0
    shared = nn.Embedding(V, 12)
    borrowed = CaptionDecoder(shared, 16, 1, 2, 8, share=True)
    assert borrowed.embedding is shared and not any(k.startswith("word_embeddings") for k in borrowed.state_dict())


# ----------------------------------------------------------------------------- greedy and beam
def greedy_loop(dec, mem, max_len: int) -> list[list[int]]:
    out = []
    for row in range(len(mem.tokens)):
        seq: list[int] = []
        while len(seq) < max_len:
            token = int(logprobs(dec, mem, row, seq).argmax())
            if token == EOS:
                break
            seq.append(token)
        out.append(seq)
    return out


@torch.no_grad()
def test_greedy_matches_a_loop_and_cached_equals_uncached():
    dec, mem = tiny_decoder(), memory()
    cached = decoding.greedy(dec, mem, BOS, EOS, max_len=7)
    assert cached == decoding.greedy(dec, mem, BOS, EOS, max_len=7, use_cache=False) == greedy_loop(dec, mem, 7)
    assert all(len(s) <= 7 for s in cached)


@torch.no_grad()
def test_beam_one_is_greedy_and_beam_cached_equals_uncached():
    for seed in range(3):
        dec, mem = tiny_decoder(seed), memory(4, seed)
        assert decoding.beam_search(dec, mem, BOS, EOS, 6, beam_size=1) == decoding.greedy(dec, mem, BOS, EOS, 6)
        for lp in (0.0, 1.0):
            cached = decoding.beam_search(dec, mem, BOS, EOS, 6, beam_size=3, length_penalty=lp)
            assert cached == decoding.beam_search(dec, mem, BOS, EOS, 6, beam_size=3, length_penalty=lp,
                                                  use_cache=False)


def exhaustive_best(dec, mem, row: int, max_len: int, penalty: float, banned=(BOS,)) -> tuple[list[int], float]:
    """argmax over every finished sequence (ended by EOS, or cut at max_len) of sum log p / length**penalty."""
    words = [t for t in range(V) if t not in banned and t != EOS]
    memo: dict[tuple[int, ...], torch.Tensor] = {}

    def lp(prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in memo:
            memo[prefix] = logprobs(dec, mem, row, list(prefix))
        return memo[prefix]

    best: tuple[list[int], float] = ([], -math.inf)
    for n in range(max_len + 1):
        for prefix in itertools.product(words, repeat=n):
            total = sum(float(lp(prefix[:i])[prefix[i]]) for i in range(n))
            if n < max_len:  # ends with EOS
                total += float(lp(prefix)[EOS])
                length = n + 1
            else:
                length = n
            if length and total / length ** penalty > best[1]:
                best = (list(prefix), total / length ** penalty)
    return best


@torch.no_grad()
def test_wide_beam_finds_the_exhaustive_optimum_for_each_length_penalty():
    dec, mem = tiny_decoder(3), memory(2, 3)
    for penalty in (0.0, 1.0, 2.5):
        found = decoding.beam_search(dec, mem, BOS, EOS, 3, beam_size=32, length_penalty=penalty, banned=[BOS])
        for row in range(2):
            assert found[row] == exhaustive_best(dec, mem, row, 3, penalty)[0], (penalty, row)


@torch.no_grad()
def test_length_penalty_favours_longer_captions():
    """With an exact search the best length is non-decreasing in the penalty; it must move somewhere."""
    dec, mem = tiny_decoder(4), memory(8, 4)
    with torch.no_grad():
        dec.out_bias[EOS] += 2.5  # make ending early attractive
    lengths = []
    for penalty in (-1.0, 0.0, 1.0, 3.0):
        found = decoding.beam_search(dec, mem, BOS, EOS, 4, beam_size=64, length_penalty=penalty, banned=[BOS])
        lengths.append([len(s) for s in found])
    for shorter, longer in zip(lengths, lengths[1:]):
        assert all(a <= b for a, b in zip(shorter, longer))
    assert sum(lengths[-1]) > sum(lengths[0])


# ----------------------------------------------------------------------------- nucleus
@torch.no_grad()
def test_nucleus_is_reproducible_with_a_seed_and_cache_free():
    dec, mem = tiny_decoder(), memory(6)

    def sample(seed, **kw):
        return decoding.nucleus(dec, mem, BOS, EOS, 8, top_p=0.9, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(0) == sample(0) == sample(0, use_cache=False)
    assert sample(0) != sample(1)
    tiny_p = decoding.nucleus(dec, mem, BOS, EOS, 8, top_p=1e-6, generator=torch.Generator().manual_seed(5))
    assert tiny_p == decoding.greedy(dec, mem, BOS, EOS, 8)  # only the top token is left
    cold = decoding.nucleus(dec, mem, BOS, EOS, 8, top_p=1.0, temperature=1e-4,
                            generator=torch.Generator().manual_seed(5))
    assert cold == decoding.greedy(dec, mem, BOS, EOS, 8)  # temperature -> 0 is greedy


def test_top_p_filter_matches_a_loop():
    g = torch.Generator().manual_seed(7)
    logp = torch.log_softmax(torch.randn(5, 9, generator=g), -1)
    for top_p in (0.3, 0.75, 0.95, 1.0):
        kept = torch.isfinite(decoding.top_p_filter(logp, top_p))
        for row in range(5):
            probs = logp[row].exp().tolist()
            order = sorted(range(9), key=lambda i: -probs[i])
            want, mass = set(), 0.0
            for i in order:  # add tokens until the mass reaches top_p
                want.add(i)
                mass += probs[i]
                if mass >= top_p:
                    break
            assert set(kept[row].nonzero().flatten().tolist()) == want


# ----------------------------------------------------------------------------- constraints and settings
def repeated_ngrams(seq: list[int], n: int) -> bool:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


@torch.no_grad()
def test_no_repeat_ngram_is_respected_by_every_method():
    dec, mem = tiny_decoder(), memory(4)
    with torch.no_grad():
        dec.out_bias[3] += 8.0  # a decoder that loves token 3
        dec.out_bias[EOS] -= 8.0
    assert all(repeated_ngrams(s, 2) for s in decoding.greedy(dec, mem, BOS, EOS, 8))
    runs = {
        "greedy": lambda n: decoding.greedy(dec, mem, BOS, EOS, 8, no_repeat_ngram=n),
        "beam": lambda n: decoding.beam_search(dec, mem, BOS, EOS, 8, beam_size=3, no_repeat_ngram=n),
        "nucleus": lambda n: decoding.nucleus(dec, mem, BOS, EOS, 8, top_p=0.95, no_repeat_ngram=n,
                                              generator=torch.Generator().manual_seed(0)),
    }
    for name, run in runs.items():
        for n in (1, 2, 3):
            out = run(n)
            assert not any(repeated_ngrams(s, n) for s in out), (name, n, out)
            assert any(len(s) > n for s in out), (name, n, out)  # not trivially empty


def test_ngram_bans_matches_the_definition():
    seq = [2, 3, 2, 4, 2, 3]
    assert decoding.ngram_bans(seq, 1) == {2, 3, 4}
    assert decoding.ngram_bans(seq, 2) == {2}  # "3 2" occurred
    assert decoding.ngram_bans(seq, 3) == {2}  # "2 3 2" occurred
    assert decoding.ngram_bans(seq, 4) == set()
    assert decoding.ngram_bans([], 2) == set()


@torch.no_grad()
def test_banned_tokens_and_per_item_start_tokens():
    dec, mem = tiny_decoder(), memory()
    for out in (decoding.greedy(dec, mem, BOS, EOS, 6, banned=[BOS, 2, 3]),
                decoding.beam_search(dec, mem, BOS, EOS, 6, beam_size=2, banned=[BOS, 2, 3])):
        assert all(t not in (2, 3, BOS, EOS) for s in out for t in s)
    starts = torch.tensor([BOS, 4, 5])
    per_item = decoding.greedy(dec, mem, starts, EOS, 6)
    for row, start in enumerate(starts.tolist()):
        one = Encoded(mem.tokens[row : row + 1], mem.mask[row : row + 1], mem.pooled[row : row + 1])
        assert per_item[row] == decoding.greedy(dec, one, start, EOS, 6)[0]


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="beam", beam_size=0), "beam_size"),
    (dict(method="greedy", max_len=0), "max_len"),
    (dict(method="nucleus", top_p=0.0), "top_p"),
    (dict(method="nucleus", top_p=1.5), "top_p"),
    (dict(method="nucleus", temperature=0.0), "temperature"),
    (dict(method="greedy", no_repeat_ngram=-1), "no_repeat_ngram"),
    (dict(method="sample"), "method"),
])
def test_impossible_settings_raise_config_error(kwargs, name):
    dec, mem = tiny_decoder(), memory()
    with pytest.raises(ConfigError, match=name):
        decoding.generate(dec, mem, BOS, EOS, **kwargs)
