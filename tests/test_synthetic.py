import pytest

from unimodel.data.synthetic import number_to_words, numbers_pairs


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
