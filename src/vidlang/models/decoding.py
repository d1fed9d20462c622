"""Batched caption decoding with the decoder's key/value cache: greedy, beam search, nucleus sampling.

Every function takes a ``decoder`` called as ``decoder(input_ids, memory, cache) -> (logits, cache)``
(:class:`vidlang.models.decoder.CaptionDecoder`), the encoder ``memory`` (B items), the start
token(s) ``bos`` (an int or a (B,) tensor) and the end token ``eos``, and returns B token-id lists
without the start and end tokens. ``max_len`` counts generated tokens, the end token included.
``use_cache=False`` recomputes the whole prefix at every step (for tests and benchmarks).
``banned`` ids are never generated; ``no_repeat_ngram=n`` forbids any n-gram of the generated
tokens from occurring twice. Beam search scores a finished hypothesis (HF convention) as
``sum log p / length ** length_penalty``, length = generated tokens with the end token.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from vidlang.errors import ConfigError
from vidlang.models.blocks import Encoded

METHODS = ("greedy", "beam", "nucleus")


def check_settings(method: str = "greedy", max_len: int = 30, beam_size: int = 1, top_p: float = 1.0,
                   temperature: float = 1.0, no_repeat_ngram: int = 0) -> None:
    """Raise ConfigError naming the first impossible decoding setting."""
    if method not in METHODS:
        raise ConfigError(f"decode method must be one of {', '.join(METHODS)}, not {method!r}")
    if not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"decoding max_len must be an integer >= 1, got {max_len!r}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ConfigError(f"decoding beam_size must be an integer >= 1, got {beam_size!r}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"decoding top_p must be in (0, 1], got {top_p!r}")
    if not temperature > 0.0:
        raise ConfigError(f"decoding temperature must be > 0, got {temperature!r}")
    if not isinstance(no_repeat_ngram, int) or no_repeat_ngram < 0:
        raise ConfigError(f"decoding no_repeat_ngram must be an integer >= 0, got {no_repeat_ngram!r}")


class _Stepper:
    """Next-token log-probabilities of a batch of prefixes, incrementally (cache) or from scratch.

    With an output vocabulary (the decoder's ``vocab_ids``) the columns are its tokens alone, which
    makes each step's projection, sort and draw as small as that vocabulary: :meth:`ids` maps
    columns to token ids, :meth:`columns` token ids to columns."""

    def __init__(self, decoder, memory: Encoded, use_cache: bool):
        self.decoder, self.memory, self.use_cache, self.cache = decoder, memory, use_cache, None
        self.vocab = getattr(decoder, "vocab_ids", None)
        self.lookup = getattr(decoder, "vocab_lookup", None)
        self.subset = {} if self.vocab is None else {"subset": True}
        self.token_of = None if self.vocab is None else self.vocab.tolist()

    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        if self.use_cache:
            fresh = self.cache is None
            logits, self.cache = self.decoder(seqs if fresh else seqs[:, -1:], self.memory, self.cache, **self.subset)
        else:
            logits, _ = self.decoder(seqs, self.memory, None, **self.subset)
        return torch.log_softmax(logits[:, -1].float(), dim=-1)

    def ids(self, columns: torch.Tensor) -> torch.Tensor:
        return columns if self.vocab is None else self.vocab[columns]

    def columns(self, ids: Iterable[int]) -> list[int]:
        """The columns of these token ids; ids outside the output vocabulary have none."""
        ids = list(ids)
        if self.lookup is None or not ids:
            return ids
        return [c for c in self.lookup[torch.tensor(ids, device=self.lookup.device)].tolist() if c >= 0]

    def reorder(self, rows: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache = self.cache.reorder(rows)


def repeat_memory(memory: Encoded, k: int) -> Encoded:
    """Each item's memory ``k`` times in a row (beam search, several samples per item)."""
    if k == 1:
        return memory
    return Encoded(*(t.repeat_interleave(k, 0) for t in (memory.tokens, memory.mask, memory.pooled)))


def _start(bos, batch: int, device) -> torch.Tensor:
    bos = torch.as_tensor(bos, dtype=torch.long, device=device)
    return (bos.expand(batch) if bos.dim() == 0 else bos).reshape(batch, 1)


def ngram_bans(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in ``tokens``."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


def _ban(logp: torch.Tensor, generated: torch.Tensor, banned: Iterable[int], n: int, eos: int,
         step: _Stepper) -> torch.Tensor:
    """Set forbidden tokens to -inf; a row left with nothing allowed may still end (eos)."""
    banned = step.columns(banned)
    if banned:
        logp[:, banned] = float("-inf")
    if n > 0:
        for row, tokens in enumerate(generated.tolist()):
            ban = step.columns(ngram_bans(tokens, n))
            if ban:
                logp[row, ban] = float("-inf")
    stuck = torch.isinf(logp).all(-1)
    if stuck.any():
        logp[stuck, step.columns([eos])] = 0.0
    return logp


def _strip(seqs: torch.Tensor, eos: int) -> list[list[int]]:
    out = []
    for row in seqs[:, 1:].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def _sample_loop(decoder, memory: Encoded, bos, eos: int, max_len: int, pick, no_repeat_ngram: int,
                 banned: Iterable[int], use_cache: bool) -> list[list[int]]:
    """One token per row per step, chosen by ``pick(logp)``; finished rows keep emitting eos."""
    b = len(memory.tokens)
    seqs = _start(bos, b, memory.tokens.device)
    done = torch.zeros(b, dtype=torch.bool, device=seqs.device)
    step = _Stepper(decoder, memory, use_cache)
    for _ in range(max_len):
        logp = _ban(step(seqs), seqs[:, 1:], banned, no_repeat_ngram, eos, step)
        token = step.ids(pick(logp)).masked_fill(done, eos)
        seqs = torch.cat([seqs, token[:, None]], 1)
        done |= token == eos
        if done.all():
            break
    return _strip(seqs, eos)


@torch.no_grad()
def greedy(decoder, memory: Encoded, bos, eos: int, max_len: int = 30, *, no_repeat_ngram: int = 0,
           banned: Iterable[int] = (), use_cache: bool = True) -> list[list[int]]:
    """The most likely next token at every step."""
    check_settings("greedy", max_len, no_repeat_ngram=no_repeat_ngram)
    return _sample_loop(decoder, memory, bos, eos, max_len, lambda logp: logp.argmax(-1), no_repeat_ngram,
                        banned, use_cache)


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (the top one always)."""
    probs, order = logp.softmax(-1).sort(-1, descending=True)
    keep_sorted = probs.cumsum(-1) - probs < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logp.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def nucleus(decoder, memory: Encoded, bos, eos: int, max_len: int = 30, *, top_p: float = 0.9,
            temperature: float = 1.0, generator: torch.Generator | None = None, no_repeat_ngram: int = 0,
            banned: Iterable[int] = (), use_cache: bool = True) -> list[list[int]]:
    """Nucleus (top-p) sampling (Holtzman et al. 2020) at ``temperature``; reproducible with ``generator``."""
    check_settings("nucleus", max_len, top_p=top_p, temperature=temperature, no_repeat_ngram=no_repeat_ngram)

    def pick(logp: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logp / temperature, -1)
        probs = (top_p_filter(logp, top_p) if top_p < 1.0 else logp).softmax(-1)
        where = generator.device if generator is not None else probs.device
        return torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(logp.device)

    return _sample_loop(decoder, memory, bos, eos, max_len, pick, no_repeat_ngram, banned, use_cache)


def _best_reachable(score: float, length: int, max_len: int, penalty: float) -> float:
    """Upper bound on the normalised score of any continuation of a live beam of raw ``score`` <= 0:
    the raw sum can only fall, and s / L**penalty is monotone in L, so an end of [length+1, max_len] wins."""
    return max(score / (length + 1) ** penalty, score / max_len ** penalty)


@torch.no_grad()
def beam_search(decoder, memory: Encoded, bos, eos: int, max_len: int = 30, *, beam_size: int = 4,
                length_penalty: float = 1.0, no_repeat_ngram: int = 0, banned: Iterable[int] = (),
                use_cache: bool = True) -> list[list[int]]:
    """Beam search; returns each item's best finished hypothesis.

    At each step the top ``2 * beam_size`` extensions are ranked: those ending in ``eos`` are
    finished, the best ``beam_size`` others stay live. An item stops once no live beam can beat its
    best finished one (an exact bound, see ``_best_reachable``); at ``max_len`` every beam finishes.
    """
    check_settings("beam", max_len, beam_size, no_repeat_ngram=no_repeat_ngram)
    b, k = len(memory.tokens), beam_size
    device = memory.tokens.device
    seqs = _start(bos, b, device).repeat_interleave(k, 0)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per item at the start
    finished: list[tuple[float, list[int]]] = [(float("-inf"), []) for _ in range(b)]
    done = [False] * b
    step = _Stepper(decoder, repeat_memory(memory, k), use_cache)
    for t in range(max_len):
        length, last = t + 1, t == max_len - 1
        logp = _ban(step(seqs), seqs[:, 1:], banned, no_repeat_ngram, eos, step)
        vocab = logp.shape[1]
        cand = (scores.reshape(-1, 1) + logp).view(b, k * vocab)
        top, index = cand.topk(min(2 * k, k * vocab), dim=1)
        rows, tokens, new_scores = [], [], []
        for i, (row_scores, row_index) in enumerate(zip(top.tolist(), index.tolist())):
            live: list[tuple[int, int, float]] = []
            if not done[i]:
                for s, j in zip(row_scores, row_index):
                    if s == float("-inf"):
                        break
                    beam, column = divmod(j, vocab)
                    token = column if step.token_of is None else step.token_of[column]
                    if token == eos or last:
                        norm = s / length ** length_penalty
                        if norm > finished[i][0]:
                            prefix = seqs[i * k + beam, 1:].tolist()
                            finished[i] = (norm, prefix + ([] if token == eos else [token]))
                    else:
                        live.append((i * k + beam, token, s))
                    if len(live) == k:
                        break
                best_live = live[0][2] if live else float("-inf")
                done[i] = last or not live or (
                    finished[i][0] >= _best_reachable(best_live, length, max_len, length_penalty))
            if done[i]:
                live = []
            live += [(i * k, eos, float("-inf"))] * (k - len(live))  # keep k rows per item
            for row, token, s in live:
                rows.append(row)
                tokens.append(token)
                new_scores.append(s)
        if all(done):
            break
        rows_t = torch.tensor(rows, device=device)
        seqs = torch.cat([seqs[rows_t], torch.tensor(tokens, device=device)[:, None]], 1)
        scores = torch.tensor(new_scores, device=device).view(b, k)
        step.reorder(rows_t)
    return [tokens for _, tokens in finished]


def generate(decoder, memory: Encoded, bos, eos: int, method: str = "greedy", **settings) -> list[list[int]]:
    """Dispatch to :func:`greedy`, :func:`beam_search` or :func:`nucleus` (their keyword settings)."""
    check_settings(method)
    fn = {"greedy": greedy, "beam": beam_search, "nucleus": nucleus}[method]
    return fn(decoder, memory, bos, eos, **settings)
