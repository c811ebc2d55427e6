"""The T5 family: relative position buckets, shared bias, cached decoding, span corruption, training."""

import math

import pytest
import torch
from helpers import build_tiny, tiny_config
from transformers.models.t5.modeling_t5 import T5Attention
from unimodel_t5.model import T5Config, relative_position_bucket
from unimodel_t5.objectives import count_spans, random_spans_noise_mask

import unimodel as um
from unimodel.errors import ConfigError, DataError, InputError
from unimodel.registry import get_registry

TINY = tiny_config("t5")
SPAN = {"name": "span_corruption", "first_sentinel_id": 98, "n_sentinels": 20, "eos_token_id": 1, "pad_token_id": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_t5(**overrides):
    return build_tiny("t5", **{"objective": SPAN, **overrides})


# ------------------------------------------------------------------ architecture
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (16, 40), (8, 20)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_equal_transformers(bidirectional, buckets, max_distance):
    rel = torch.arange(-300, 300)
    ours = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
    ref = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance
    )
    assert torch.equal(ours, ref)
    assert int(ours.min()) == 0 and int(ours.max()) == buckets - 1  # every bucket reachable over this range


def test_bucket_semantics():
    rel = torch.tensor([-200, -3, 0, 3, 200])
    enc = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert enc.tolist() == [15, 3, 0, 19, 31]  # keys after the query use the upper half
    dec = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert dec.tolist() == [31, 3, 0, 0, 0]  # future keys collapse to bucket 0 (they are masked)


def test_structure_follows_t5():
    m = tiny_t5(head_dim=16)  # inner 64 != d_model 32
    assert m.encoder.embed_tokens is m.decoder.embed_tokens  # the shared embedding
    assert m.heads["lm"].weight is m.encoder.embed_tokens.weight  # tied by default
    assert m.heads["lm"].input_scale == pytest.approx(32**-0.5)
    block = m.decoder.blocks[0]
    assert block.attn.scale == 1.0 and block.cross.scale == 1.0
    assert block.attn.qkv.weight.shape == (3 * 64, 32) and block.attn.out.weight.shape == (32, 64)
    assert all(p.dim() != 1 or "norm" in n for n, p in m.named_parameters())  # no biases: 1-D params are norms
    assert m.encoder.relative_bias.weight.shape == (32, 4)
    # One bias table per stack: no block owns another.
    assert sum("relative_bias" in n for n, _ in m.named_parameters()) == 2
    assert m.provides == get_registry().provides("t5")


