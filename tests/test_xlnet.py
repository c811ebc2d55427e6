"""XLNet: the plm mask construction, the two streams, memory across segments, the causal variant,
objective swaps and refusals, generation, and the errors users see."""

import pytest
import torch
from unimodel_xlnet.objectives import PermutationLM, PLMConfig

import unimodel as um
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import ConfigError, IncompatibleObjectiveError, InputError
from unimodel.registry import get_registry

REG = get_registry()
TINY = dict(REG.get("model", "xlnet").tiny)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(objective="plm", **overrides):
    torch.manual_seed(0)
    return um.build_model("xlnet", objective=objective, **{**TINY, **overrides})


def plm(**overrides):
    return PermutationLM(PLMConfig(**{"pad_token_id": 0, **overrides}))


def blocks(batch=8, length=240, seed=0, low=10):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(low, 99, (length,), generator=g).tolist()} for _ in range(batch)]


def targets_of(batch):
    """(B, T) bool: the positions target_mapping names."""
    return batch["target_mapping"].sum(1) > 0


def runs(row):
    """Lengths of the runs of consecutive True in a 1-D bool tensor."""
    out, n = [], 0
    for v in [*row.tolist(), False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# ------------------------------------------------------------------ plm: the mask construction
def test_targets_are_one_in_k_in_spans_with_context():
    batch = plm().prepare(blocks(), generator=torch.Generator().manual_seed(0))
    is_target = targets_of(batch)
    assert batch["target_mapping"].shape == (8, 40, 240)  # 240 / 6 targets in every row
    assert is_target.sum(1).tolist() == [40] * 8
    lengths = [n for row in is_target for n in runs(row)]
    assert 1.6 < sum(lengths) / len(lengths) < 3.2  # spans of 1..5 with p ~ 1/n average about 2.2
    assert sum(n > 1 for n in lengths) > len(lengths) / 3
    assert min(len(runs(~row)) for row in is_target) > 10  # context between spans, not one block of targets
    # each slot names one position, in increasing order, and its label is the token there
    pos = batch["target_mapping"].argmax(-1)
    assert bool((pos[:, 1:] > pos[:, :-1]).all())
    assert torch.equal(batch["labels"], batch["input_ids"].gather(1, pos))


def test_visibility_rules():
    batch = plm().prepare(blocks(batch=4, length=60), generator=torch.Generator().manual_seed(1))
    perm = batch["perm_mask"].bool()  # [b, i, j]: i may not see j
    is_target = targets_of(batch)
    for b in range(4):
        t, nt = is_target[b], ~is_target[b]
        assert bool(perm[b][nt][:, t].all())  # non-targets never see targets
        assert not bool(perm[b][:, nt].any())  # every position sees every non-target
        assert bool(perm[b].diagonal()[t].all())  # no target sees itself (in the query stream)
        among = perm[b][t][:, t]  # between two targets exactly one sees the other: a total order
        assert bool((among | among.T).all()) and torch.equal(among & among.T, torch.eye(len(among), dtype=torch.bool))
        assert sorted((~among).sum(1).tolist()) == list(range(len(among)))  # the k-th in order sees k targets


def test_perm_size_orders_blocks_in_turn():
    batch = plm(perm_size=20).prepare(blocks(batch=2, length=60), generator=torch.Generator().manual_seed(2))
    perm, is_target = batch["perm_mask"].bool(), targets_of(batch)
    block = torch.arange(60) // 20
    for b in range(2):
        for i in is_target[b].nonzero().flatten().tolist():
            earlier = is_target[b] & (block < block[i])
            assert not bool(perm[b, i, earlier].any())  # a target sees every target of earlier blocks
            later = is_target[b] & (block > block[i])
            assert bool(perm[b, i, later].all())


def test_special_tokens_and_padding_are_never_targets():
    text = "the cat sat on the mat and the dog ran after the cat"
    tok = Tokenizer.train("unigram", [text] * 20, 60, dict(REG.get("model", "xlnet").tokenizer.roles))
    special = {tok.special_id(r) for r in tok.roles if r != "unk"}
    words = tok.encode(" ".join([text] * 4))
    examples = []
    for n in (40, 12, 30):
        ids = list(words[:n])
        ids[::4] = [tok.special_id("sep")] * len(ids[::4])
        examples.append({"input_ids": [*ids, tok.special_id("cls")]})
    batch = PermutationLM(PLMConfig()).prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    is_target = targets_of(batch)
    assert not set(batch["input_ids"][is_target].tolist()) & special
    assert not bool(is_target[batch["attention_mask"] == 0].any())
    counts = is_target.sum(1).tolist()  # 1/6 of each row's eligible tokens, rounded
    assert counts == [round(30 / 6), round(9 / 6), round(22 / 6)]
    assert batch["target_mapping"].shape[1] == 5  # padded to the largest count; padding rows ignored
    assert (batch["labels"] == -100).sum(1).tolist() == [0, 3, 1]


def test_prepare_is_deterministic_under_the_generator():
    ex = blocks(batch=3, length=50)
    first = plm().prepare(ex, generator=torch.Generator().manual_seed(5))
    again = plm().prepare(ex, generator=torch.Generator().manual_seed(5))
    other = plm().prepare(ex, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["perm_mask"], other["perm_mask"])


def test_plm_config_rules():
    for bad in ({"plm_probability": 0.0}, {"plm_probability": float("nan")}, {"max_span_length": 0}):
        with pytest.raises(ConfigError):
            PLMConfig(**bad)


# ------------------------------------------------------------------ the two streams
def test_query_stream_sees_positions_not_contents():
    model = tiny().eval()
    batch = model.objective.prepare(blocks(batch=2, length=24), generator=torch.Generator().manual_seed(0))
    inputs = {k: batch[k] for k in ("input_ids", "perm_mask", "target_mapping")}
    slots = batch["target_mapping"][0].argmax(-1)  # row 0's target positions
    sees = ~batch["perm_mask"][0].bool()[slots][:, slots]  # [m, n]: target m sees target n
    first = int(sees.sum(1).argmin())  # first in the factorization order: it sees no other target
    with torch.no_grad():
        base = model(**inputs).logits  # (B, M, V): one row per target
        changed = batch["input_ids"].clone()
        changed[0, slots[first]] = (changed[0, slots[first]] + 1) % 99
        out = model(**{**inputs, "input_ids": changed}).logits
    assert torch.equal(out[0, first], base[0, first])  # its own token does not reach its prediction
    assert torch.equal(out[1], base[1])
    moved = (out[0] - base[0]).abs().amax(-1) > 1e-6
    assert torch.equal(moved, sees[:, first])  # exactly the targets after it in the order see it


def test_non_targets_never_see_targets():
    model = tiny(objective="features").eval()
    batch = plm().prepare(blocks(batch=1, length=20), generator=torch.Generator().manual_seed(3))
    t = targets_of(batch)[0]
    with torch.no_grad():
        base = model(input_ids=batch["input_ids"], perm_mask=batch["perm_mask"]).last_hidden_state
        ids = batch["input_ids"].clone()
        ids[0, t] = (ids[0, t] + 7) % 99
        out = model(input_ids=ids, perm_mask=batch["perm_mask"]).last_hidden_state
    assert torch.allclose(out[0, ~t], base[0, ~t], atol=1e-6)
    assert not torch.allclose(out[0, t], base[0, t])


# ------------------------------------------------------------------ memory
def test_memory_carries_earlier_segments_exactly_for_causal_attention():
    model = tiny(objective="clm", attn_type="uni", mem_len=None).eval()
    ids = torch.randint(0, 99, (2, 14))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :8], use_mems=True)
        second = model(input_ids=ids[:, 8:], mems=first.extra["mems"])
        alone = model(input_ids=ids[:, 8:]).logits
    assert torch.allclose(second.logits, full[:, 8:], atol=1e-5)
    assert not torch.allclose(alone, full[:, 8:], atol=1e-3)  # without memory the segment loses its context
    assert [m.shape for m in second.extra["mems"]] == [(2, 14, 32)] * 2


