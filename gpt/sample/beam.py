"""Beam search: the most likely continuations, found by keeping the `beams` best partial
ones at every step rather than sampling.

A hypothesis's score is its log-probability divided by its length to the power `alpha`
(length normalisation): without it, every added token lowers the sum of log-probabilities,
so the search would favour ending early. At each step every live hypothesis is extended by
every token of the vocabulary (a character model's vocabulary is small); an extension by
the end-of-text token is a finished hypothesis, the others compete for the `beams` places.
It stops when no hypothesis is live or at `max_new_tokens`, where the live ones finish.
With as many beams as there are hypotheses nothing is pruned, and the search is exhaustive
(the tests check it against a brute-force search on a tiny model).

The live hypotheses are the rows of one batch with a KV cache; after each step the cache's
rows are reordered to follow their hypotheses' parents. When the context fills, the window
moves as in sampling (`ContextWindow`) and the cache is refilled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..kv_cache import KVCache
from .sampling import NOT_FINITE, ContextWindow, GenerationError, window_slide


class SearchCancelled(Exception):
    """A beam search ended before its end, as its caller asked."""


MAX_BEAMS = 1024  # each beam is a row of the KV cache (4.7 MB for the baby model, 4.8 GB for 1,024): a bound


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # the generated tokens (an end-of-text token ends a finished one)
    log_prob: float
    score: float  # log_prob / len(tokens) ** alpha


def normalised(log_prob: float, length: int, alpha: float) -> float:
    return log_prob / max(1, length) ** alpha


def check_beams(beams: int) -> None:
    if not 1 <= beams <= MAX_BEAMS:
        raise GenerationError(f"--beams must be between 1 and {MAX_BEAMS}, got {beams}")


@torch.inference_mode()
def beam_search(model: torch.nn.Module, prompt_ids: Sequence[int], beams: int, max_new_tokens: int,
                eot_id: int | None, alpha: float = 1.0, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, slide: int | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> list[Hypothesis]:
    """The best `beams` hypotheses after the prompt, best first. `eot_id` None: the
    end-of-text token is a token like any other (nothing finishes early). `cancelled` is
    asked before every step: True ends the search with SearchCancelled (a server's client
    that went away, or the server stopping)."""
    check_beams(beams)
    if max_new_tokens < 1:
        raise GenerationError(f"beam search needs --max-new-tokens of at least 1, got {max_new_tokens}")
    if not alpha >= 0:
        raise GenerationError(f"the length penalty must be >= 0, got {alpha}")
    block = model.config.block_size
    window = ContextWindow(block, window_slide(block, slide))
    use_cache = getattr(model, "supports_kv_cache", False)
    prompt = list(prompt_ids)
    live: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (generated tokens, log-probability)
    finished: list[Hypothesis] = []
    cache = None
    for step in range(max_new_tokens):
        if cancelled():
            raise SearchCancelled()
        n = len(prompt) + step  # tokens so far; predicting token n
        moved = window.update(n)
        if use_cache and cache is not None and not moved:  # the cache holds the rest: the last tokens only
            last = torch.tensor([[t[-1]] for t, _ in live], dtype=torch.long, device=device)  # (K, 1)
            logits = model(last, cache=cache, last_only=True)[0][:, -1]
        else:  # the whole window, into a new cache
            rows = torch.tensor([(prompt + list(t))[window.start : n] for t, _ in live], dtype=torch.long,
                                device=device)
            if use_cache:
                cache = KVCache.for_model(model, len(live), device, dtype)
            logits = model(rows, cache=cache, last_only=True)[0][:, -1]
        if not torch.isfinite(logits).all():  # a broken model: said, not searched into an empty text
            raise GenerationError(NOT_FINITE)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (K, V)
        totals = torch.tensor([lp for _, lp in live], device=device)[:, None] + log_probs
        if eot_id is not None:  # each live hypothesis ended here is a finished one
            for (tokens, _), value in zip(live, totals[:, eot_id].tolist()):
                finished.append(Hypothesis(tokens + (eot_id,), value, normalised(value, len(tokens) + 1, alpha)))
            totals[:, eot_id] = -math.inf
        # the best extensions by log-probability: they all have the same length, so the same order by score
        values, flat = totals.view(-1).topk(min(beams, totals.numel()))
        grown = [(divmod(i, totals.size(1)), v) for i, v in zip(flat.tolist(), values.tolist()) if v > -math.inf]
        if step == max_new_tokens - 1:  # out of length: the live ones finish as they are
            finished += [Hypothesis(live[p][0] + (t,), v, normalised(v, step + 1, alpha)) for (p, t), v in grown]
            break
        finished = sorted(finished, key=lambda h: h.score, reverse=True)[:beams]
        if not grown:
            break
        parents = torch.tensor([p for (p, _), _ in grown], dtype=torch.long, device=device)
        if cache is not None:  # each row's keys and values follow its hypothesis
            cache.reorder(parents)
        live = [(live[p][0] + (t,), v) for (p, t), v in grown]
    finished.sort(key=lambda h: h.score, reverse=True)
    return finished[:beams]


def exhaustive_search(model: torch.nn.Module, prompt_ids: Sequence[int], max_new_tokens: int, eot_id: int | None,
                      alpha: float = 1.0) -> Hypothesis:
    """The best hypothesis by trying every one (V ** max_new_tokens of them: tiny models
    only). Without a cache: the model reads each whole sequence, as a check of the search."""
    vocab = model.config.vocab_size
    best = Hypothesis((), -math.inf, -math.inf)
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    with torch.inference_mode():
        for step in range(max_new_tokens):
            rows = torch.tensor([list(prompt_ids) + list(t) for t, _ in frontier], dtype=torch.long)
            log_probs = torch.log_softmax(model(rows[:, -model.config.block_size :])[0][:, -1].float(), -1)
            following = []
            for (tokens, lp), row in zip(frontier, log_probs.tolist()):
                for token in range(vocab):
                    extended, value = tokens + (token,), lp + row[token]
                    if token == eot_id or step == max_new_tokens - 1:
                        score = normalised(value, len(extended), alpha)
                        if score > best.score:
                            best = Hypothesis(extended, value, score)
                    else:
                        following.append((extended, value))
            frontier = following
    return best
