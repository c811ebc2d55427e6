"""The BERT family: encoder, pooler, presets, the mlm / classify / tag objectives."""

import pytest
import torch
from helpers import tiny_config

import unimodel as um
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, DataError, IncompatibleObjectiveError, InputError
from unimodel.objectives import IGNORE_INDEX, pad_sequences

TINY = tiny_config("bert")
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(objective="mlm", **kw):
    return um.build_model("bert", **{**TINY, **kw}, objective=objective)


def piece_tokenizer(n_starts=47, n_cont=47):
    """A WordPiece tokenizer over a made-up vocabulary of 99: specials, word starts w0.. (ids 5..51)
    and continuations ##c0.. (ids 52..98)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"w{i}" for i in range(n_starts)] + [f"##c{i}" for i in range(n_cont)]
    backend = Backend(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    roles = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    return Tokenizer(backend, roles)


# ------------------------------------------------------------------ encoder
def test_shapes_pooler_and_token_types():
    model = tiny().eval()
    ids = torch.randint(5, 99, (3, 11))
    out = model(input_ids=ids)
    assert out.logits.shape == (3, 11, 99)
    assert out.last_hidden_state.shape == (3, 11, 32) and out.pooler_output.shape == (3, 32)
    pooler = model.encoder.pooler
    expected = torch.tanh(pooler(out.last_hidden_state[:, 0]))
    assert torch.allclose(out.pooler_output, expected)
    types = torch.zeros_like(ids)
    assert torch.equal(model(input_ids=ids, token_type_ids=types).logits, out.logits)  # default is segment 0
    types[:, 5:] = 1
    assert not torch.allclose(model(input_ids=ids, token_type_ids=types).logits, out.logits)


def test_encoder_is_bidirectional_and_ignores_padding():
    model = tiny().eval()
    ids = torch.randint(5, 99, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 5) % 94 + 5  # last token changes: the first position must see it
    h = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(h[0, 0], model(input_ids=changed).last_hidden_state[0, 0])
    padded = torch.cat([ids, torch.randint(5, 99, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 8 + [0] * 4])
    hp = model(input_ids=padded, attention_mask=mask).last_hidden_state
    assert (hp[0, :8] - h[0]).abs().max() < 1e-5


def test_post_ln_block_and_erf_gelu():
    model = tiny()
    block = model.encoder.blocks[0]
    assert block.prenorm is False and block.ffn.act_name == "gelu"
    assert model.encoder.embed_norm.eps == 1e-12 and block.norm_attn.eps == 1e-12
    assert tiny(layer_norm_eps=1e-6).encoder.blocks[1].norm_ffn.eps == 1e-6
    assert model.heads["lm"].weight is model.encoder.embed_tokens.weight  # tied
    assert model.heads["lm"].bias is not None
    assert torch.count_nonzero(model.encoder.embed_tokens.weight[PAD]) == 0


def test_bad_inputs_and_configs():
    model = tiny()
    with pytest.raises(InputError, match="token_type_ids must lie in 0..1"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.full((1, 4), 2))
    with pytest.raises(InputError, match="position table of 64"):
        model(input_ids=torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError, match="d_model must be divisible by n_heads"):
        tiny(d_model=30)
    with pytest.raises(ConfigError, match="pad_token_id"):
        tiny(pad_token_id=99)
    with pytest.raises(ConfigError, match="unknown key 'hidden_size'"):
        tiny(hidden_size=32)


def test_presets_and_registration():
    reg = um.get_registry()
    assert reg.resolve_model("bert-mini")[1] == {"n_layers": 6, "d_model": 384, "n_heads": 6, "d_ff": 1536}
    assert reg.resolve_model("bert-base")[1] == {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072}
    assert reg.resolve_model("bert-large")[1]["n_layers"] == 24
    family = reg.get("model", "bert")
    assert set(family.provides) == {"encoder_only", "lm_head", "token_types", "pooler"}
    assert set(family.provides) == set(tiny().provides)
    assert reg.get("encoder", "bert").load().__name__ == "BertEncoder"
    assert reg.get("hf_converter", "bert").model_types == ("bert",)
    assert family.tokenizer is not None and family.tokenizer.kind == "wordpiece"
    assert set(family.tokenizer.roles) == {"pad", "unk", "cls", "sep", "mask"}
    model = um.build_model("bert-tiny", vocab_size=120)
    assert (model.config.n_layers, model.config.d_model, model.config.d_ff) == (2, 128, 512)


def test_without_pooler():
    model = tiny(add_pooler=False)
    assert model.encoder.pooler is None and "pooler" not in model.provides
    assert model(input_ids=torch.randint(5, 99, (1, 5))).pooler_output is None
    with pytest.raises(IncompatibleObjectiveError, match="pooler"):
        tiny("classify", add_pooler=False)


def test_save_and_load_keeps_heads(tmp_path):
    model = tiny("classify").eval()
    ids = torch.randint(5, 99, (2, 7))
    model.save(tmp_path / "ck")
    again = um.load(tmp_path / "ck")
    assert again.objective_name == "classify"
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


# ------------------------------------------------------------------ objective compatibility
def test_objective_swap_on_one_backbone_config():
    spec = {"name": "bert", **TINY}
    ids = torch.randint(5, 99, (2, 9))
    examples = {
        "mlm": [{"input_ids": [CLS, *ids[i].tolist(), SEP]} for i in range(2)],
        "classify": [{"input_ids": ids[i].tolist(), "label": i} for i in range(2)],
        "tag": [{"input_ids": ids[i].tolist(), "labels": [i % 2] * 9} for i in range(2)],
    }
    backbone_keys = None
    for name in ("mlm", "classify", "tag"):
        torch.manual_seed(0)
        model = um.build_model({**spec, "objective": {"name": name}})
        obj = model.objective
        batch = obj.prepare(examples[name], tokenizer=piece_tokenizer(), generator=torch.Generator().manual_seed(0))
        out = obj(model, batch)
        assert torch.isfinite(out.loss)
        if name == "mlm":
            # the step computes the loss at the selected positions without forming logits; it equals the
            # loss of the (N, V) logits the head gives there
            at = batch["labels"] != -100
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_at=at).logits
            assert out.logits is None and out.n_predictions == int(at.sum())
            torch.testing.assert_close(out.loss, obj.loss(logits, batch["labels"][at]), rtol=1e-5, atol=1e-6)
        else:
            assert out.logits.shape == {"classify": (2, 2), "tag": (2, 9, 2)}[name]
        keys = {k for k in model.state_dict() if k.startswith("encoder.")}
        backbone_keys = backbone_keys or keys
        assert keys == backbone_keys
        assert set(model.heads) == {"mlm": {"lm"}, "classify": {"classify"}, "tag": {"tag"}}[name]


def test_causal_objective_is_refused_with_the_alternatives():
    with pytest.raises(IncompatibleObjectiveError) as err:
        tiny("clm")
    msg = str(err.value)
    assert "decoder_only" in msg and "causal" in msg
    for name in ("mlm", "classify", "tag"):
        assert name in msg.split("Objectives that work")[1]


def test_tokenizer_without_mask_fails_at_build():
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}
    tok = Tokenizer(
        Backend(models.WordPiece(vocab, unk_token="[UNK]")),
        {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]"},
    )
    with pytest.raises(ConfigError, match="objective 'mlm' needs the special token\\(s\\) mask"):
        um.build_model("bert", **TINY, tokenizer=tok)
    um.build_model("bert", **TINY, tokenizer=tok, objective="tag")  # tagging needs no mask


def test_mlm_without_tokenizer_needs_ids():
    obj = um.build_objective("mlm")
    with pytest.raises(ConfigError, match="mask"):
        obj.prepare([{"input_ids": [5, 6, 7]}])
    with pytest.raises(ConfigError, match="vocab_size"):
        um.build_objective("mlm", mask_token_id=MASK).prepare([{"input_ids": [5, 6, 7]}])
    with pytest.raises(ConfigError, match="whole_word"):
        um.build_objective("mlm", mask_token_id=MASK, vocab_size=99, whole_word=True).prepare([{"input_ids": [5, 6]}])
    with pytest.raises(ConfigError, match="mask_replace_prob"):
        um.build_objective("mlm", mask_replace_prob=0.95, random_replace_prob=0.1)


# ------------------------------------------------------------------ mlm masking
def _mlm_batch(seed=0, rows=64, length=500, **kw):
    g = torch.Generator().manual_seed(1234)
    examples = []
    for i in range(rows):
        n = length - (i % 7) * 13  # ragged: padding must never be selected
        ids = torch.randint(5, 1000, (n,), generator=g).tolist()
        ids[0], ids[n // 2], ids[-1] = CLS, SEP, SEP
        examples.append({"input_ids": ids})
    obj = um.build_objective(
        "mlm", mask_token_id=MASK, pad_token_id=PAD, special_token_ids=(CLS, SEP), vocab_size=1000, **kw
    )
    batch = obj.prepare(examples, generator=torch.Generator().manual_seed(seed))
    original, _ = pad_sequences([e["input_ids"] for e in examples], PAD)
    return batch, original


def test_mlm_selection_statistics():
    batch, orig = _mlm_batch()
    labels, inputs, attn = batch["labels"], batch["input_ids"], batch["attention_mask"].bool()
    sel = labels != IGNORE_INDEX
    special = (orig == CLS) | (orig == SEP)
    assert not sel[special].any() and not sel[~attn].any()
    assert torch.equal(labels[sel], orig[sel])
    assert torch.equal(inputs[~sel], orig[~sel])  # nothing but selected tokens changes
    rate = sel.sum() / (attn & ~special).sum()
    assert abs(rate.item() - 0.15) < 0.01
    n = sel.sum().item()
    masked = (inputs[sel] == MASK).sum().item() / n
    kept = (inputs[sel] == orig[sel]).sum().item() / n
    randomised = ((inputs[sel] != MASK) & (inputs[sel] != orig[sel])).sum().item() / n
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(randomised - 0.1) < 0.02
    replaced = inputs[sel][(inputs[sel] != MASK) & (inputs[sel] != orig[sel])]
    assert replaced.min() >= 5  # random replacements are ordinary tokens, never specials


def test_mlm_configurable_rates():
    batch, orig = _mlm_batch(rows=16, mlm_probability=0.4, mask_replace_prob=1.0, random_replace_prob=0.0)
    sel = batch["labels"] != IGNORE_INDEX
    special = (orig == CLS) | (orig == SEP)
    assert abs(sel.sum().item() / (batch["attention_mask"].bool() & ~special).sum().item() - 0.4) < 0.02
    assert (batch["input_ids"][sel] == MASK).all()


def test_mlm_is_seeded_by_the_generator():
    a, _ = _mlm_batch(seed=7, rows=4)
    b, _ = _mlm_batch(seed=7, rows=4)
    c, _ = _mlm_batch(seed=8, rows=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


def test_mlm_guarantees_a_prediction_per_sequence():
    obj = um.build_objective("mlm", mask_token_id=MASK, vocab_size=99, mlm_probability=0.01)
    examples = [{"input_ids": [CLS, 10 + i, 20 + i, SEP]} for i in range(50)]
    labels = obj.prepare(examples, tokenizer=piece_tokenizer(), generator=torch.Generator().manual_seed(0))["labels"]
    per_row = (labels != IGNORE_INDEX).sum(1)
    assert (per_row >= 1).all() and (per_row <= 2).all()
    assert ((labels[:, 0] == IGNORE_INDEX) & (labels[:, 3] == IGNORE_INDEX)).all()
    only_specials = obj.prepare([{"input_ids": [CLS, SEP]}], tokenizer=piece_tokenizer())
    assert (only_specials["labels"] == IGNORE_INDEX).all()


def test_whole_word_masking_selects_words_together():
    tok = piece_tokenizer()
    g = torch.Generator().manual_seed(3)
    examples, words = [], []
    for _ in range(40):
        ids, spans = [tok.special_id("cls")], []
        while len(ids) < 200:
            start = len(ids)
            ids.append(5 + int(torch.randint(47, (), generator=g)))
            ids += [52 + int(x) for x in torch.randint(47, (int(torch.randint(4, (), generator=g)),), generator=g)]
            spans.append((start, len(ids)))
        ids.append(tok.special_id("sep"))
        examples.append({"input_ids": ids})
        words.append(spans)
    obj = um.build_objective("mlm", whole_word=True)
    batch = obj.prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    sel = batch["labels"] != IGNORE_INDEX
    chosen = total = 0
    for row, spans in enumerate(words):
        for a, b in spans:
            picked = sel[row, a:b]
            assert picked.all() or not picked.any(), f"word {a}:{b} of row {row} split"
            chosen += int(picked.all())
            total += 1
    assert abs(chosen / total - 0.15) < 0.025
    assert sel.sum() > chosen  # multi-piece words were selected with all their pieces
    assert not sel[:, 0].any()


def test_mlm_uses_tokenizer_roles_and_trained_wordpiece():
    text = ["the quick brown fox jumps over the lazy dog", "unbelievable jumping foxes are quickly jumping"] * 40
    tok = Tokenizer.train_wordpiece(text, vocab_size=120, roles=um.get_registry().get("model", "bert").tokenizer.roles)
    ids = tok.encode("unbelievable foxes jumping quickly over the lazy dogs")
    assert any(tok.id_to_token(i).startswith("##") for i in ids)
    model = um.build_model(
        "bert", **{**TINY, "vocab_size": tok.vocab_size}, tokenizer=tok, objective={"name": "mlm", "whole_word": True}
    )
    cls, sep = tok.special_id("cls"), tok.special_id("sep")
    batch = model.objective.prepare(
        [{"input_ids": [cls, *ids, sep]}] * 8, tokenizer=tok, generator=torch.Generator().manual_seed(1)
    )
    assert (batch["labels"][:, [0, -1]] == IGNORE_INDEX).all()
    masked_in = batch["input_ids"][batch["labels"] != IGNORE_INDEX]
    assert (masked_in == tok.special_id("mask")).any()
    out = model.objective(model, batch)
    assert out.n_predictions == int((batch["labels"] != IGNORE_INDEX).sum()) and torch.isfinite(out.loss)


# ------------------------------------------------------------------ classify / tag
def test_build_inputs_convention():
    from unimodel_bert.objectives import build_inputs

    assert build_inputs([7, 8], cls_id=CLS, sep_id=SEP) == ([CLS, 7, 8, SEP], [0, 0, 0, 0])
    assert build_inputs([7], [9, 9], cls_id=CLS, sep_id=SEP) == ([CLS, 7, SEP, 9, 9, SEP], [0, 0, 0, 1, 1, 1])


def test_classify_prepare_pairs_and_errors():
    obj = um.build_objective("classify", num_labels=3, add_special_tokens=True)
    batch = obj.prepare(
        [{"input_ids": [7, 8], "input_ids_b": [9], "label": 2}, {"input_ids": [7], "label": 0}],
        tokenizer=piece_tokenizer(),
    )
    assert batch["input_ids"].tolist() == [[CLS, 7, 8, SEP, 9, SEP], [CLS, 7, SEP, PAD, PAD, PAD]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [2, 0]
    with pytest.raises(DataError, match="label 3"):
        obj.prepare([{"input_ids": [7], "label": 3}], tokenizer=piece_tokenizer())
    with pytest.raises(DataError, match="no 'label'"):
        obj.prepare([{"input_ids": [7]}], tokenizer=piece_tokenizer())
    with pytest.raises(ConfigError, match="cls and sep"):
        obj.prepare([{"input_ids": [7], "label": 1}])


def test_tag_prepare_aligns_labels():
    obj = um.build_objective("tag", num_labels=3, add_special_tokens=True)
    batch = obj.prepare(
        [{"input_ids": [7, 8, 9], "labels": [1, -100, 2]}, {"input_ids": [7], "labels": [0]}],
        tokenizer=piece_tokenizer(),
    )
    assert batch["labels"].tolist() == [[-100, 1, -100, 2, -100], [-100, 0, -100, -100, -100]]
    with pytest.raises(DataError, match="3 tokens but 2 labels"):
        obj.prepare([{"input_ids": [7, 8, 9], "labels": [1, 2]}])


def _train(model, make_batch, steps, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        out = model.objective(model, make_batch(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses, out


def test_classify_learns_a_toy_task():
    model = tiny("classify")
    g = torch.Generator().manual_seed(0)

    def batch(step):  # the class is whether the first token after [CLS] is in the upper half of the vocabulary
        ids = torch.randint(5, 99, (32, 6), generator=g)
        return model.objective.prepare([{"input_ids": [CLS, *r.tolist()], "label": int(r[0] >= 52)} for r in ids])

    losses, out = _train(model, batch, 40)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert out.metrics["accuracy"] > 0.8


def test_classify_regression_uses_mse():
    model = tiny({"name": "classify", "num_labels": 1}).eval()  # the head's dropout off
    batch = model.objective.prepare([{"input_ids": [CLS, 7, 8], "label": 0.5}, {"input_ids": [CLS, 9], "label": -1.0}])
    assert batch["labels"].dtype == torch.float32
    out = model.objective(model, batch)
    assert out.logits.shape == (2, 1)
    expected = ((out.logits.squeeze(-1) - batch["labels"]) ** 2).mean()
    assert torch.allclose(out.loss, expected) and "mse" in out.metrics
    assert torch.allclose(model(**batch).loss, expected)


def test_tag_learns_a_toy_task():
    model = tiny({"name": "tag", "num_labels": 2})
    g = torch.Generator().manual_seed(0)

    def batch(step):  # each token's tag: is its id in the upper half of the vocabulary
        ids = torch.randint(5, 99, (16, 10), generator=g)
        return model.objective.prepare(
            [
                {"input_ids": r.tolist(), "labels": [int(x >= 52) if j % 4 else -100 for j, x in enumerate(r)]}
                for r in ids
            ]
        )

    losses, out = _train(model, batch, 40)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert out.metrics["accuracy"] > 0.9
    assert out.n_predictions == 16 * 7  # every fourth position is unlabelled


def test_mlm_loss_decreases():
    model = tiny({"name": "mlm", "mask_token_id": MASK, "vocab_size": 99, "special_token_ids": [CLS, SEP]})
    obj = model.objective
    ids = torch.randint(5, 30, (8, 16))  # 25 of 99 ids: the model learns to predict only those
    examples = [{"input_ids": r.tolist()} for r in ids]
    g = torch.Generator().manual_seed(0)
    losses, _ = _train(model, lambda s: obj.prepare(examples, generator=g), 60)
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5


def test_mlm_head_at_selected_positions_equals_the_full_head():
    torch.manual_seed(0)
    model = tiny("mlm")
    ids = torch.randint(5, 99, (3, 12))
    labels = torch.full_like(ids, -100)
    at = torch.zeros_like(ids, dtype=torch.bool)
    at[0, 2] = at[1, 5] = at[1, 6] = at[2, 11] = True
    labels[at] = ids[at]
    full = model(input_ids=ids, labels=labels)
    sparse = model(input_ids=ids, labels=labels, logits_at=at)
    assert sparse.logits.shape == (4, 99)
    torch.testing.assert_close(sparse.logits, full.logits[at], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse.loss, full.loss, rtol=1e-5, atol=1e-6)
    # the objective's step uses the sparse head and gives the loss of the full one
    step = model.objective(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    torch.testing.assert_close(step.loss, full.loss, rtol=1e-5, atol=1e-6)
    assert step.n_predictions == 4
    with pytest.raises(InputError, match="logits_at must be a bool tensor of shape"):
        model(input_ids=ids, logits_at=at.long())
