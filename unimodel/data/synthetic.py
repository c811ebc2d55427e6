"""Synthetic parallel corpora generated deterministically (no download).

``numbers``: a number written in digits -> the same number in English words
("1407" -> "one thousand four hundred seven"), or several (``count``) joined by
" , ". Train and validation pairs are disjoint. Used to check that encoder-decoders learn a real mapping, and by
non-autoregressive decoding, whose outputs have lengths unknown in advance.
"""

from __future__ import annotations

import random
from typing import Any

from unimodel.bounds import declare_size

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n or not words:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """English words for a non-negative integer below 10**12 (American style, no "and")."""
    if not 0 <= n < 10**12:
        raise ValueError(f"number_to_words takes 0 <= n < 10**12, got {n}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for size, name in _SCALES:
        if n >= size:
            words += [*_below_thousand(n // size), name]
            n %= size
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def _numbers_bytes(split: str = "train", *, n_train: int = 20000, n_validation: int = 500, **_: Any) -> float:
    """Memory of one split: the shuffled draw of every number (about 48 bytes each), then each pair
    of the split as strings and, once encoded, token ids (about 800 bytes)."""
    if not all(isinstance(n, int) for n in (n_train, n_validation)):
        return 0  # the corpus itself refuses the values
    chosen = n_train if split == "train" else n_validation
    return 48 * (n_train + n_validation) + 800 * chosen


@declare_size(_numbers_bytes)
def numbers_pairs(
    split: str = "train",
    *,
    n_train: int = 20000,
    n_validation: int = 500,
    max_value: int | None = None,
    seed: int = 0,
    count: int = 1,
) -> list[dict[str, str]]:
    """Disjoint train/validation sets of ``{"source": digits, "target": words}``.

    With ``count`` > 1 a pair holds that many numbers: ``"4821 17 90321"`` ->
    ``"four thousand eight hundred twenty-one , seventeen , ninety thousand three
    hundred twenty-one"``. Each number is drawn from ``[0, max_value]``;
    ``max_value`` defaults to 99,999 for one number and to 99,999,999 for more
    (four such numbers make targets of about 54 tokens with the examples'
    digit-splitting BPE), so that longer targets exercise length prediction.

    Pairs are drawn with a fixed seed, distinct, so every call (every process,
    every machine) gets the same split, and no validation pair is a training
    pair; ``count = 1`` draws without replacement as this corpus always has.
    Registered as the pair corpus ``numbers``; ``data.corpus_options`` sets the
    keyword arguments.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if max_value is None:
        max_value = 99_999 if count == 1 else 99_999_999
    values = (("n_train", n_train), ("n_validation", n_validation), ("max_value", max_value), ("seed", seed))
    for name, value in (*values, ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1 (numbers per pair), got {count}")
    if max_value >= 10**12:
        raise ValueError(f"max_value must be below 10**12 (the largest number written in words), got {max_value}")
    total = n_train + n_validation
    if total > (max_value + 1) ** count:
        what = "numbers" if count == 1 else f"tuples of {count} numbers"
        raise ValueError(f"cannot draw {total} distinct {what} from [0, {max_value}]")
    rng = random.Random(seed)
    tuples: list[tuple[int, ...]]
    if count == 1:
        tuples = [(n,) for n in rng.sample(range(max_value + 1), total)]
    else:
        tuples = _distinct_tuples(rng, total, count, max_value)
    chosen = tuples[:n_train] if split == "train" else tuples[n_train:]
    return [{"source": " ".join(map(str, t)), "target": " , ".join(map(number_to_words, t))} for t in chosen]


def _distinct_tuples(rng: random.Random, total: int, count: int, max_value: int) -> list[tuple[int, ...]]:
    """``total`` distinct tuples of ``count`` numbers in ``[0, max_value]``, in the order drawn."""
    if total > (max_value + 1) ** count // 2:
        # dense: draw the tuples' indices without replacement (rejection would slow down near the end)
        return [_tuple_at(i, count, max_value + 1) for i in rng.sample(range((max_value + 1) ** count), total)]
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < total:
        t = tuple(rng.randrange(max_value + 1) for _ in range(count))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _tuple_at(index: int, count: int, base: int) -> tuple[int, ...]:
    digits = []
    for _ in range(count):
        index, d = divmod(index, base)
        digits.append(d)
    return tuple(digits)
