"""Non-autoregressive generation (plugin unimodel_nat): the cmlm objective, its length head, mask-predict
decoding, and the builds: T5, BART and a pairing become non-causal for cmlm; a causal-only backbone is refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from unimodel_nat.decoding import MaskPredictOutput
from unimodel_nat.objective import LengthHead, class_lengths, length_classes, mask_targets, masked_mean

import unimodel as um
from unimodel.capabilities import Cap
from unimodel.config import Config, param
from unimodel.data.dataset import tokenizer_roles
from unimodel.data.synthetic import numbers_pairs
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import CheckpointError, ConfigError, IncompatibleObjectiveError, InputError
from unimodel.interfaces import DecoderOutput
from unimodel.model import compatible_objectives
from unimodel.nn import Attention, Block, KVCache, MemoryCache
from unimodel.registry import Component, get_registry
from unimodel.testing import synthetic_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py

REG = get_registry()
TOK, N_PLAIN = synthetic_tokenizer(99, ["mask"])
MASK = TOK.special_id("mask")


def tiny_spec(family: str) -> dict:
    if family == "pair":
        enc, dec = dict(REG.get("model", "bert").tiny), dict(REG.get("model", "gpt").tiny)
        return {"name": "encoder-decoder", "encoder": {"name": "bert", **enc}, "decoder": {"name": "gpt", **dec},
                "vocab_size": 99, "eos_token_id": TOK.special_id("eos")}  # fmt: skip
    return {"name": family, **REG.get("model", family).tiny}


def tiny(family: str = "bart", objective: str | dict = "cmlm", tokenizer=TOK, **overrides) -> um.Model:
    torch.manual_seed(0)
    return um.build_model({**tiny_spec(family), **overrides}, objective=objective, tokenizer=tokenizer)


def pairs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "source": torch.randint(0, N_PLAIN, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist(),
            "target": torch.randint(0, N_PLAIN, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist(),
        }
        for _ in range(n)
    ]


# ------------------------------------------------------------------ building non-causal backbones
@pytest.mark.parametrize("family", ["t5", "bart", "pair"])
def test_cmlm_builds_the_decoder_without_its_causal_mask(family):
    model = tiny(family)
    assert not model.decoder.is_causal and "noncausal_decoder" in model.provides and "kv_cache" not in model.provides
    assert model.config.causal_decoder is False  # saved with the checkpoint, so it loads non-causal
    ids = torch.randint(0, N_PLAIN, (1, 5))
    dec = torch.randint(0, N_PLAIN, (1, 6))
    later = dec.clone()
    later[0, -1] = (later[0, -1] + 1) % N_PLAIN
    with torch.no_grad():
        a = model.eval()(input_ids=ids, decoder_input_ids=dec).logits[0, 0]
        b = model(input_ids=ids, decoder_input_ids=later).logits[0, 0]
    assert not torch.allclose(a, b)  # the first position sees the last token
    with torch.no_grad():  # an all-masked target, mask-predict's first pass: every position is told apart
        states = model(input_ids=ids, decoder_input_ids=torch.full((1, 6), MASK)).last_hidden_state[0]
    assert all(not torch.allclose(states[i], states[i + 1]) for i in range(5))
    with pytest.raises(InputError, match="non-causal.*without use_cache"):
        model(input_ids=ids, decoder_input_ids=dec, use_cache=True)
    if family == "t5":  # later positions get their own relative-position buckets, as in the encoder
        assert model.decoder.relative_bias.bidirectional


def test_a_t5_built_for_cmlm_gives_its_encoder_absolute_positions():
    from unimodel.nn.positions import sinusoids

    nar, ar = tiny("t5"), tiny("t5", "seq2seq")  # the same seed: the same encoder weights
    ids = torch.randint(0, N_PLAIN, (2, 7))
    with torch.no_grad():
        encoded = nar.encoder(ids).last_hidden_state
        plain = ar.encoder(ids).last_hidden_state
        hook = ar.encoder.embed_tokens.register_forward_hook(lambda m, i, out: out + sinusoids(torch.arange(7), 32))
        try:
            positioned = ar.encoder(ids).last_hidden_state
        finally:
            hook.remove()
    assert not torch.allclose(encoded, plain)
    torch.testing.assert_close(encoded, positioned)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_a_noncausal_model_has_no_hugging_face_equivalent(family, tmp_path):
    with pytest.raises(CheckpointError, match="non-causal decoder has no .* equivalent"):
        um.to_hf(tiny(family), tmp_path / "hf")


def test_a_causal_only_backbone_is_refused_with_the_reason():
    with pytest.raises(IncompatibleObjectiveError, match=r"needs encoder_decoder \(an encoder and a decoder") as err:
        um.build_model("gpt2-tiny", objective="cmlm")
    assert "clm" in str(err.value) and "fim" in str(err.value)  # what does fit
    with pytest.raises(IncompatibleObjectiveError, match="the model spec sets causal_decoder=True; drop that setting"):
        um.build_model("bart-tiny", objective="cmlm", causal_decoder=True)


@dataclass(frozen=True)
class CausalOnlyConfig(Config):
    vocab_size: int = param(99, "vocabulary")
    d_model: int = param(16, "width")
    memory_dim: int | None = param(None, "memory width")


class CausalOnlyDecoder(um.Decoder):
    """A cross-attending decoder with no causal_decoder option, as an outside plugin might write one."""

    config_class = CausalOnlyConfig
    provides = frozenset({"causal", "lm_head"})
    is_causal = True

    def __init__(self, config):
        super().__init__()
        self.d_model, self.vocab_size, self.max_positions = config.d_model, config.vocab_size, None
        self.cross_attention = config.memory_dim is not None
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.block = Block(
            d_model=config.d_model, n_heads=2, d_ff=32, cross_attention=True, memory_dim=config.memory_dim
        )

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, memory=None, memory_mask=None, cache=None):
        return DecoderOutput(self.block(self.emb(input_ids), is_causal=True, memory=memory))

    def get_input_embeddings(self):
        return self.emb

    def build_lm_head(self):
        return nn.Linear(self.d_model, self.vocab_size)

    def new_cache(self, batch, capacity, *, dtype, device):
        raise um.UnimodelError("no cache")


class CausalOnlyPlugin:
    @um.hookimpl
    def unimodel_components(self):
        return [Component(kind="decoder", name="causal_only", target=f"{__name__}:CausalOnlyDecoder",
                          provides=("causal", "lm_head"))]  # fmt: skip


def test_a_pairing_with_a_decoder_that_cannot_drop_its_mask_is_refused():
    reg = um.registry.Registry()
    reg.add_plugin(CausalOnlyPlugin(), "causal-only")
    old = um.registry.set_registry(reg)
    try:
        spec = {"name": "encoder-decoder", "encoder": {"name": "bert-tiny"}, "decoder": {"name": "causal_only"},
                "vocab_size": 99}  # fmt: skip
        assert um.build_model(spec, objective="seq2seq").decoder.is_causal  # it pairs, causally
        with pytest.raises(IncompatibleObjectiveError, match="decoder 'causal_only' always runs causally") as err:
            um.build_model(spec, objective="cmlm")
        assert "objective 'cmlm' builds the model with causal_decoder=False" in str(err.value)
        assert "seq2seq" in str(err.value)
        assert "cmlm" not in compatible_objectives(spec)
    finally:
        um.registry.set_registry(old)


def test_the_pair_sets_causal_decoder_not_its_decoder_table():
    spec = tiny_spec("pair")
    spec["decoder"] = {**spec["decoder"], "causal_decoder": False}
    with pytest.raises(ConfigError, match="set causal_decoder on the pair instead"):
        um.build_model(spec)


def test_compatible_objectives_apply_each_objectives_model_options():
    assert "cmlm" in compatible_objectives("t5-tiny") and "cmlm" in compatible_objectives("bart")
    assert "cmlm" in compatible_objectives(tiny_spec("pair"))
    assert "cmlm" not in compatible_objectives("gpt2-tiny")
    assert "cmlm" not in compatible_objectives({"name": "t5", "causal_decoder": True})
    assert "cmlm" not in REG.compatible_objectives(REG.get("model", "t5").provides)  # registered capabilities alone


# ------------------------------------------------------------------ masking and the length head
def test_masking_draws_a_uniform_count_of_real_positions():
    lengths = torch.tensor([1, 3, 4, 7])
    draws = 3000
    target_mask = (torch.arange(8)[None, :] < lengths[:, None]).repeat(draws, 1)  # each row `draws` times
    masked = mask_targets(target_mask, torch.Generator().manual_seed(0))
    assert not (masked & ~target_mask).any()  # padding is never masked
    n = masked.sum(dim=1).view(draws, 4)
    assert bool(((n >= 1) & (n <= lengths)).all())
    for row, length in enumerate(lengths.tolist()):
        freq = torch.bincount(n[:, row], minlength=length + 1)[1:].float() / draws  # each count in 1..L equally often
        assert torch.allclose(freq, torch.full_like(freq, 1 / length), atol=0.035), (length, freq)
        # every position is masked with the same probability, E[n] / L = (L + 1) / (2L)
        rate = masked.view(draws, 4, 8)[:, row, :length].float().mean(0)
        assert torch.allclose(rate, torch.full_like(rate, (length + 1) / (2 * length)), atol=0.04), rate


def test_prepare_masks_targets_only_and_labels_the_masked_positions():
    model = tiny("bart")
    examples = pairs(6)
    batch = model.objective.prepare(examples, tokenizer=TOK, generator=torch.Generator().manual_seed(3))
    eos = TOK.special_id("eos")
    for i, ex in enumerate(examples):
        n_src, n_tgt = len(ex["source"]), len(ex["target"])
        assert batch["input_ids"][i, : n_src + 1].tolist() == [*ex["source"], eos]  # sources framed as seq2seq's
        assert batch["attention_mask"][i].sum() == n_src + 1
        dec, labels = batch["decoder_input_ids"][i], batch["labels"][i]
        masked = dec[:n_tgt] == MASK
        assert 1 <= int(masked.sum()) <= n_tgt
        assert labels[:n_tgt][masked].tolist() == torch.tensor(ex["target"])[masked].tolist()
        assert (labels[:n_tgt][~masked] == -100).all() and (labels[n_tgt:] == -100).all()
        assert dec[:n_tgt][~masked].tolist() == torch.tensor(ex["target"])[~masked].tolist()
        assert (dec[n_tgt:] == TOK.pad_id).all() and batch["decoder_attention_mask"][i].sum() == n_tgt
        assert batch["length_labels"][i] == n_tgt  # targets carry no eos: the length head ends them
    offset = tiny("bart", {"name": "cmlm", "length_mode": "offset", "max_target_length": 8})
    b = offset.objective.prepare(examples, tokenizer=TOK, generator=torch.Generator().manual_seed(3))
    expected = [len(ex["target"]) - (len(ex["source"]) + 1) + 8 for ex in examples]
    assert b["length_labels"].tolist() == expected


def test_a_tokenizer_without_a_mask_role_is_refused_naming_the_fix():
    no_mask = Tokenizer(TOK.backend, {r: t for r, t in TOK.roles.items() if r != "mask"})
    with pytest.raises(ConfigError, match="needs the special token.*mask.*train the tokenizer with them reserved"):
        tiny("t5", tokenizer=no_mask)
    model = tiny("t5", tokenizer=None)
    with pytest.raises(ConfigError, match="lacks.*reserved.*or set objective.mask_token_id"):
        model.objective.prepare(pairs(2), tokenizer=no_mask)


def test_length_classes_in_both_modes():
    lengths, sources = torch.tensor([1, 5, 40, 3]), torch.tensor([4, 5, 2, 30])
    assert length_classes(lengths, sources, max_length=32, mode="target").tolist() == [1, 5, 32, 3]
    offsets = length_classes(lengths, sources, max_length=32, mode="offset")
    assert offsets.tolist() == [29, 32, 64, 5]  # offset + 32, clamped to [-32, 32]
    back = class_lengths(offsets, sources, max_length=32, mode="offset")
    assert back.tolist() == [1, 5, 34, 3]  # 40 lies beyond the largest offset
    head = LengthHead(8, max_length=32, mode="offset")
    assert head.n_classes == 65 and LengthHead(8, max_length=32).n_classes == 33


def test_length_head_pools_over_real_positions_only():
    head = LengthHead(6, max_length=10)
    hidden = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    garbage = hidden.clone()
    garbage[0, 3:] = 1e3  # what padding positions hold must not matter
    assert torch.allclose(head(hidden, mask), head(garbage, mask))
    assert torch.allclose(head(hidden, mask)[0], head(hidden[:1, :3])[0], atol=1e-6)
    assert torch.allclose(masked_mean(hidden, mask)[0], hidden[0, :3].mean(0), atol=1e-6)


def test_loss_is_token_loss_plus_weighted_length_loss():
    for weight in (0.0, 0.5):
        model = tiny("t5", {"name": "cmlm", "length_weight": weight, "label_smoothing": 0.0}).eval()
        batch = model.objective.prepare(pairs(4), tokenizer=TOK, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model.objective(model, batch)
            m = out.metrics
            assert out.loss.item() == pytest.approx(m["token_loss"] + weight * m["length_loss"], rel=1e-6)
            assert out.n_predictions == int((batch["labels"] != -100).sum())
            # the parts are what they claim: cross-entropy of the LM head at masked positions, of the length head
            keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
            logits = model(**{k: batch[k] for k in keys}).logits
            keep = batch["labels"] != -100
            assert m["token_loss"] == pytest.approx(F.cross_entropy(logits[keep], batch["labels"][keep]).item(), 1e-5)
            enc = model.encoder(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            length_logits = model.heads["length"](enc, batch["attention_mask"])
            assert m["length_loss"] == pytest.approx(
                F.cross_entropy(length_logits, batch["length_labels"]).item(), 1e-5
            )


# ------------------------------------------------------------------ training swaps on numbers pairs
@pytest.fixture(scope="module")
def numbers():
    raw = numbers_pairs("train", n_train=48, count=2)
    texts = [side for p in raw for side in (p["source"], p["target"])]
    tok = Tokenizer.train("bpe", texts, 300, tokenizer_roles("bpe", ["mask"]), min_frequency=1, split_digits=True)
    return tok, [{"source": tok.encode(p["source"]), "target": tok.encode(p["target"])} for p in raw]


@pytest.mark.parametrize("family", ["t5", "bart", "pair"])
def test_training_steps_on_numbers_pairs_reduce_the_loss(family, numbers):
    tok, examples = numbers
    model = tiny(family, tokenizer=tok, vocab_size=tok.vocab_size)
    batch = model.objective.prepare(examples[:8], tokenizer=tok, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        out = model.objective(model, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first or out.metrics
    assert out.metrics["token_loss"] < first["token_loss"] and out.metrics["length_loss"] < first["length_loss"]


# ------------------------------------------------------------------ mask-predict
def source_batch(n=3, seed=1):
    ex = pairs(n, seed)
    ids = [e["source"] for e in ex]
    width = max(map(len, ids))
    input_ids = torch.tensor([s + [TOK.pad_id] * (width - len(s)) for s in ids])
    return input_ids, (input_ids != TOK.pad_id).long()


def all_masked_pass(model, input_ids, mask, length):
    """Mean log-probability and argmax tokens of one pass over an all-masked target of ``length``."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=torch.full((1, length), MASK)).logits
    s = model.special_tokens
    for banned in {MASK, s["pad"], s["eos"], s["decoder_start"], s.get("bos")} - {None}:
        logits[..., banned] = -torch.inf
    logp = logits.float().log_softmax(-1)
    best, tokens = logp.max(-1)
    return best.mean().item(), tokens[0]