def test_memory_length_reuse_and_detachment():
    model = tiny(mem_len=5, reuse_len=3, use_mems_train=True).train()
    ids = torch.randint(0, 99, (2, 9))
    out = model(input_ids=ids)
    mems = out.extra["mems"]
    assert len(mems) == 2 and all(m.shape == (2, 3, 32) and not m.requires_grad for m in mems)
    out2 = model(input_ids=ids[:, :4], mems=mems)
    assert all(m.shape == (2, 5, 32) for m in out2.extra["mems"])
    out2.logits.sum().backward()  # the graph ends at the memory: earlier segments get no gradient
    assert model.encoder.embed_tokens.weight.grad is not None


def test_memory_as_one_stacked_tensor_and_the_empty_first_memory():
    """A data kind carries memory as one tensor (n_layers, B, mlen, D); an empty tensor starts it, and passing
    memory returns the next one even in training (where use_mems_train is off)."""
    model = tiny(objective="clm", attn_type="uni").train()
    ids = torch.randint(0, 99, (2, 12))
    assert "mems" not in model(input_ids=ids[:, :6]).extra
    first = model(input_ids=ids[:, :6], mems=torch.empty(0))
    stacked = torch.stack(first.extra["mems"])
    assert stacked.shape == (2, 2, 6, 32)
    model.eval()
    with torch.no_grad():
        a = model(input_ids=ids[:, 6:], mems=stacked).logits
        b = model(input_ids=ids[:, 6:], mems=first.extra["mems"]).logits
        assert torch.equal(a, b)
    with pytest.raises(InputError, match=r"stacked, \(n_layers = 2"):
        model(input_ids=ids, mems=torch.zeros(3, 2, 4, 32))


