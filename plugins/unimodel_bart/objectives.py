"""BART's denoising objective: text infilling with optional sentence permutation.

The noise changes the length of the input. Per document (after optional
sentence permutation):

* a budget of ``ceil(mask_ratio * n)`` tokens is drawn as span lengths from
  Poisson(``poisson_lambda``) until the budget is covered; the last span is
  trimmed so the lengths add up to the budget exactly;
* every span of length k >= 1 is replaced by ONE ``<mask>`` (k tokens become 1);
  every zero-length span INSERTS a ``<mask>``;
* a ``random_ratio`` fraction of spans gets a random vocabulary token instead.

Spans never cover a special token (bos, eos, pad, mask, sentinels ...), never
overlap and never touch (two spans, or a span and an insertion, keep at least
one original token between them), so every ``<mask>`` in the source stands for
exactly one gap of the original. Within a run of maskable tokens, positions are
uniform over the arrangements that satisfy this. The target is the original document, framed as BART does:
source ``<s> noised </s>``, labels ``<s> original </s>`` (bos only when the
tokenizer has one; a block that already starts with bos or ends with eos is
not framed twice: those tokens are taken off before the noise and put back
after). The model makes the decoder inputs by shifting the labels right behind
its own decoder start token (eos for BART, pad for T5), so the objective works
with any encoder-decoder; it uses tokenizer roles and ids only.

Sentences, for ``permute_sentences``: a sentence ends after a full-stop token
or a special token (an eos separating packed documents); an unfinished tail
after the last one stays at the end. Full-stop tokens are ``full_stop_ids`` or, when that
is empty, every tokenizer piece made only of punctuation and whitespace that
contains one of the ``full_stops`` characters (``"."``, ``'."'``, ``"..."``).
This is token-level: a ``.`` piece inside ``3.14`` or ``os.path`` also ends a
sentence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Backbone, ObjectiveOutput, TokenLoss
from unimodel.objectives import IGNORE_INDEX, TokenLossObjective, pad_sequences, token_objective_step
from unimodel_bart import TEXT_INFILLING_REQUIRES
from unimodel_bart.config import TextInfillingConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


@dataclass
class Noised:
    """One document's noise.

    ``document`` is the input after sentence permutation; ``spans`` are
    ``(start, length)`` into it, sorted (length 0: a token inserted before
    ``start``); ``source`` is ``document`` with each span replaced by its
    entry of ``replacements``.
    """

    document: list[int]
    source: list[int]
    spans: list[tuple[int, int]] = field(default_factory=list)
    replacements: list[int] = field(default_factory=list)


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randperm(n: int, generator: torch.Generator | None) -> list[int]:
    return torch.randperm(n, generator=generator).tolist()


def permute_sentences(
    doc: Sequence[int], ends: frozenset[int], fraction: float, generator: torch.Generator | None
) -> list[int]:
    """Shuffle ``ceil(n * fraction)`` of the n sentences of ``doc`` among their own slots.

    A sentence ends after any token in ``ends``; the others keep their places.
    An unfinished tail (a block cut mid-sentence) stays last, so every sentence
    still ends with its full stop and the sentences can be found again.
    """
    sentences: list[list[int]] = [[]]
    for tok in doc:
        sentences[-1].append(tok)
        if tok in ends:
            sentences.append([])
    tail = sentences.pop()
    n = len(sentences)
    k = math.ceil(n * fraction)
    if n < 2 or k < 2:
        return list(doc)
    chosen = _randperm(n, generator)[:k]
    order = list(range(n))
    for slot, j in zip(chosen, _randperm(k, generator)):
        order[slot] = chosen[j]
    return [tok for i in order for tok in sentences[i]] + tail


def poisson_span_lengths(budget: int, lam: float, generator: torch.Generator | None) -> list[int]:
    """Poisson(lam) lengths drawn until they cover ``budget``; the last trimmed so they sum to it."""
    if budget <= 0:
        return []
    rate = torch.full((budget,), float(lam))
    lengths: list[int] = []
    total = 0
    while total < budget:
        for v in torch.poisson(rate, generator=generator).long().tolist():
            if total + v >= budget:
                lengths.append(budget - total)
                return lengths
            lengths.append(v)
            total += v
    return lengths


def _segments(doc: Sequence[int], specials: frozenset[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(start, length)`` of maskable (non-special) tokens."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, tok in enumerate(doc):
        if tok in specials:
            if start is not None:
                runs.append((start, i - start))
                start = None
        elif start is None:
            start = i
    if start is not None:
        runs.append((start, len(doc) - start))
    return runs


def place_spans(
    segments: Sequence[tuple[int, int]], lengths: Sequence[int], generator: torch.Generator | None
) -> list[tuple[int, int]]:
    """Place spans of ``lengths`` in ``segments``, disjoint and with a kept token between any two.

    Spans are dealt to segments longest first, each to a segment with room,
    chosen in proportion to the room left (a span too long for every segment is
    cut to the largest room; one that cannot fit at all is dropped). Inside a
    segment the span order is shuffled and the free tokens are spread over the
    gaps uniformly (stars and bars). Returns sorted ``(start, length)``.
    """
    used = [0] * len(segments)
    placed: list[list[int]] = [[] for _ in segments]
    for length in sorted(lengths, reverse=True):
        # room for one more span: tokens left after the separators the segment's spans already need
        rooms = [n - used[s] - len(placed[s]) for s, (_, n) in enumerate(segments)]
        fits = [s for s, r in enumerate(rooms) if r >= length]
        if not fits:
            best = max(range(len(rooms)), key=rooms.__getitem__, default=None)
            if best is None or rooms[best] < 1:
                continue
            length, fits = rooms[best], [best]
        weights = [rooms[s] - length + 1 for s in fits]
        pick = _uniform(generator) * sum(weights)
        s = fits[-1]
        for cand, w in zip(fits, weights):
            if pick < w:
                s = cand
                break
            pick -= w
        placed[s].append(length)
        used[s] += length
    spans: list[tuple[int, int]] = []
    for s, (seg_start, n) in enumerate(segments):
        k = len(placed[s])
        if k == 0:
            continue
        order = [placed[s][j] for j in _randperm(k, generator)]
        spare = n - used[s] - (k - 1)  # free tokens beyond one separator between neighbouring spans
        slots = sorted(_randperm(spare + k, generator)[:k])
        cursor, prev = seg_start, -1
        for j, (slot, length) in enumerate(zip(slots, order)):
            cursor += slot - prev - 1 + (1 if j else 0)
            spans.append((cursor, length))
            cursor += length
            prev = slot
    return sorted(spans)


def infill(
    ids: Sequence[int],
    *,
    mask_id: int,
    specials: frozenset[int],
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    random_ratio: float = 0.0,
    random_ids: Tensor | None = None,
    permute: float = 0.0,
    full_stop_ids: frozenset[int] = frozenset(),
    generator: torch.Generator | None = None,
) -> Noised:
    """Noise one document (no framing). ``random_ids`` (N,) are the ids a random replacement draws from."""
    doc = list(ids)
    if permute > 0:
        doc = permute_sentences(doc, full_stop_ids | specials, permute, generator)
    segments = _segments(doc, specials)
    n = sum(length for _, length in segments)
    budget = math.ceil(n * mask_ratio) if n else 0
    spans = place_spans(segments, poisson_span_lengths(budget, poisson_lambda, generator), generator)
    replacements = []
    for _ in spans:
        tok = mask_id
        if random_ratio > 0 and random_ids is not None and _uniform(generator) < random_ratio:
            tok = int(random_ids[int(torch.randint(len(random_ids), (), generator=generator))])
        replacements.append(tok)
    source: list[int] = []
    cursor = 0
    for (start, length), tok in zip(spans, replacements):
        source.extend(doc[cursor:start])
        source.append(tok)
        cursor = start + length
    source.extend(doc[cursor:])
    return Noised(document=doc, source=source, spans=spans, replacements=replacements)


class TextInfilling(TokenLossObjective[TextInfillingConfig]):
    """BART denoising: reconstruct the original document from its span-masked, permuted form.

    ``prepare`` takes packed blocks ``{"input_ids": [...]}`` and returns
    ``input_ids`` / ``attention_mask`` (B, S) — sources are shorter than their
    targets and padded — and ``labels`` (B, T) with -100 on padding. The loss is
    the cross-entropy of the decoder's logits against the labels, unshifted.
    """

    config_class = TextInfillingConfig
    requires = TEXT_INFILLING_REQUIRES
    special_tokens = ("mask", "eos")

    def __init__(self, config: TextInfillingConfig) -> None:
        super().__init__(config)
        self._vocab_of: Tokenizer | None = None  # the tokenizer _vocab describes (held, so its id cannot be reused)
        self._vocab: tuple[frozenset[int], Tensor] | None = None

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    # ------------------------------------------------------------- tokens
    def _id(self, role: str, given: int | None, tokenizer: Tokenizer | None, *, required: bool = True) -> int | None:
        if given is not None:
            return given
        if tokenizer is not None and tokenizer.has_role(role):
            return tokenizer.special_id(role)
        if required:
            raise ConfigError(
                f"objective 'text_infilling' needs a {role} token: pass a tokenizer with a {role!r} role "
                f"or set {role}_token_id"
            )
        return None

    def _vocabulary(self, tokenizer: Tokenizer) -> tuple[frozenset[int], Tensor]:
        """(full-stop ids found in the tokenizer, non-special ids for random replacement), cached."""
        if self._vocab_of is not tokenizer or self._vocab is None:
            specials = tokenizer.special_ids
            marks = set(self.config.full_stops)
            stops = set()
            for idx in range(tokenizer.vocab_size):
                if idx in specials:
                    continue
                text = tokenizer.decode([idx], skip_special_tokens=False)
                core = text.strip()
                if core and marks & set(core) and not any(ch.isalnum() for ch in core):
                    stops.add(idx)
            ordinary = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in specials], dtype=torch.long)
            self._vocab_of, self._vocab = tokenizer, (frozenset(stops), ordinary)
        return self._vocab

    # ------------------------------------------------------------ prepare
    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        c = self.config
        mask = self._id("mask", c.mask_token_id, tokenizer)
        assert mask is not None  # required: _id raised otherwise
        eos = self._id("eos", c.eos_token_id, tokenizer, required=c.add_eos)
        bos = self._id("bos", c.bos_token_id, tokenizer, required=False) if c.add_bos else None
        pad = c.pad_token_id
        if pad is None:
            if tokenizer is None:
                raise ConfigError("objective 'text_infilling' needs a pad token: pass a tokenizer or set pad_token_id")
            pad = tokenizer.pad_id
        specials = {t for t in (mask, eos, bos, pad) if t is not None}
        full_stops = frozenset(c.full_stop_ids)
        random_ids = None
        if tokenizer is not None:
            specials |= tokenizer.special_ids
            if (c.permute_sentences > 0 and not full_stops) or c.random_ratio > 0:
                found, random_ids = self._vocabulary(tokenizer)
                full_stops = full_stops or found
        elif c.random_ratio > 0:
            raise ConfigError(
                "text_infilling with random_ratio > 0 needs the tokenizer (random tokens come from its vocabulary)"
            )
        if c.permute_sentences > 0 and not full_stops:
            raise ConfigError(
                "text_infilling: permute_sentences is on but no full-stop token is known; set full_stop_ids "
                "or pass a tokenizer with pieces containing one of full_stops"
            )
        frozen = frozenset(specials)
        sources, targets = [], []
        for i, ex in enumerate(examples):
            if "input_ids" not in ex:
                raise DataError(f"text_infilling example {i} has no 'input_ids' (keys: {', '.join(ex) or 'none'})")
            doc = [int(t) for t in ex["input_ids"]]
            # framing already present is dropped and re-added, so noise never moves it
            if bos is not None and doc and doc[0] == bos:
                doc = doc[1:]
            if c.add_eos and doc and doc[-1] == eos:
                doc = doc[:-1]
            head = [bos] if bos is not None else []
            tail = [eos] if c.add_eos and eos is not None else []
            if c.max_length is not None:
                doc = doc[: c.max_length - len(head) - len(tail)]
            noised = infill(
                doc,
                mask_id=mask,
                specials=frozen,
                mask_ratio=c.mask_ratio,
                poisson_lambda=c.poisson_lambda,
                random_ratio=c.random_ratio,
                random_ids=random_ids,
                permute=c.permute_sentences,
                full_stop_ids=full_stops,
                generator=generator,
            )
            source = noised.source
            if c.max_length is not None:  # insertions can, rarely, outgrow the limit
                source = source[: c.max_length - len(head) - len(tail)]
            sources.append(head + source + tail)
            targets.append(head + doc + tail)
        ids, attention = pad_sequences(sources, pad)
        labels, label_mask = pad_sequences(targets, pad)
        labels = labels.masked_fill(label_mask == 0, IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    # --------------------------------------------------------------- loss
    def token_loss(self) -> TokenLoss:
        return TokenLoss(label_smoothing=self.config.label_smoothing)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        if "labels" not in batch:
            raise DataError("a text_infilling batch needs 'labels'; build it with objective.prepare")
        # without decoder_input_ids the model shifts the labels right behind its own start token
        inputs = {k: batch.get(k) for k in ("input_ids", "attention_mask", "decoder_input_ids")}
        return token_objective_step(self, model, inputs, batch["labels"])