@pytest.mark.parametrize("family", ["bart", "t5", "pair"])
def test_one_iteration_scores_length_candidates_and_keeps_the_best(family):
    model = tiny(family).eval()
    input_ids, mask = source_batch(1)
    out = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=1, length_beam=3,
                         num_return_sequences=3, return_history=True, max_new_tokens=40)  # fmt: skip
    assert isinstance(out, MaskPredictOutput) and out.iterations == 1
    with torch.no_grad():  # the candidates are the length head's three best lengths
        enc = model.encoder(input_ids, attention_mask=mask).last_hidden_state
        logits = model.heads["length"](enc, mask)[0]
        length_logp = logits.float().log_softmax(-1)  # over every length class
        logits[0] = -torch.inf
        logits[40:] = -torch.inf  # 39 tokens and an eos fit in max_new_tokens=40
    assert sorted(out.lengths.tolist()) == sorted(logits.topk(3).indices.tolist())
    assert out.scores.tolist() == sorted(out.scores.tolist(), reverse=True)  # best first
    tokens_only = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=1,
                                 length_beam=3, num_return_sequences=3, return_history=True, max_new_tokens=40,
                                 length_score=0)  # fmt: skip
    assert tokens_only.scores.tolist() == sorted(tokens_only.scores.tolist(), reverse=True)
    start, eos = model.special_tokens["decoder_start"], model.special_tokens["eos"]
    for row, (length, score) in enumerate(zip(out.lengths.tolist(), out.scores.tolist())):
        mean_logp, tokens = all_masked_pass(model, input_ids, mask, length)
        # the candidate's log-probability, its length's included, per token
        assert score == pytest.approx(mean_logp + length_logp[length].item() / length, abs=1e-5)
        alone = tokens_only.lengths.tolist().index(length)
        assert tokens_only.scores[alone].item() == pytest.approx(mean_logp, abs=1e-5)  # length_score=0
        seq = out.sequences[row]
        assert seq[0] == start and seq[1 : 1 + length].tolist() == tokens.tolist()
        if eos is not None:
            assert seq[1 + length] == eos
        assert (seq[1 + length + (eos is not None) :] == model.special_tokens["pad"]).all()
    best = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=1, max_new_tokens=40)
    assert torch.equal(best[0, : out.sequences.shape[1]], out.sequences[0][: best.shape[1]])


