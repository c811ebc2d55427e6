"""Sequence-level distillation for cmlm (unimodel_nat.distill): the teacher's outputs as a pair file, resumable."""

from __future__ import annotations

import json

import pytest
import torch

import unimodel as um
from unimodel.data.pairs import read_pairs
from unimodel.errors import ConfigError, DataError
from unimodel.generation.distill import decode_sources, distill, load_pairs
from unimodel.registry import get_registry
from unimodel.testing import synthetic_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

TOK, N_PLAIN = synthetic_tokenizer(99, ["mask"])


def teacher(objective="seq2seq"):
    """An untrained BART whose special ids are the tokenizer's, with an untied head (a tied one repeats its input)."""
    torch.manual_seed(0)
    ids = {f"{r}_token_id": TOK.special_id(r) for r in ("pad", "eos", "bos")}
    spec = {**get_registry().get("model", "bart").tiny, **ids, "decoder_start_token_id": ids["bos_token_id"]}
    return um.build_model("bart", objective=objective, tokenizer=TOK, tie_embeddings=False, **spec)


def text_pairs(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = lambda k: " ".join(f"t{i}" for i in torch.randint(0, N_PLAIN, (k,), generator=g).tolist())  # noqa: E731
    return [(words(5), words(4)) for _ in range(n)]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_distill_writes_the_teachers_outputs_in_order(tmp_path):
    model, pairs = teacher(), text_pairs(10)
    result = distill(model, pairs, tmp_path / "d.jsonl", batch_size=4)
    assert (result.total, result.resumed, result.written, result.empty) == (10, 0, 10, 0)
    got = lines(tmp_path / "d.jsonl")
    expected = [o for start in range(0, 10, 4) for o in decode_sources(model, pairs[start : start + 4])]
    assert [r["source"] for r in got] == [p[0] for p in pairs]
    assert [r["target"] for r in got] == expected
    assert expected != [p[1] for p in pairs]  # the teacher's words, not the references
    assert read_pairs([str(tmp_path / "d.jsonl")]) == [(r["source"], r["target"]) for r in got]  # what a run reads


def test_an_interrupted_distillation_resumes_where_it_stopped(tmp_path):
    model, pairs = teacher(), text_pairs(7)
    full = tmp_path / "full.jsonl"
    distill(model, pairs, full, batch_size=1)
    part = tmp_path / "part.jsonl"
    kept = full.read_text().splitlines(keepends=True)
    part.write_text("".join(kept[:3]) + kept[3][:10])  # three whole lines and a half-written one
    result = distill(model, pairs, part, batch_size=1)
    assert (result.resumed, result.written) == (3, 4)
    assert part.read_text() == full.read_text()
    again = distill(model, pairs, part)  # a finished file: nothing to do
    assert (again.resumed, again.written) == (7, 0)
    with pytest.raises(DataError, match="written from other data"):
        distill(model, text_pairs(7, seed=1), part)


def test_empty_teacher_outputs_keep_the_reference(tmp_path):
    model = teacher()
    model.heads["lm"].logits_bias[0, TOK.special_id("eos")] = 1e4  # the teacher ends at once
    pairs = text_pairs(3)
    result = distill(model, pairs, tmp_path / "d.jsonl")
    assert result.empty == 3 and [r["target"] for r in lines(tmp_path / "d.jsonl")] == [p[1] for p in pairs]


def test_the_teacher_must_be_autoregressive_and_data_comes_in_several_forms(tmp_path):
    with pytest.raises(ConfigError, match="needs an autoregressive encoder-decoder teacher"):
        distill(teacher("cmlm"), text_pairs(2), tmp_path / "d.jsonl")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in text_pairs(3)))
    assert load_pairs(jsonl) == load_pairs([{"source": s, "target": t} for s, t in text_pairs(3)]) == text_pairs(3)
    corpus = load_pairs({"corpus": "numbers", "corpus_options": {"n_train": 5, "n_validation": 2}})
    assert len(corpus) == 5 and corpus[0][0].isdigit()
    with pytest.raises(DataError, match="not a \\(source, target\\) pair"):
        load_pairs([("only one",)])
