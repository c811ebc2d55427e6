"""Text sources, splitting, packing and tokenizers of the data pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unimodel.data.corpus import pydoc_topics
from unimodel.data.dataset import DataConfig, encode_and_pack, load_split, make_tokenizer, tokenizer_roles
from unimodel.data.packing import pack_blocks, pack_blocks_with_tail, split_documents
from unimodel.data.text import read_documents
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, DataError
from unimodel.hookspecs import hookimpl
from unimodel.registry import Component, Registry


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ sources
def test_files_folders_and_globs(tmp_path):
    write(tmp_path / "one.txt", "first file")
    write(tmp_path / "docs" / "b.md", "markdown b")
    write(tmp_path / "docs" / "a" / "c.txt", "nested c")
    write(tmp_path / "docs" / "skip.bin", "not text")
    assert read_documents(paths=[str(tmp_path / "one.txt")]) == ["first file"]
    # folders: recursive, sorted, only the configured endings
    assert read_documents(paths=[str(tmp_path / "docs")]) == ["nested c", "markdown b"]
    assert read_documents(paths=[str(tmp_path / "docs" / "**" / "*.txt")]) == ["nested c"]
    # every entry keeps its place; a file named twice is read once
    docs = read_documents(paths=[str(tmp_path / "one.txt"), str(tmp_path / "docs"), str(tmp_path / "one.txt")])
    assert docs == ["first file", "nested c", "markdown b"]


def test_document_units(tmp_path):
    f = write(tmp_path / "t.txt", "para one\nline two\n\n  \npara two\n")
    assert read_documents(paths=[str(f)]) == ["para one\nline two\n\n  \npara two\n"]
    assert read_documents(paths=[str(f)], document_unit="paragraph") == ["para one\nline two", "para two\n"]
    assert read_documents(paths=[str(f)], document_unit="line") == ["para one", "line two", "para two"]


def test_jsonl_with_a_configurable_field(tmp_path):
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps({"id": i, "body": f"text {i}"}) for i in range(3)) + "\n\n")
    assert read_documents(paths=[str(f)], text_field="body") == ["text 0", "text 1", "text 2"]
    # format="jsonl" reads any ending as JSONL
    g = write(tmp_path / "d.data", json.dumps({"text": "x"}))
    assert read_documents(paths=[str(g)], format="jsonl") == ["x"]


def test_jsonl_line_without_the_field(tmp_path):
    f = write(tmp_path / "d.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(DataError, match=r"line 2 has no 'text' field\. Did you mean 'txt'\?.*data\.text_field"):
        read_documents(paths=[str(f)])


def test_jsonl_bad_lines(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_documents(paths=[str(bad)])
    wrong = write(tmp_path / "wrong.jsonl", '{"text": 3}\n')
    with pytest.raises(DataError, match="'text' is int, expected a string"):
        read_documents(paths=[str(wrong)])


def test_missing_path_is_a_clear_error(tmp_path):
    write(tmp_path / "corpus.txt", "x")
    with pytest.raises(DataError, match=r"'.*corpsu\.txt' does not exist.*Did you mean 'corpus\.txt'"):
        read_documents(paths=[str(tmp_path / "corpsu.txt")])


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataError, match=r"glob '.*\*\.txt' matched no files"):
        read_documents(paths=[str(tmp_path / "*.txt")])


def test_empty_corpus_and_empty_folder(tmp_path):
    f = write(tmp_path / "blank.txt", "  \n\n")
    with pytest.raises(DataError, match="yielded no text"):
        read_documents(paths=[str(f)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files ending in"):
        read_documents(paths=[str(tmp_path / "empty")])
    with pytest.raises(DataError, match="no data source"):
        read_documents()


def test_non_utf8_file(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_documents(paths=[str(f)])


def test_pydoc_corpus_is_registered():
    docs = read_documents(corpus="pydoc")
    from pydoc_data.topics import topics

    assert docs == [topics[k] for k in sorted(topics)] == pydoc_topics()
    assert len(docs) > 50 and sum(map(len, docs)) > 100_000
    with pytest.raises(DataError, match="no corpus named 'pydc'.*Did you mean 'pydoc'"):
        read_documents(corpus="pydc")


class _CorpusPlugin:
    @hookimpl
    def unimodel_components(self):
        return [
            Component(kind="corpus", name="shouting", target="test_data:_shouting_corpus"),
            Component(kind="corpus", name="broken", target="test_data:_broken_corpus"),
        ]


def _shouting_corpus():
    return iter(["HELLO", "", "WORLD"])


def _broken_corpus():
    return ["fine", 42]


def test_a_plugin_registers_a_corpus():
    reg = Registry(discover=False)
    assert reg.add_plugin(_CorpusPlugin(), "shout").ok
    assert read_documents(corpus="shouting", registry=reg) == ["HELLO", "WORLD"]
    with pytest.raises(DataError, match="document 1 is int, expected str"):
        read_documents(corpus="broken", registry=reg)


def test_data_config_validation():
    assert DataConfig().corpus == "pydoc"  # the embedded default
    assert DataConfig(paths="a.txt").paths == ("a.txt",)
    assert DataConfig(paths=["a.txt"]).corpus is None
    with pytest.raises(ConfigError, match=r"data: unknown key 'block_sise'\. Did you mean 'block_size'"):
        DataConfig.from_dict({"block_sise": 64})
    with pytest.raises(ConfigError, match="validation_fraction"):
        DataConfig(validation_fraction=1.0)
    with pytest.raises(ConfigError, match="dot"):
        DataConfig(extensions=("txt",))


# ------------------------------------------------------------------ splitting
DOCS = [f"document number {i} " * (i % 5 + 1) for i in range(40)]


def test_split_is_by_document_seeded_and_sized():
    train, val = split_documents(DOCS, validation_fraction=0.1, seed=0)
    assert len(val) == 4 and sorted(train + val) == list(range(40))
    assert split_documents(DOCS, validation_fraction=0.1, seed=0) == (train, val)
    assert split_documents(DOCS, validation_fraction=0.1, seed=1)[1] != val
    assert split_documents(DOCS, validation_fraction=0.0, seed=0) == (list(range(40)), [])
    # at least one validation document, never all of them
    assert len(split_documents(DOCS[:3], validation_fraction=0.01, seed=0)[1]) == 1
    assert len(split_documents(DOCS[:2], validation_fraction=0.9, seed=0)[0]) == 1


def test_split_follows_content_not_order():
    _, val = split_documents(DOCS, validation_fraction=0.2, seed=3)
    held = {DOCS[i] for i in val}
    shuffled = DOCS[::-1]
    _, val2 = split_documents(shuffled, validation_fraction=0.2, seed=3)
    assert {shuffled[i] for i in val2} == held


def test_split_of_one_document_explains_the_fix():
    with pytest.raises(DataError, match="document_unit"):
        split_documents(["only one"], validation_fraction=0.1, seed=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=30), st.floats(0.01, 0.9), st.integers(0, 5))
def test_split_is_a_partition(docs, fraction, seed):
    train, val = split_documents(docs, validation_fraction=fraction, seed=seed)
    assert sorted(train + val) == list(range(len(docs)))
    assert train and val
    assert train == sorted(train) and val == sorted(val)


def test_split_and_blocks_are_stable_across_processes():
    """A fresh interpreter with another hash seed computes the same split and the same blocks."""
    cfg = DataConfig(max_documents=30, vocab_size=300, block_size=16)
    code = (
        "from unimodel.data.dataset import *\n"
        f"c = DataConfig.from_dict({cfg.to_dict()!r})\n"
        "tr, va = load_split(c)\n"
        "tok = make_tokenizer(c, tr)\n"
        "print(encode_and_pack(c, tok, tr, va).fingerprint(), len(va))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    tr, va = load_split(cfg)
    packed = encode_and_pack(cfg, make_tokenizer(cfg, tr), tr, va)
    assert out.split() == [packed.fingerprint(), str(len(va))]


# ------------------------------------------------------------------ packing
def test_pack_puts_eos_between_documents_and_drops_the_tail():
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6]], block_size=3, separator_id=0)
    # stream: 1 2 3 0 4 5 0 6 0 -> three full blocks
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5], [0, 6, 0]]
    assert pack_blocks([[1, 2, 3], [4]], block_size=4, separator_id=9).tolist() == [[1, 2, 3, 9]]
    assert pack_blocks_with_tail([[1, 2, 3], [4]], block_size=4, separator_id=9) == [[1, 2, 3, 9], [4, 9]]
    assert pack_blocks_with_tail([[1, 2, 3]], block_size=4, separator_id=9) == [[1, 2, 3, 9]]
    # a 1-token tail predicts nothing
    assert pack_blocks_with_tail([[1, 2, 3]], block_size=3, separator_id=9) == [[1, 2, 3]]


def test_corpus_too_small_for_one_block():
    with pytest.raises(DataError, match=r"too small for one block: 4 tokens < block_size 8.*lower data.block_size"):
        pack_blocks([[1, 2, 3]], block_size=8, separator_id=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), max_size=12), min_size=1, max_size=10), st.integers(2, 9))
def test_packing_keeps_the_stream(docs, block_size):
    stream = [t for d in docs for t in [*d, 0]]
    if len(stream) < block_size:
        with pytest.raises(DataError):
            pack_blocks(docs, block_size=block_size, separator_id=0)
        return
    blocks = pack_blocks(docs, block_size=block_size, separator_id=0)
    assert blocks.shape[1] == block_size
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    assert len(stream) - blocks.numel() < block_size
    tail = pack_blocks_with_tail(docs, block_size=block_size, separator_id=0)
    assert [t for b in tail for t in b] == (stream if len(stream) % block_size != 1 else stream[:-1])


# ------------------------------------------------------------------ tokenizer
def test_trained_tokenizer_round_trips_and_keeps_roles(tmp_path):
    cfg = DataConfig(max_documents=20, vocab_size=400)
    train_docs, _ = load_split(cfg)
    tok = make_tokenizer(cfg, train_docs, needed_roles=["mask", "fim_prefix", "sentinel"])
    assert tok.vocab_size == 400
    # every role the objectives need, each its own token (bos shares eos, GPT-2 style)
    assert {"eos", "pad", "mask", "fim_prefix", "fim_middle", "fim_suffix", "sentinel"} <= set(tok.roles)
    assert tok.roles["sentinel"] == "<|sentinel|>"
    assert tok.special_id("bos") == tok.special_id("eos")
    text = "def f(x):\n    return x ** 2  # squared, naïve ünïcode ✓"
    assert tok.decode(tok.encode(text)) == text  # byte-level: lossless
    tok.save(tmp_path)
    back = Tokenizer.load(tmp_path)
    assert back.roles == tok.roles
    assert back.encode(text) == tok.encode(text)
    assert {r: back.special_id(r) for r in back.roles} == {r: tok.special_id(r) for r in tok.roles}
    # and a data config can name that folder instead of training
    loaded = make_tokenizer(DataConfig(tokenizer=str(tmp_path)), [])
    assert loaded.encode(text) == tok.encode(text)


def test_tokenizer_folder_missing():
    with pytest.raises(DataError, match="neither a tokenizer kind to train.*nor a folder"):
        make_tokenizer(DataConfig(tokenizer="no/such/folder"), [])


@pytest.mark.parametrize(
    ("family", "model", "roles"),
    [
        ("bert", "WordPiece", {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}),
        ("t5", "Unigram", {"pad": "<pad>", "eos": "</s>", "sentinel_0": "<extra_id_0>"}),
        ("bart", "BPE", {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "mask": "<mask>"}),
        ("gpt", "BPE", {"eos": "<|endoftext|>", "fim_prefix": "<|fim_prefix|>"}),
    ],
)
def test_an_unset_data_tokenizer_trains_the_familys_recipe(family, model, roles):
    from unimodel.registry import get_registry

    recipe = get_registry().get("model", family).tokenizer
    texts = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(60)]
    tok = make_tokenizer(DataConfig(vocab_size=400), texts, needed_roles=["mask"], recipe=recipe)
    assert type(tok.backend.model).__name__ == model
    assert {r: tok.roles[r] for r in roles} == roles and tok.has_role("mask")
    assert list(tok.roles)[: len(recipe.roles)] == list(recipe.roles)  # reserved first, in the recipe's order
    # a kind named in [data] wins over the recipe; neither gives a byte-level BPE
    named = make_tokenizer(DataConfig(vocab_size=400, tokenizer="bpe"), texts, recipe=recipe)
    plain = make_tokenizer(DataConfig(vocab_size=400), texts)
    assert type(named.backend.model).__name__ == type(plain.backend.model).__name__ == "BPE"
    assert named.roles == plain.roles and named.encode("the lazy fox") == plain.encode("the lazy fox")


def test_roles_of_other_tokenizer_kinds():
    assert tokenizer_roles("wordpiece") is None  # its trainer's defaults
    assert tokenizer_roles("wordpiece", ["mask", "eos"])["eos"] == "<|eos|>"
    assert tokenizer_roles("unigram", ["sentinel_0"]) is None  # the unigram trainer adds sentinels itself


def test_encode_and_pack_uses_eos_and_full_blocks():
    cfg = DataConfig(max_documents=12, vocab_size=300, block_size=24)
    tr, va = load_split(cfg)
    tok = make_tokenizer(cfg, tr)
    packed = encode_and_pack(cfg, tok, tr, va)
    eos = tok.special_id("eos")
    assert packed.train.shape[1] == 24 and packed.train.dtype.is_floating_point is False
    assert int((packed.train == eos).sum()) >= len(tr) - 1  # one separator per document (the last may be cut)
    assert all(2 <= len(b) <= 24 for b in packed.validation)
    assert packed.validation[-1][-1] == eos
    assert packed.n_validation_documents == len(va) == 1
    assert packed.fingerprint() == encode_and_pack(cfg, tok, tr, va).fingerprint()