@pytest.mark.parametrize("family", ["bart", "t5", "pair"])
def test_mask_predict_projects_the_memory_once_and_decodes_as_without_the_cache(family, monkeypatch):
    model = tiny(family).eval()
    assert Cap.MEMORY_CACHE in model.decoder.provides
    input_ids, mask = source_batch(2)
    calls = []
    real = Attention.memory_kv
    monkeypatch.setattr(Attention, "memory_kv", lambda self, m: calls.append(m.shape[0]) or real(self, m))

    def run():
        calls.clear()
        out = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=4, length_beam=2,
                             early_stop=False, return_history=True, max_new_tokens=12)  # fmt: skip
        return out, len(calls)

    cached, projections = run()
    n_cross = sum(1 for m in model.decoder.modules() if isinstance(m, Attention) and m.cross)
    assert projections == n_cross  # once per cross-attention layer, not once per pass
    model.decoder.provides = model.decoder.provides - {Cap.MEMORY_CACHE}
    plain, projections = run()
    assert projections == 4 * n_cross
    assert torch.equal(cached.sequences, plain.sequences)
    assert torch.allclose(cached.scores, plain.scores, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(cached.history, plain.history, strict=True))


@pytest.mark.parametrize("family", ["bart", "t5", "pair"])
def test_mask_predict_runs_the_last_layer_at_the_predicted_positions_and_decodes_as_without(family, monkeypatch):
    model = tiny(family).eval()
    assert Cap.OUTPUT_POSITIONS in model.decoder.provides
    input_ids, mask = source_batch(2)
    ffn_rows = []
    last_ffn = model.decoder.blocks[-1].ffn
    real = type(last_ffn).forward
    monkeypatch.setattr(
        type(last_ffn), "forward", lambda self, x: (self is last_ffn and ffn_rows.append(x.shape[1])) or real(self, x)
    )

    def run():
        ffn_rows.clear()
        return model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=4, length=[8, 6],
                              early_stop=False, return_history=True)  # fmt: skip

    picked = run()
    # the first pass predicts all 8 positions; then (T - t) / T of the longest row: 6, 4, 2
    assert ffn_rows == [8, 6, 4, 2]
    model.decoder.provides = model.decoder.provides - {Cap.OUTPUT_POSITIONS}
    everywhere = run()
    assert ffn_rows == [8, 8, 8, 8]
    assert torch.equal(picked.sequences, everywhere.sequences)
    assert torch.allclose(picked.scores, everywhere.scores, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(picked.history, everywhere.history, strict=True))