def test_causal_variant_decodes_incrementally_with_its_cache():
    model = tiny(objective="clm", attn_type="uni").eval()
    assert "kv_cache" in model.provides and model.decoder is not None
    ids = torch.randint(0, 99, (2, 10))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        cache, pieces = None, []
        for a, b in ((0, 4), (4, 5), (5, 8), (8, 10)):
            out = model(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    greedy = model.generate(ids[:1, :4], strategy="greedy", max_new_tokens=5)
    seq = ids[:1, :4]
    for _ in range(5):  # the same tokens by re-running the whole sequence each step
        with torch.no_grad():
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(greedy, seq)


# ------------------------------------------------------------------ objectives: swaps and refusals
def test_clm_trains_the_causal_variant():  # plm, mlm, classify and tag: tests/test_objective_swaps.py
    tok = Tokenizer.train(
        "unigram",
        ["the cat sat on the mat and the dog ran"] * 30,
        80,
        dict(REG.get("model", "xlnet").tokenizer.roles),
    )
    model = tiny("clm", vocab_size=tok.vocab_size, attn_type="uni")
    model.tokenizer = tok
    ids = tok.encode(" ".join(["the cat sat on the mat and the dog ran"] * 12))
    batch = model.objective.prepare(
        [{"input_ids": ids[i * 24 : (i + 1) * 24]} for i in range(4)],
        tokenizer=tok,
        generator=torch.Generator().manual_seed(0),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model.objective(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_plm_loss_is_the_query_stream_cross_entropy_without_logits():
    model = tiny().eval()
    batch = model.objective.prepare(blocks(batch=2, length=30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.objective(model, batch)
        logits = model(**{k: batch[k] for k in ("input_ids", "perm_mask", "target_mapping")}).logits
    assert out.logits is None and logits.shape == (2, batch["labels"].shape[1], 99)
    keep = batch["labels"] != -100
    ref = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])
    assert abs(out.loss.item() - ref.item()) < 1e-5 and out.n_predictions == int(keep.sum())


def test_incompatible_pairs_are_refused_with_what_works():
    with pytest.raises(IncompatibleObjectiveError, match=r"two_stream.*Models that can run 'plm': xlnet"):
        um.build_model("bert-tiny", objective="plm")
    with pytest.raises(IncompatibleObjectiveError, match=r"when built with attn_type = \"uni\".*mlm, plm"):
        um.build_model("xlnet-tiny", objective="clm")
    with pytest.raises(IncompatibleObjectiveError, match="encoder_only"):
        um.build_model("xlnet-tiny", objective="mlm", attn_type="uni")
    with pytest.raises(IncompatibleObjectiveError, match="pooler"):
        um.build_model("xlnet-tiny", objective="classify", add_pooler=False)


# ------------------------------------------------------------------ generation
def test_generation_defaults_to_the_two_stream_strategy():
    model = tiny().eval()
    prompt = torch.tensor([[17, 40, 3, 88], [5, 6, 7, 8]])
    greedy = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=6, eos_token_id=[], strategy="xlnet_plm"))
    a = model.generate(prompt, max_new_tokens=6, do_sample=True, seed=3, num_return_sequences=2, eos_token_id=[])
    b = model.generate(prompt, max_new_tokens=6, do_sample=True, seed=3, num_return_sequences=2, eos_token_id=[])
    assert a.shape == (4, 10) and torch.equal(a, b) and torch.equal(a[:, :4], prompt.repeat_interleave(2, 0))
    with pytest.raises(ConfigError, match="beam search is not supported"):
        model.generate(prompt, num_beams=2, strategy="xlnet_plm")
    with pytest.raises(InputError, match="Strategies this model supports: xlnet_plm"):
        model.generate(prompt, num_beams=2)


def test_left_padded_rows_generate_as_they_would_alone():
    model = tiny().eval()
    short, long = [9, 33, 12], [17, 40, 3, 88, 61]
    batch = torch.tensor([[0, 0, *short], long])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, eos_token_id=[])
    assert (
        out[0, 5:].tolist() == model.generate(torch.tensor([short]), max_new_tokens=6, eos_token_id=[])[0, 3:].tolist()
    )
    assert (
        out[1, 5:].tolist() == model.generate(torch.tensor([long]), max_new_tokens=6, eos_token_id=[])[0, 5:].tolist()
    )