def test_untied_v1_1_style_head():
    m = tiny_t5(feed_forward="gated-gelu", tie_embeddings=False)
    head = m.heads["lm"]
    assert head.weight is not m.encoder.embed_tokens.weight
    assert head.input_scale == 1.0  # scale_decoder_outputs defaults to tie_embeddings
    ffn = m.encoder.blocks[0].ffn
    assert ffn.gate is not None and ffn.act_name == "gelu_tanh"
    ids, dec = torch.randint(2, 99, (2, 6)), torch.randint(2, 99, (2, 4))
    with torch.no_grad():
        out = m(input_ids=ids, decoder_input_ids=dec)
        expected = out.last_hidden_state @ head.weight.T  # unscaled, own matrix
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_tied_head_rescales_decoder_states():
    m = tiny_t5()
    ids, dec = torch.randint(2, 99, (2, 6)), torch.randint(2, 99, (2, 4))
    with torch.no_grad():
        out = m(input_ids=ids, decoder_input_ids=dec)
        expected = (out.last_hidden_state * 32**-0.5) @ m.encoder.embed_tokens.weight.T
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_padding_does_not_change_real_positions():
    m = tiny_t5()
    ids = torch.randint(2, 99, (1, 7))
    dec = torch.randint(2, 99, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = m(input_ids=ids, decoder_input_ids=dec).logits
        with_pad = m(input_ids=padded, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.allclose(alone, with_pad, atol=1e-5)


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_cached_decoding_equals_full_forward(feed_forward):
    m = tiny_t5(feed_forward=feed_forward, n_decoder_layers=3)
    ids = torch.randint(2, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    dec = torch.randint(2, 99, (2, 8))
    with torch.no_grad():
        full = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        memory = m.encoder(ids, attention_mask=mask).last_hidden_state
        cache = m.decoder.new_cache(2, 2, dtype=torch.float32, device=ids.device)  # grows as needed
        steps = []
        # a 3-token prefill, then one token at a time; memory only on the first call
        first = m.decoder(dec[:, :3], memory=memory, memory_mask=mask, cache=cache)
        steps.append(m.heads["lm"](first.last_hidden_state))
        assert all(kv is not None for kv in cache.cross)  # cross-attention K/V kept
        for t in range(3, 8):
            out = m.decoder(dec[:, t : t + 1], memory=None, memory_mask=mask, cache=cache)
            steps.append(m.heads["lm"](out.last_hidden_state))
    assert cache.length == 8
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_model_level_cache_round_trip():
    m = tiny_t5()
    ids, dec = torch.randint(2, 99, (2, 6)), torch.randint(2, 99, (2, 5))
    with torch.no_grad():
        full = m(input_ids=ids, decoder_input_ids=dec).logits
        enc = m.encoder(ids)
        out = m(input_ids=ids, decoder_input_ids=dec[:, :2], use_cache=True)
        logits = [out.logits]
        for t in range(2, 5):
            out = m(encoder_outputs=enc, decoder_input_ids=dec[:, t : t + 1], past_key_values=out.past_key_values)
            logits.append(out.logits)
    assert torch.allclose(torch.cat(logits, dim=1), full, atol=1e-5)


def test_decoder_needs_a_memory_and_encoder_refuses_token_types():
    m = tiny_t5()
    with pytest.raises(InputError, match="memory"):
        m.decoder(torch.randint(0, 99, (1, 3)))
    with pytest.raises(InputError, match="token types"):
        m(
            input_ids=torch.randint(0, 99, (1, 3)),
            token_type_ids=torch.zeros(1, 3, dtype=torch.long),
            decoder_input_ids=torch.zeros(1, 1, dtype=torch.long),
        )


def test_special_tokens_and_shift_right():
    m = tiny_t5(pad_token_id=0, eos_token_id=1)
    assert m.special_tokens == {"eos": 1, "pad": 0, "decoder_start": 0}  # decoder start falls back to pad
    labels = torch.tensor([[5, 6, 1, -100]])
    assert m.shift_right(labels).tolist() == [[0, 5, 6, 1]]
    assert tiny_t5(decoder_start_token_id=7).special_tokens["decoder_start"] == 7


@pytest.mark.parametrize(
    "bad,field",
    [
        (dict(feed_forward="gated-banana"), "feed_forward"),
        (dict(relative_attention_max_distance=16), "relative_attention_max_distance"),
        (dict(eos_token_id=99), "eos_token_id"),
        (dict(head_dim=0), "head_dim"),
    ],
)
def test_impossible_configs_name_their_fields(bad, field):
    with pytest.raises(ConfigError, match=field):
        T5Config(**{**TINY, **bad})


def test_presets():
    reg = get_registry()
    _, mini = reg.resolve_model("t5-mini")
    assert (mini["d_model"], mini["n_layers"], mini["n_heads"], mini["d_ff"]) == (384, 3, 6, 1536)
    _, small = reg.resolve_model("t5-small")
    assert (small["n_layers"], small["d_model"], small["n_heads"], small["d_ff"]) == (6, 512, 8, 2048)
    _, v11 = reg.resolve_model("t5-v1_1-small")
    cfg = T5Config(**v11)
    assert cfg.feed_forward == "gated-gelu" and not cfg.tie_embeddings and not cfg.scales_outputs
    m = um.build_model("t5-tiny", vocab_size=99, objective=SPAN)
    assert m.preset == "t5-tiny" and m.config.d_model == 128 and m.objective_name == "span_corruption"


def test_t5_parts_pair_with_other_families():
    # the T5 decoder behind a narrower T5 encoder (a projection joins them), and a GPT decoder behind a T5 encoder
    spec = {
        "name": "encoder-decoder",
        "vocab_size": 99,
        "encoder": {"name": "t5", **{k: v for k, v in TINY.items() if k != "vocab_size"}, "d_model": 24},
        "decoder": {"name": "t5", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
    }
    m = um.build_model(spec, objective=SPAN).eval()
    assert m.decoder.blocks[0].cross is not None
    ids, dec = torch.randint(2, 99, (2, 6)), torch.randint(2, 99, (2, 4))
    assert m(input_ids=ids, decoder_input_ids=dec).logits.shape == (2, 4, 99)
    spec["decoder"] = {"name": "gpt", "max_positions": 32, "d_model": 32, "n_layers": 1, "n_heads": 4}
    m = um.build_model(spec, objective=SPAN).eval()
    assert m(input_ids=ids, decoder_input_ids=dec).logits.shape == (2, 4, 99)
    # span corruption needs only roles/ids, so it trains this non-T5 pair too
    batch = m.objective.prepare([{"input_ids": list(range(2, 30))}] * 2, generator=torch.Generator().manual_seed(0))
    out = m.objective(m, batch)
    assert torch.isfinite(out.loss) and out.n_predictions == int((batch["labels"] != -100).sum())


def test_save_and_load_round_trip(tmp_path):
    for overrides in ({}, {"feed_forward": "gated-gelu", "tie_embeddings": False}):
        m = tiny_t5(**overrides)
        m.save(tmp_path / "ckpt")
        back = um.load(tmp_path / "ckpt")
        ids, dec = torch.randint(2, 99, (2, 6)), torch.randint(2, 99, (2, 4))
        with torch.no_grad():
            assert torch.equal(
                back(input_ids=ids, decoder_input_ids=dec).logits, m(input_ids=ids, decoder_input_ids=dec).logits
            )
        assert (back.heads["lm"].weight is back.encoder.embed_tokens.weight) == (not overrides)


# ------------------------------------------------------------------ span corruption
def reconstruct(inputs, targets, sentinels, eos):
    """Put each sentinel's span from the targets back in place of the sentinel in the inputs."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans, current = {}, None
    for tok in targets[:-1]:
        if tok in sentinels:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out = []
    for tok in inputs[:-1]:
        out.extend(spans.pop(tok) if tok in sentinels else [tok])
    assert not any(spans.values())  # every target span was used (a 1-token example leaves an empty one)
    return out


def test_span_corruption_reconstructs_the_text():
    obj = um.build_objective(SPAN)
    sentinels = obj.sentinel_ids()
    assert sentinels[:3] == [98, 97, 96]  # counting down like HF's <extra_id_i>
    g = torch.Generator().manual_seed(1)
    examples = [{"input_ids": torch.randint(2, 60, (n,)).tolist()} for n in (1, 2, 5, 17, 40, 64, 100)]
    batch = obj.prepare(examples, generator=g)
    for i, ex in enumerate(examples):
        inp = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        lab = batch["labels"][i]
        tgt = lab[lab != -100].tolist()
        assert reconstruct(inp, tgt, set(sentinels), eos=1) == ex["input_ids"]
        if len(ex["input_ids"]) >= 2:
            assert tgt[0] == sentinels[0]  # targets open with sentinel_0 ...
            used = [t for t in inp if t in sentinels]
            assert used == sentinels[: len(used)]  # ... and sentinels are used in order, once each
    assert (batch["labels"][batch["labels"] != -100] != 0).all()  # padding is never a target
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(0).all()


def test_noise_mask_statistics():
    g = torch.Generator().manual_seed(0)
    noise = total = 0
    for _ in range(300):
        L = int(torch.randint(20, 200, (1,), generator=g))
        mask = random_spans_noise_mask(L, 0.15, 3.0, generator=g)
        assert len(mask) == L and not mask[0]  # starts with kept tokens
        n_noise = round(L * 0.15)
        assert sum(mask) == n_noise
        assert count_spans(mask) == max(1, round(n_noise / 3.0))
        assert count_spans([not m for m in mask]) == count_spans(mask)  # kept and noise spans alternate
        noise += sum(mask)
        total += L
    assert abs(noise / total - 0.15) < 0.005


def test_span_lengths_are_random_with_the_right_mean():
    g = torch.Generator().manual_seed(0)
    lengths = []
    for _ in range(200):
        mask = random_spans_noise_mask(100, 0.15, 3.0, generator=g)
        run = 0
        for m in [*mask, False]:
            if m:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    assert len(set(lengths)) > 3  # not a fixed pattern
    assert math.isclose(sum(lengths) / len(lengths), 15 / 5, rel_tol=1e-9)  # 15 noise tokens in 5 spans


def test_seeded_span_corruption_is_deterministic():
    obj = um.build_objective(SPAN)
    examples = [{"input_ids": list(range(2, 60))}] * 3

    def run(seed):
        return obj.prepare(examples, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    assert not torch.equal(a["labels"][0], a["labels"][1])  # examples of a batch get different noise


def test_running_out_of_sentinels_is_a_clear_error():
    obj = um.build_objective({**SPAN, "n_sentinels": 4})
    with pytest.raises(DataError, match=r"needs \d+ sentinels but only 4 exist"):
        obj.prepare([{"input_ids": list(range(2, 98))}], generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="first_sentinel_id"):
        um.build_objective({"name": "span_corruption", "first_sentinel_id": 2, "n_sentinels": 5})
    with pytest.raises(ConfigError, match="sentinel"):
        um.build_objective({"name": "span_corruption"}).prepare([{"input_ids": [5, 6, 7]}])


def test_tokenizer_roles_cover_the_objectives():
    from unimodel.data.tokenizer import Tokenizer

    declared = get_registry().get("model", "t5").tokenizer
    assert declared is not None and declared.kind == "unigram"
    texts = [f"the quick brown fox jumps over the lazy dog {i} times" for i in range(100)]
    tok = Tokenizer.train(declared.kind, texts, 200, declared.roles)
    assert [tok.special_id(r) for r in ("pad", "eos", "unk")] == [0, 1, 2]
    assert tok.has_role("mask") and tok.has_role("sentinel_99") and not tok.has_role("sentinel_100")
    m = um.build_model("t5", **{**TINY, "vocab_size": tok.vocab_size}, tokenizer=tok)  # build-time token check
    obj = m.objective
    sentinels = obj.sentinel_ids(tok)
    assert len(sentinels) == 100 and sentinels[0] == tok.token_to_id("<extra_id_0>")
    ids = tok.encode("the quick brown fox jumps over the lazy dog 7 times")
    batch = obj.prepare([{"input_ids": ids}], tokenizer=tok, generator=torch.Generator().manual_seed(0))
    tgt = batch["labels"][0].tolist()
    assert reconstruct(batch["input_ids"][0].tolist(), tgt, set(sentinels), tok.special_id("eos")) == ids
    assert "<extra_id_0>" in tok.decode(tgt, skip_special_tokens=False)


def test_tokenizer_without_sentinels_is_refused_at_build_time():
    from unimodel.data.tokenizer import Tokenizer

    tok = Tokenizer.train_bpe(["hello world"] * 20, vocab_size=300)
    with pytest.raises(ConfigError, match="sentinel_0"):
        um.build_model("t5", **{**TINY, "vocab_size": tok.vocab_size}, tokenizer=tok)


def test_tiny_t5_learns_with_span_corruption():
    torch.manual_seed(0)
    m = tiny_t5(d_ff=64).train()
    obj = m.objective
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        # counting sequences: every noise span is predictable from its neighbours
        starts = torch.randint(2, 30, (8,), generator=g).tolist()
        batch = obj.prepare([{"input_ids": list(range(s, s + 40))} for s in starts], generator=g)
        out = obj(m, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        assert 0.0 <= out.metrics["accuracy"] <= 1.0 and out.n_predictions == int((batch["labels"] != -100).sum())
    # from ~5 (uniform over the vocabulary) to well below the entropy of the token distribution
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