def test_output_positions_are_checked_and_refused_by_a_causal_decoder():
    model = tiny("bart").eval()
    dec = model.decoder
    ids = torch.randint(0, N_PLAIN, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        memory = model.encoder(ids).last_hidden_state
        for bad, message in (
            (torch.tensor([[0, 5], [1, 2]]), r"must index the decoder's 5 input positions \(0 to 4\), got 5"),
            (torch.tensor([[0, -1], [1, 2]]), r"must index the decoder's 5 input positions \(0 to 4\), got -1"),
            (torch.tensor([0, 1]), r"must be \(batch, K\) = \(2, K\).*got shape \(2,\)"),
            (torch.tensor([[0.0], [1.0]]), "must hold integer positions, got dtype torch.float32"),
        ):
            with pytest.raises(InputError, match=message):
                dec(ids, memory=memory, output_positions=bad)
        causal = tiny("bart", objective="seq2seq").eval()
        assert Cap.OUTPUT_POSITIONS not in causal.decoder.provides
        with pytest.raises(InputError, match="does not take output_positions .*a causal decoder never does"):
            causal.decoder(ids, memory=memory, output_positions=torch.tensor([[0], [1]]))


@pytest.mark.parametrize("family", ["bart", "t5", "pair"])
def test_a_noncausal_decoder_takes_a_memory_cache_and_refuses_a_key_value_cache(family):
    model = tiny(family).eval()
    input_ids, mask = source_batch(2)
    dec = model.decoder
    with torch.no_grad():
        memory = model.encoder(input_ids, attention_mask=mask).last_hidden_state
        cache = MemoryCache()
        other = torch.randint(0, N_PLAIN, (2, 5), generator=torch.Generator().manual_seed(3))
        for ids in (torch.full((2, 5), MASK), other):
            got = dec(ids, memory=memory, memory_mask=mask, cache=cache).last_hidden_state
            assert torch.allclose(got, dec(ids, memory=memory, memory_mask=mask).last_hidden_state, atol=1e-6)
        assert cache.length == 0 and all(kv is not None for kv in cache.cross)
        first = [kv[0].clone() for kv in cache.cross]
        cache.reorder(torch.tensor([1, 1]))  # both rows now read row 1's memory
        assert all(torch.equal(kv[0], k[[1, 1]]) for kv, k in zip(cache.cross, first, strict=True))
        with pytest.raises(InputError, match="cannot decode with a key/value cache"):
            dec(ids, memory=memory, memory_mask=mask, cache=KVCache(4, 2, 2, 8, 8))


def test_forced_length_layout_and_batch_independence():
    model = tiny("bart").eval()
    input_ids, mask = source_batch(3)
    out = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=4, length=[3, 6, 2])
    start, eos, pad = (model.special_tokens[k] for k in ("decoder_start", "eos", "pad"))
    assert out.shape == (3, 1 + 6 + 1)
    for row, length in enumerate([3, 6, 2]):
        seq = out[row].tolist()
        assert seq[0] == start and seq[1 + length] == eos and set(seq[2 + length :]) <= {pad}
        assert MASK not in seq[1 : 1 + length] and pad not in seq[1 : 1 + length]
    for row, length in enumerate([3, 6, 2]):  # each input decodes as it would alone
        alone = model.generate(input_ids[row : row + 1, : int(mask[row].sum())], strategy="mask_predict",
                               iterations=4, length=length)  # fmt: skip
        assert alone[0].tolist() == out[row, : 2 + length].tolist()
    same = model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=4, length=5)
    assert same.shape == (3, 7) and (same[:, 6] == eos).all()