def test_the_kit_passes_on_the_causal_variant():
    """The registered family is the bidirectional encoder; the kit's generation, beam-search, KV-cache and
    gradient checks run on attn_type "uni" through a family record that declares it."""
    import unimodel_bert
    import unimodel_gpt
    import unimodel_xlnet

    import unimodel.builtin
    from unimodel import hookimpl
    from unimodel.hookspecs import PLUGIN_API_VERSION
    from unimodel.registry import Component, Registry
    from unimodel.testing import check_model

    class CausalXLNet:
        @hookimpl
        def unimodel_api_version(self):
            return PLUGIN_API_VERSION

        @hookimpl
        def unimodel_components(self):
            family = REG.get("model", "xlnet")
            tiny = {**family.tiny, "attn_type": "uni"}
            return [
                Component(
                    kind="model",
                    name="xlnet_uni",
                    target=family.target,
                    summary="causal XLNet",
                    provides=unimodel_xlnet.PROVIDES_UNI,
                    default_objective="xlnet:plm",
                    tiny=tiny,
                )
            ]

    reg = Registry(discover=False)
    plugins = [unimodel.builtin, unimodel_gpt, unimodel_bert, unimodel_xlnet, CausalXLNet()]
    for name, plugin in zip(("core", "gpt", "bert", "xlnet", "uni"), plugins):
        assert reg.add_plugin(plugin, name).ok
    report = check_model("xlnet_uni", registry=reg)
    ran = {o.check + o.case.partition("/")[2] for o in report.outcomes if o.status == "passed"}
    assert {"generation", "beam_search", "kv_cache", "gradientsobjective:clm", "gradientsobjective:plm"} <= ran


# ------------------------------------------------------------------ errors users see
def test_input_errors():
    model = tiny(objective="features").eval()
    ids = torch.randint(0, 99, (2, 6))
    two_hot = torch.zeros(2, 1, 6)
    two_hot[:, 0, :2] = 1
    cases = [
        ({"perm_mask": torch.zeros(2, 6, 5)}, "perm_mask must have shape"),
        ({"target_mapping": two_hot}, "one-hot"),
        ({"target_mapping": torch.zeros(2, 1, 7)}, "target_mapping must have shape"),
        ({"mems": (torch.zeros(2, 3, 32),)}, "mems must be a sequence of 2"),
        ({"mems": (torch.zeros(3, 3, 32), torch.zeros(3, 3, 32))}, "mems must be 2 tensors of shape"),
        ({"position_ids": torch.arange(6)}, "relative"),
        ({"attention_mask": torch.ones(2, 4)}, "attention_mask must have shape"),
        ({"token_type_ids": torch.zeros(2, 5, dtype=torch.long)}, "token_type_ids must have shape"),
    ]
    for extra, message in cases:
        with pytest.raises(InputError, match=message):
            model(input_ids=ids, **extra)
    with pytest.raises(InputError, match="odd"):
        tiny(objective="features", bi_data=True)(input_ids=ids[:1])


def test_config_rules():
    for bad in (
        {"layer_norm_eps": float("nan")},
        {"init_std": float("inf")},
        {"dropout": 1.5},
        {"d_model": 31},
        {"mem_len": 0},
        {"summary_activation": "swish"},
        {"attn_type": "both"},
    ):
        with pytest.raises(ConfigError):
            um.build_model("xlnet", **{**TINY, **bad})
