"""Source -> target pair data: JSONL and TSV files, the numbers corpus, and which objective reads which data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import build_tiny

from unimodel.data.corpus import corpus_kind, load_pair_corpus
from unimodel.data.dataset import DataConfig, load_data, make_tokenizer
from unimodel.data.pairs import encode_pairs, read_pairs
from unimodel.data.synthetic import number_to_words
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, DataError
from unimodel.hookspecs import hookimpl
from unimodel.registry import Component, Registry


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ------------------------------------------------------------------ reading pairs
def test_jsonl_and_tsv_pairs(tmp_path):
    j = write(tmp_path / "a.jsonl", jsonl({"source": "1", "target": "one"}, {"source": " 2 ", "target": "two\n"}))
    t = write(tmp_path / "b.tsv", "3\tthree\n\n4\tfour\r\n")
    # blank lines skipped, surrounding whitespace dropped, files in the order given
    assert read_pairs([str(j), str(t)]) == [("1", "one"), ("2", "two"), ("3", "three"), ("4", "four")]
    # field names are configurable; other fields are ignored
    de = write(tmp_path / "de.jsonl", jsonl({"id": 7, "en": "house", "de": "Haus"}))
    assert read_pairs([str(de)], source_field="en", target_field="de") == [("house", "Haus")]
    # format forces a reading whatever the ending; a folder yields its .jsonl/.ndjson/.tsv files, sorted
    odd = write(tmp_path / "pairs.data", "5\tfive\n")
    assert read_pairs([str(odd)], format="tsv") == [("5", "five")]
    write(tmp_path / "dir" / "x.tsv", "6\tsix\n")
    write(tmp_path / "dir" / "readme.md", "not pairs")
    write(tmp_path / "dir" / "sub" / "a.ndjson", jsonl({"source": "7", "target": "seven"}))
    assert read_pairs([str(tmp_path / "dir")]) == [("7", "seven"), ("6", "six")]
    assert read_pairs([str(j), str(t)], max_pairs=3) == [("1", "one"), ("2", "two"), ("3", "three")]


def test_jsonl_record_missing_the_target_field(tmp_path):
    f = write(tmp_path / "d.jsonl", jsonl({"source": "1", "target": "one"}, {"source": "2", "targte": "two"}))
    with pytest.raises(DataError) as e:
        read_pairs([str(f)])
    msg = str(e.value)
    assert str(f) in msg and "line 2 has no 'target' field" in msg
    assert "Did you mean 'targte'?" in msg and "data.target_field" in msg
    g = write(tmp_path / "g.jsonl", jsonl({"src": "1", "target": "one"}))
    with pytest.raises(DataError, match=r"line 1 has no 'source' field.*Its fields: src, target.*data\.source_field"):
        read_pairs([str(g)])
    h = write(tmp_path / "h.jsonl", jsonl({"source": 1, "target": "one"}))
    with pytest.raises(DataError, match="line 1: field 'source' is int, expected a string"):
        read_pairs([str(h)])


def test_tsv_line_without_one_tab(tmp_path):
    f = write(tmp_path / "d.tsv", "1\tone\n2 two\n")
    with pytest.raises(DataError) as e:
        read_pairs([str(f)])
    assert str(f) in str(e.value) and "line 2 has no tab (5 characters)" in str(e.value) and "two" not in str(e.value)
    assert "source<TAB>target" in str(e.value)
    g = write(tmp_path / "g.tsv", "1\tone\textra\n")
    with pytest.raises(DataError, match=r"line 1 has 2 tabs.*exactly one tab.*JSONL"):
        read_pairs([str(g)])


def test_empty_files_and_empty_sides(tmp_path):
    for name in ("empty.tsv", "blank.jsonl"):
        f = write(tmp_path / name, "" if name.endswith("tsv") else "\n  \n")
        with pytest.raises(DataError) as e:
            read_pairs([str(f)])
        assert f"{str(f)!r} holds no source/target pairs" in str(e.value)
    f = write(tmp_path / "half.tsv", "1\tone\n2\t  \n")
    with pytest.raises(DataError, match=r"half\.tsv' line 2: the target is empty"):
        read_pairs([str(f)])
    g = write(tmp_path / "half.jsonl", jsonl({"source": "", "target": "x"}))
    with pytest.raises(DataError, match=r"line 1: the source is empty"):
        read_pairs([str(g)])


def test_plain_text_is_not_pairs(tmp_path):
    f = write(tmp_path / "notes.txt", "1\tone\n")
    with pytest.raises(DataError) as e:
        read_pairs([str(f)], objective="seq2seq")
    msg = str(e.value)
    assert "notes.txt" in msg and "read as plain text" in msg
    assert "objective 'seq2seq' trains on source -> target" in msg
    assert 'data.format = "tsv"' in msg


# ------------------------------------------------------------------ what the objective reads
def test_text_sources_refused_for_pairs_and_pairs_for_text(tmp_path):
    with pytest.raises(
        DataError,
        match=r"corpus 'pydoc' holds text, but objective 'seq2seq' trains on source -> "
        r"target pairs.*data\.corpus = \"numbers\"",
    ):
        load_data(DataConfig(), kind="pairs", objective="seq2seq")
    with pytest.raises(
        DataError,
        match=r"corpus 'numbers' holds source -> target pairs, but objective 'clm' trains "
        r"on text.*seq2seq",
    ):
        load_data(DataConfig(corpus="numbers"), kind="text", objective="clm")
    tsv = write(tmp_path / "p.tsv", "1\tone\n2\ttwo\n")
    with pytest.raises(DataError) as e:
        load_data(DataConfig(paths=[str(tsv)]), kind="text", objective="clm")
    assert "p.tsv" in str(e.value) and "TSV source<TAB>target pairs" in str(e.value)
    assert "objective 'clm' trains on text" in str(e.value) and 'data.format = "text"' in str(e.value)
    # read as text when asked
    assert load_data(DataConfig(paths=[str(tsv)], format="text", validation_fraction=0), kind="text").train == [
        "1\tone\n2\ttwo\n"
    ]
    pairs = write(tmp_path / "p.jsonl", jsonl({"source": "1", "target": "one"}))
    with pytest.raises(DataError, match=r"line 1 holds a source/target pair.*objective 'clm' trains on text"):
        load_data(DataConfig(paths=[str(pairs)]), kind="text", objective="clm")


def test_pair_files_split_by_content_or_by_validation_paths(tmp_path):
    rows = [f"{i}\t{number_to_words(i)}" for i in range(40)]
    f = write(tmp_path / "all.tsv", "\n".join(rows) + "\n")
    raw = load_data(DataConfig(paths=[str(f)], validation_fraction=0.25), kind="pairs")
    assert len(raw.train) == 30 and len(raw.validation) == 10 and not raw.fixed_validation
    assert sorted(raw.train + raw.validation) == sorted(tuple(r.split("\t")) for r in rows)
    # the split follows content: the same pairs in another order split the same way
    g = write(tmp_path / "rev.tsv", "\n".join(reversed(rows)) + "\n")
    again = load_data(DataConfig(paths=[str(g)], validation_fraction=0.25), kind="pairs")
    assert set(again.validation) == set(raw.validation)
    # validation files instead of a fraction
    v = write(tmp_path / "valid.jsonl", jsonl({"source": "100", "target": "one hundred"}))
    held = load_data(DataConfig(paths=[str(f)], validation_paths=str(v)), kind="pairs")
    assert len(held.train) == 40 and held.validation == [("100", "one hundred")] and held.fixed_validation
    # the tokenizer trains on both sides of the training pairs
    assert held.tokenizer_texts()[:4] == ["0", "zero", "1", "one"]
    # text takes validation files the same way
    a, b = write(tmp_path / "a.txt", "train text"), write(tmp_path / "b.txt", "held-out text")
    text = load_data(DataConfig(paths=[str(a)], validation_paths=[str(b)]), kind="text")
    assert (text.train, text.validation, text.fixed_validation) == (["train text"], ["held-out text"], True)
    one = write(tmp_path / "one.tsv", "1\tone\n")
    with pytest.raises(DataError, match="1 pair\\(s\\), too few to hold some out.*validation_paths"):
        load_data(DataConfig(paths=[str(one)]), kind="pairs")


# ------------------------------------------------------------------ the numbers corpus
def test_numbers_corpus_is_deterministic_with_disjoint_splits():
    assert corpus_kind("numbers") == "pairs" and corpus_kind("pydoc") == "text"
    raw = load_data(DataConfig(corpus="numbers"), kind="pairs")
    assert len(raw.train) == 20000 and len(raw.validation) == 500 and raw.fixed_validation
    assert raw.train == load_data(DataConfig(corpus="numbers"), kind="pairs").train  # same every call
    sources = {s for s, _ in raw.train}
    assert not sources & {s for s, _ in raw.validation}
    assert all(t == number_to_words(int(s)) for s, t in raw.train[:200] + raw.validation)
    assert max(int(s) for s, _ in raw.train) <= 99999
    # options, and max_documents capping the training split only
    small = load_data(
        DataConfig(
            corpus="numbers", corpus_options={"n_train": 50, "n_validation": 5, "max_value": 99}, max_documents=20
        ),
        kind="pairs",
    )
    assert len(small.train) == 20 and len(small.validation) == 5
    assert all(int(s) <= 99 for s, _ in small.train + small.validation)


def test_bad_corpus_options():
    with pytest.raises(DataError, match=r"corpus 'numbers' has no option 'n_trian'\. Did you mean 'n_train'\?"):
        load_data(DataConfig(corpus="numbers", corpus_options={"n_trian": 5}), kind="pairs")
    with pytest.raises(DataError, match=r"corpus 'numbers': cannot draw 200 distinct numbers.*data\.corpus_options"):
        load_data(
            DataConfig(corpus="numbers", corpus_options={"max_value": 9, "n_train": 100, "n_validation": 100}),
            kind="pairs",
        )
    with pytest.raises(DataError, match=r"n_train must be a non-negative integer, got 'many'"):
        load_data(DataConfig(corpus="numbers", corpus_options={"n_train": "many"}), kind="pairs")
    with pytest.raises(DataError, match=r"corpus 'pydoc' has no option 'size'.*Its options: none"):
        load_data(DataConfig(corpus_options={"size": 3}), kind="text")


class _PairPlugin:
    @hookimpl
    def unimodel_components(self):
        return [
            Component(kind="corpus", name="tuples", target="test_pairs:_tuple_corpus", data_kind="pairs"),
            Component(kind="corpus", name="bad", target="test_pairs:_bad_corpus", data_kind="pairs"),
        ]


def _tuple_corpus(split):
    return [("a", "b")] if split == "train" else [("c", "d")]


def _bad_corpus(split):
    return [("a", "b"), {"source": "only"}]


def test_a_plugin_registers_a_pair_corpus():
    reg = Registry(discover=False)
    assert reg.add_plugin(_PairPlugin(), "pairs").ok
    assert load_pair_corpus("tuples", "validation", registry=reg) == [("c", "d")]
    with pytest.raises(DataError, match=r"corpus 'bad' split 'train': item 1 is not a pair of strings"):
        load_pair_corpus("bad", "train", registry=reg)


# ------------------------------------------------------------------ tokenizers
@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_split_digits_gives_one_token_per_digit(kind):
    raw = load_data(DataConfig(corpus="numbers", corpus_options={"n_train": 2000, "n_validation": 10}), kind="pairs")
    texts = raw.tokenizer_texts()
    split = make_tokenizer(DataConfig(tokenizer=kind, vocab_size=400, split_digits=True), texts)
    pieces = [split.id_to_token(i) for i in split.encode("12345")]
    assert [p for p in pieces if p != "\u2581"] == ["1", "2", "3", "4", "5"]  # unigram adds a word-start piece
    if kind != "wordpiece":  # WordPiece writes every digit as a word of its own
        assert split.decode(split.encode("4821 and 17")) == "4821 and 17"
    whole = make_tokenizer(DataConfig(tokenizer=kind, vocab_size=400), texts)
    assert len(whole.encode("12345")) < 5  # without the option, frequent digit groups become tokens


def test_encoded_pairs_feed_seq2seq(tmp_path):
    tok = Tokenizer.train_bpe(["1 2 3", "one two three"] * 5, vocab_size=300, min_frequency=1)
    examples = encode_pairs(tok, [("1 2", "one two"), ("3", "three")])
    assert examples[0] == {"source": tok.encode("1 2"), "target": tok.encode("one two")}
    model = build_tiny("t5", vocab_size=tok.vocab_size, n_layers=1, objective="seq2seq", tokenizer=tok)
    batch = model.objective.prepare(examples, tokenizer=tok)
    eos = tok.special_id("eos")
    assert batch["input_ids"][1].tolist()[: len(examples[1]["source"]) + 1] == [*examples[1]["source"], eos]
    labels = batch["labels"].tolist()  # the framed target, padding ignored (-100)
    assert labels[0][: len(examples[0]["target"]) + 1] == [*examples[0]["target"], eos]
    assert labels[1] == [*examples[1]["target"], eos] + [-100] * (len(labels[1]) - len(examples[1]["target"]) - 1)
    # a batch of text blocks, or of sources alone, is not seq2seq data
    with pytest.raises(DataError, match=r"seq2seq example 0 has no 'source' \(keys: input_ids\).*source/target pairs"):
        model.objective.prepare([{"input_ids": [1, 2]}], tokenizer=tok)
    with pytest.raises(DataError, match=r"seq2seq example 1 has no 'target' \(keys: source\)"):
        model.objective.prepare([examples[0], {"source": [1]}], tokenizer=tok)
    # BART-style framing needs a bos distinct from eos; the byte-level BPE's are one token
    framed = build_tiny(
        "t5", vocab_size=tok.vocab_size, n_layers=1, objective={"name": "seq2seq", "add_bos": True}, tokenizer=tok
    )
    with pytest.raises(ConfigError, match="bos and eos are one token.*add_bos = false"):
        framed.objective.prepare(examples, tokenizer=tok)