def test_history_follows_the_schedule_and_ends_at_the_result():
    model = tiny("t5").eval()
    input_ids, mask = source_batch(2)
    kw = {"strategy": "mask_predict", "iterations": 5, "length": 10, "early_stop": False}
    out = model.generate(input_ids, attention_mask=mask, return_history=True, **kw)
    assert out.iterations == 5 and len(out.history) == len(out.masked) == 5
    assert [int(m[0].sum()) for m in out.masked] == [10, 8, 6, 4, 2]  # N * (T - t) / T, all at first
    assert torch.equal(out.history[-1], out.sequences)
    assert torch.equal(out.sequences, model.generate(input_ids, attention_mask=mask, **kw))
    assert not out.masked[0][:, 0].any() and not out.masked[0][:, 11:].any()  # neither start token nor eos


def test_default_strategy_and_caps():
    model = tiny("bart").eval()
    input_ids, mask = source_batch(2)
    assert torch.equal(
        model.generate(input_ids, attention_mask=mask, iterations=3),  # a cmlm model decodes with mask_predict
        model.generate(input_ids, attention_mask=mask, strategy="mask_predict", iterations=3),
    )
    capped = model.generate(input_ids, attention_mask=mask, max_new_tokens=4)
    assert capped.shape[1] <= 1 + 4


