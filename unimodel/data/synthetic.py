"""Synthetic parallel corpora generated deterministically (no download).

``numbers``: a number written in digits -> the same number in English words
("1407" -> "one thousand four hundred seven"). Train and validation numbers
are disjoint. Used to check that encoder-decoders learn a real mapping, and by
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
    split: str = "train", *, n_train: int = 20000, n_validation: int = 500, max_value: int = 99999, seed: int = 0
) -> list[dict[str, str]]:
    """Disjoint train/validation sets of ``{"source": digits, "target": words}``.

    Numbers are drawn without replacement from ``[0, max_value]`` with a fixed
    seed, so every call (every process, every machine) gets the same split.
    Registered as the pair corpus ``numbers``; ``data.corpus_options`` sets
    the keyword arguments.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    for name, value in (("n_train", n_train), ("n_validation", n_validation), ("max_value", max_value), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if max_value >= 10**12:
        raise ValueError(f"max_value must be below 10**12 (the largest number written in words), got {max_value}")
    total = n_train + n_validation
    if total > max_value + 1:
        raise ValueError(f"cannot draw {total} distinct numbers from [0, {max_value}]")
    numbers = random.Random(seed).sample(range(max_value + 1), total)
    chosen = numbers[:n_train] if split == "train" else numbers[n_train:]
    return [{"source": str(n), "target": number_to_words(n)} for n in chosen]
