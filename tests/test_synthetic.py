import statistics

import pytest

from unimodel.data.dataset import tokenizer_roles
from unimodel.data.synthetic import number_to_words, numbers_pairs
from unimodel.data.tokenizer import Tokenizer


@pytest.mark.parametrize(
    "n,words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (21, "twenty-one"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (999, "nine hundred ninety-nine"),
        (1000, "one thousand"),
        (1407, "one thousand four hundred seven"),
        (90210, "ninety thousand two hundred ten"),
        (2_000_019, "two million nineteen"),
        (
            123_456_789_012,
            "one hundred twenty-three billion four hundred fifty-six million seven hundred eighty-nine thousand twelve",
        ),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_words_are_unique_per_number():
    seen = {number_to_words(n) for n in range(20000)}
    assert len(seen) == 20000


def test_splits_are_deterministic_and_disjoint():
    a = numbers_pairs("train", n_train=300, n_validation=50, max_value=999)
    b = numbers_pairs("train", n_train=300, n_validation=50, max_value=999)
    v = numbers_pairs("validation", n_train=300, n_validation=50, max_value=999)
    assert a == b and len(a) == 300 and len(v) == 50
    assert not {p["source"] for p in a} & {p["source"] for p in v}
    assert all(number_to_words(int(p["source"])) == p["target"] for p in a + v)


def test_bad_requests():
    with pytest.raises(ValueError, match="distinct numbers"):
        numbers_pairs(n_train=900, n_validation=200, max_value=999)
    with pytest.raises(ValueError, match="split"):
        numbers_pairs("test")


def test_one_number_per_pair_is_unchanged_by_count():
    # the corpus's output before it had the count option
    assert numbers_pairs("train")[:3] == [
        {"source": "50494", "target": "fifty thousand four hundred ninety-four"},
        {"source": "99346", "target": "ninety-nine thousand three hundred forty-six"},
        {"source": "55125", "target": "fifty-five thousand one hundred twenty-five"},
    ]
    assert numbers_pairs("validation")[:2] == [
        {"source": "5465", "target": "five thousand four hundred sixty-five"},
        {"source": "2730", "target": "two thousand seven hundred thirty"},
    ]
    assert numbers_pairs("train", count=1, n_train=50) == numbers_pairs("train", n_train=50)


def test_several_numbers_per_pair():
    train = numbers_pairs("train", count=3, n_train=200, n_validation=20)
    validation = numbers_pairs("validation", count=3, n_train=200, n_validation=20)
    assert train == numbers_pairs("train", count=3, n_train=200, n_validation=20)
    assert not {p["source"] for p in train} & {p["source"] for p in validation}
    for p in train + validation:
        numbers = [int(n) for n in p["source"].split(" ")]
        assert len(numbers) == 3 and max(numbers) <= 99_999_999
        assert p["target"] == " , ".join(number_to_words(n) for n in numbers)
    # every tuple of [0, 9]^2 drawn once: the dense draw
    every = numbers_pairs("train", count=2, max_value=9, n_train=70, n_validation=30)
    every += numbers_pairs("validation", count=2, max_value=9, n_train=70, n_validation=30)
    assert len({p["source"] for p in every}) == 100
    with pytest.raises(ValueError, match="distinct tuples of 2 numbers"):
        numbers_pairs(count=2, max_value=9, n_train=100, n_validation=1)
    with pytest.raises(ValueError, match="count must be at least 1"):
        numbers_pairs(count=0)


def test_four_numbers_make_targets_of_48_tokens_or_more():
    """With the examples' tokenizer: a digit-splitting byte-level BPE of at most 1000 tokens trained on the pairs."""
    pairs = numbers_pairs("train", count=4, n_train=2000)
    texts = [side for p in pairs for side in (p["source"], p["target"])]
    tok = Tokenizer.train("bpe", texts, 1000, tokenizer_roles("bpe"), min_frequency=2, split_digits=True)
    lengths = [len(ids) for ids in tok.encode_batch([p["target"] for p in pairs])]
    assert statistics.mean(lengths) >= 48 and max(lengths) <= 64