def test_options_are_checked():
    model = tiny("bart").eval()
    ids = torch.tensor([[4, 5, 6]])
    bad = [
        ({"iterations": 0}, r"mask_predict: impossible config \(iterations=0\): must be an integer >= 1"),
        ({"iterations": "4"}, "field 'iterations' must be an integer"),
        ({"early_stop": 1}, "field 'early_stop' must be true or false"),
        ({"length": 0}, "must be a target length >= 1"),
        ({"length": [3, 4]}, "a list of 1"),
        ({"num_beams": 2}, "does not support num_beams > 1"),
        ({"do_sample": True}, "does not support do_sample"),
        ({"num_return_sequences": 4}, "cannot exceed mask_predict's length_beam"),
        ({"schedule": "cos"}, "field 'schedule' must be one of 'linear', 'cosine'"),
        ({"iteration": 3}, "Did you mean 'iterations'"),
        ({"length": 200}, "exceeds what model 'bart'"),
        ({"length_score": -1.0}, r"length_score=-1.0\): must be a finite number >= 0"),
        ({"length_score": float("nan")}, "field 'length_score' must be a finite number, got nan"),
        ({"length_score": "high"}, "field 'length_score' must be a number"),
    ]
    for options, message in bad:
        with pytest.raises(InputError, match=message):
            model.generate(ids, strategy="mask_predict", **options)


def test_mask_predict_refuses_a_causal_model_and_needs_the_mask_id():
    causal = tiny("bart", "seq2seq")
    with pytest.raises(InputError, match="needs capability 'noncausal_decoder'"):
        causal.generate(torch.tensor([[4, 5]]), strategy="mask_predict")
    no_tokenizer = tiny("bart", tokenizer=None)
    with pytest.raises(InputError, match="no tokenizer with a 'mask' role.*mask_token_id"):
        no_tokenizer.generate(torch.tensor([[4, 5]]))
    with_id = tiny("bart", {"name": "cmlm", "mask_token_id": MASK}, tokenizer=None).eval()
    assert with_id.generate(torch.tensor([[4, 5]]), length=3).shape == (1, 5)


def test_a_cmlm_checkpoint_generates_and_evaluates_from_the_cli(tmp_path, capsys):
    from unimodel import cli

    model = tiny("bart", {"name": "cmlm", "max_target_length": 16})
    model.save(tmp_path / "ckpt")
    assert cli.main(["generate", str(tmp_path / "ckpt"), "--prompt", "t1 t2 t3", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.split()
    assert 1 <= len(printed) <= 7 and all(w.startswith("t") for w in printed)  # words of the vocabulary, no specials
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("t1 t2 t3\tt4 t5\nt6 t7\tt8 t9 t10\n")
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--data", str(tsv)]) == 0
    assert "exact match" in capsys.readouterr().out


class _NoisyMaskPredict:
    """A fixture plugin: mask_predict whose target length changes from call to call (the kit must fail it)."""

    calls = 0

    @staticmethod
    def strategy(model, inputs, settings):
        from unimodel_nat.decoding import mask_predict

        _NoisyMaskPredict.calls += 1
        settings.extra["length"] = 1 + _NoisyMaskPredict.calls % 2
        return mask_predict(model, inputs, settings)

    @um.hookimpl
    def unimodel_api_version(self):
        from unimodel.hookspecs import PLUGIN_API_VERSION

        return PLUGIN_API_VERSION

    @um.hookimpl
    def unimodel_components(self):
        nat = REG.get("decoding", "mask_predict")
        return [Component(kind="decoding", name="noisy_mask_predict", target=f"{__name__}:_NoisyMaskPredict.strategy",
                          requires=nat.requires, options=nat.options)]  # fmt: skip


def test_the_kit_runs_mask_predict_and_cmlm_on_a_model_built_for_cmlm():
    import unimodel_bart
    import unimodel_nat

    import unimodel.builtin
    from unimodel.registry import Registry
    from unimodel.testing import ConformanceError
    from unimodel.testing.generation import check_decoding, decoding_target
    from unimodel.testing.objectives import check_padding_loss

    reg = Registry(discover=False)
    for name, plugin in (("core", unimodel.builtin), ("bart", unimodel_bart), ("nat", unimodel_nat)):
        assert reg.add_plugin(plugin, name).ok
    assert reg.add_plugin(_NoisyMaskPredict(), "noisy").ok
    # no family provides noncausal_decoder as registered: the kit builds one for the objective that gives it
    assert "noncausal_decoder" not in reg.get("model", "bart").provides
    assert decoding_target(reg, reg.get("decoding", "mask_predict")) == ("bart", "nat:cmlm")
    check_decoding("mask_predict", registry=reg)
    check_padding_loss("cmlm", registry=reg)
    with pytest.raises(ConformanceError, match="two runs with seed=0 give different tokens"):
        check_decoding("noisy_mask_predict", registry=reg)


def test_mask_predict_refuses_a_call_whose_passes_would_not_fit_before_the_first_pass(monkeypatch):
    from unimodel.bounds import memory_limit
    from unimodel.errors import ResourceError

    model = tiny("bart").eval()
    ids = torch.randint(0, N_PLAIN, (2048, 5), generator=torch.Generator().manual_seed(0))
    passes = []
    real = model.decoder.forward
    monkeypatch.setattr(model.decoder, "forward", lambda *a, **k: passes.append(1) or real(*a, **k))
    # 2,048 rows x 64 positions of fp32 logits over the vocabulary, their log-softmax and more: over 64 MiB
    with memory_limit(64 << 20):
        with pytest.raises(ResourceError, match=r"mask_predict \(batch 2048 x 1 length, 64 positions\): this needs"):
            model.generate(ids, strategy="mask_predict", iterations=1, length=64)
        head = model.heads["length"].proj
        with torch.no_grad():  # the length head proposes 50, 49 and 51 whatever the input
            head.weight.zero_()
            head.bias.fill_(-10.0)
            head.bias[[50, 49, 51]] = torch.tensor([10.0, 9.0, 8.0])
        with pytest.raises(
            ResourceError, match=r"batch 2048 x 3 lengths, 51 positions.*Lower length_beam or the batch"
        ):
            model.generate(ids, strategy="mask_predict", iterations=1, length_beam=3)
        assert not passes  # refused before any decoder pass
        assert model.generate(ids[:8], strategy="mask_predict", iterations=2, length=64).shape == (8, 66)
