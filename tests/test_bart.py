"""The BART family: registration, config, cached decoding, positions, and the text_infilling objective."""

import itertools
import math
from collections import Counter

import pytest
import torch
from helpers import build_tiny, tiny_config
from unimodel_bart import TOKENIZER
from unimodel_bart.model import BartConfig
from unimodel_bart.objectives import infill, place_spans, poisson_span_lengths

import unimodel as um
from unimodel.data.tokenizer import Tokenizer, check_objective_tokens
from unimodel.errors import ConfigError, IncompatibleObjectiveError, InputError

TINY = tiny_config("bart")
TEXT = [
    "The cat sat on the mat. The dog lay by the door. A bird sang in the tree.",
    "Rain fell on the town. The river rose. People stayed at home and read books.",
    "The old man walked to the market. He bought bread and fish. Then he went home.",
    "Children played in the park. The sun was warm. Their parents watched from a bench.",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides):
    return build_tiny("bart", **overrides)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_bpe(TEXT * 20, vocab_size=420, roles=TOKENIZER.roles)


# ------------------------------------------------------------ registration
def test_registered_components_agree_with_what_they_build():
    reg = um.get_registry()
    family = reg.get("model", "bart")
    assert family.default_objective == "bart:text_infilling"  # stored qualified: no other plugin can capture it
    model = tiny()
    assert model.provides == frozenset(family.provides)
    assert model.is_encoder_decoder and model.decoder.is_causal and model.decoder.cross_attention
    assert reg.get("encoder", "bart").load() is type(model.encoder)
    assert reg.get("decoder", "bart").load() is type(model.decoder)
    assert set(reg.get("objective", "text_infilling").requires) <= set(family.provides)
    assert reg.get("hf_converter", "bart").model_types == ("bart",)
    sizes = {}
    for name in ("bart-tiny", "bart-mini", "bart-base", "bart-large"):
        base, values = reg.resolve_model(name)
        assert base.name == "bart"
        cfg = BartConfig.from_dict(values)
        sizes[name] = (cfg.d_model, cfg.dec_layers, cfg.n_layers, cfg.dec_heads, cfg.n_heads, cfg.dec_ff, cfg.d_ff)
    assert sizes["bart-mini"] == (384, 3, 3, 6, 6, 1536, 1536)
    assert sizes["bart-base"] == (768, 6, 6, 12, 12, 3072, 3072)
    assert sizes["bart-large"] == (1024, 12, 12, 16, 16, 4096, 4096)
    # tied embeddings: one matrix for encoder, decoder and LM head
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight is model.heads["lm"].weight
    assert model.special_tokens == {"bos": 0, "eos": 2, "pad": 1, "decoder_start": 2}


def test_tokenizer_roles_fit_bart_ids_and_every_encoder_decoder_objective(tok):
    recipe = um.get_registry().get("model", "bart").tokenizer
    assert recipe is TOKENIZER and recipe.kind == "bpe"
    defaults = BartConfig()
    assert (tok.special_id("bos"), tok.special_id("pad"), tok.special_id("eos")) == (
        defaults.bos_token_id,
        defaults.pad_token_id,
        defaults.eos_token_id,
    )
    assert tok.roles["mask"] == "<mask>" and tok.roles["unk"] == "<unk>"
    assert [tok.roles[f"sentinel_{i}"] for i in (0, 99)] == ["<extra_id_0>", "<extra_id_99>"]
    reg = um.get_registry()
    for name in reg.compatible_objectives(reg.get("model", "bart").provides):
        objective = um.build_objective(name)
        check_objective_tokens(tok, objective, name)  # raises when a role is missing
    model = um.build_model("bart", **{**TINY, "vocab_size": tok.vocab_size}, tokenizer=tok)
    assert model.objective_name == "text_infilling"


def test_impossible_configs_name_their_fields():
    with pytest.raises(ConfigError, match=r"d_model=30, n_decoder_heads=4"):
        BartConfig(d_model=30, n_heads=5, n_decoder_heads=4)
    assert BartConfig(d_model=30, n_heads=5).dec_heads == 5  # an unset decoder field follows the encoder's
    with pytest.raises(ConfigError, match=r"bos_token_id=120, vocab_size=99"):
        BartConfig(vocab_size=99, bos_token_id=120)
    with pytest.raises(ConfigError, match="Did you mean 'n_layers'"):  # a near miss of the old name
        um.build_model("bart", **TINY, encoder_layer=3)
    with pytest.raises(ConfigError, match="memory_dim"):
        um.build_model("bart", **TINY, memory_dim=16)
    with pytest.raises(ConfigError, match="poisson_lambda"):
        um.build_objective("text_infilling", poisson_lambda=0)


# ---------------------------------------------------------------- forward
def padded_source():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 99, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1
    return ids, mask


@pytest.mark.parametrize("scale_embedding", [False, True])
def test_cached_incremental_decoding_equals_full_forward(scale_embedding):
    model = tiny(scale_embedding=scale_embedding, dropout=0.1)  # eval mode: dropout off
    ids, mask = padded_source()
    dec = torch.randint(3, 99, (2, 8))
    dec[:, 0] = 2
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        assert all(kv is not None for kv in cache.cross)  # cross-attention K/V computed once and kept
        for t in range(3, 8):
            out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, t : t + 1], past_key_values=cache)
            steps.append(out.logits)
    assert cache.length == 8
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_decoder_reads_cached_cross_attention_without_the_memory():
    model = tiny()
    ids, mask = padded_source()
    dec = torch.randint(3, 99, (2, 4))
    with torch.no_grad():
        memory = model.encoder(ids, attention_mask=mask).last_hidden_state
        full = model.decoder(dec, memory=memory, memory_mask=mask).last_hidden_state
        cache = model.decoder.new_cache(2, 4, dtype=torch.float32, device=torch.device("cpu"))
        first = model.decoder(dec[:, :2], memory=memory, memory_mask=mask, cache=cache).last_hidden_state
        rest = model.decoder(dec[:, 2:], memory=None, memory_mask=mask, cache=cache).last_hidden_state
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-5)
    with pytest.raises(InputError, match="memory"):
        model.decoder(dec)


def test_positions_ignore_padding_and_start_at_row_two():
    model = tiny()
    ids, mask = padded_source()
    dec = torch.randint(3, 99, (2, 8))
    with torch.no_grad():
        padded = model.encoder(ids, attention_mask=mask).last_hidden_state
        alone = model.encoder(ids[1:, :6]).last_hidden_state
        assert torch.allclose(padded[1, :6], alone[0], atol=1e-5)  # right padding changes nothing on real tokens
        memory = model.encoder(ids).last_hidden_state
        before = model.decoder(dec, memory=memory).last_hidden_state
        table = model.decoder.embed_positions.weight
        table[:2].normal_(std=5.0)  # rows 0 and 1 are never used
        assert torch.equal(model.decoder(dec, memory=memory).last_hidden_state, before)
        table[2 + 5].normal_(std=5.0)  # position 5 is row 7: the causal decoder changes from there on only
        after = model.decoder(dec, memory=memory).last_hidden_state
    assert torch.equal(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:], atol=1e-3)


def test_scale_embedding_multiplies_token_embeddings_by_sqrt_d():
    plain, scaled = tiny(), tiny(scale_embedding=True)
    assert plain.encoder.embed_scale == 1.0 and scaled.encoder.embed_scale == math.sqrt(32)
    ids, _ = padded_source()
    with torch.no_grad():
        assert not torch.allclose(plain.encoder(ids).last_hidden_state, scaled.encoder(ids).last_hidden_state)


def test_layerdrop_skips_blocks_only_while_training():
    model = tiny(layerdrop=0.5, decoder_layerdrop=0.5)
    ids, _ = padded_source()
    dec = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        evals = {tuple(model(input_ids=ids, decoder_input_ids=dec).logits.flatten()[:5].tolist()) for _ in range(4)}
        model.train()
        trains = {tuple(model(input_ids=ids, decoder_input_ids=dec).logits.flatten()[:5].tolist()) for _ in range(12)}
    assert len(evals) == 1 and len(trains) > 1  # dropout is 0: only skipped blocks make training runs differ


def test_noncausal_decoder_option():
    with pytest.raises(IncompatibleObjectiveError, match="text_infilling.*causal"):
        um.build_model("bart", **TINY, causal_decoder=False)  # teacher forcing needs a causal decoder
    model = um.build_model("bart", **TINY, causal_decoder=False, objective="seq2seq").eval()
    assert "noncausal_decoder" in model.provides and "kv_cache" not in model.provides
    causal = tiny()
    ids, _ = padded_source()
    dec = torch.randint(3, 99, (2, 6))
    later = dec.clone()
    later[:, 4] = (later[:, 4] + 1) % 99
    with torch.no_grad():
        for m, sees_future in ((model, True), (causal, False)):
            a = m(input_ids=ids, decoder_input_ids=dec).logits[:, :4]
            b = m(input_ids=ids, decoder_input_ids=later).logits[:, :4]
            assert (not torch.allclose(a, b)) is sees_future
    cache = model.decoder.new_cache(2, 6, dtype=torch.float32, device=torch.device("cpu"))
    with pytest.raises(InputError, match="non-causal"):
        model(input_ids=ids, decoder_input_ids=dec, past_key_values=cache)


def test_bart_parts_pair_with_other_families():
    pair = um.build_model(
        {
            "name": "encoder-decoder",
            "encoder": {"name": "bart", **TINY, "d_model": 48, "n_heads": 4},
            "decoder": {"name": "bart", **TINY},
            "vocab_size": 99,
        },
        objective="text_infilling",
    )
    assert pair.decoder.cross_attention and pair.decoder.config.memory_dim == 32  # projected to the decoder width
    pair.eval()
    ids, mask = padded_source()
    dec = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        full = pair(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        out = pair(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :1], use_cache=True)
        steps = [out.logits]
        for t in range(1, 5):
            out = pair(
                input_ids=ids,
                attention_mask=mask,
                decoder_input_ids=dec[:, t : t + 1],
                past_key_values=out.past_key_values,
            )
            steps.append(out.logits)
    assert full.shape == (2, 5, 99) and torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


# ------------------------------------------------------------ text infilling
MASK, BOS, PAD, EOS, SENTINEL = 4, 0, 1, 2, 5
IDS = dict(mask_token_id=MASK, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def unique_docs(n, generator, specials=True):
    """Documents of distinct ordinary ids (105..404: above the BART tokenizer's 105 specials),
    every third with an eos and a sentinel inside."""
    docs = []
    for i in range(n):
        length = int(torch.randint(8, 90, (), generator=generator))
        doc = (torch.randperm(300, generator=generator)[:length] + 105).tolist()
        if specials and i % 3 == 0 and length > 4:
            doc[length // 2] = EOS  # packed documents are separated by eos
            doc[length // 4] = SENTINEL
        docs.append(doc)
    return docs


def align(source, target):
    """Gaps of ``target`` that each mask of ``source`` stands for (lengths; 0 = an insertion).

    ``target`` holds distinct tokens apart from specials, which are compared in order.
    Fails if a kept token moved, a deletion has no mask, or two masks touch.
    """
    gaps, j, after_mask = [], 0, False
    for tok in source:
        if tok == MASK:
            assert not after_mask, "two masks in a row"
            after_mask = True
            continue
        k = target.index(tok, j)
        if after_mask:
            gaps.append(k - j)
        else:
            assert k == j, f"tokens {target[j:k]} vanished without a mask"
        j, after_mask = k + 1, False
    if after_mask:
        gaps.append(len(target) - j)
    else:
        assert j == len(target), "the tail vanished without a mask"
    return gaps


def strip(row, pad):
    return [t for t in row.tolist() if t != pad]


def test_infilling_invariants_over_many_documents(tok):
    assert (tok.special_id("mask"), tok.special_id("sentinel_0"), len(tok.special_ids)) == (MASK, SENTINEL, 105)
    g = torch.Generator().manual_seed(0)
    docs = unique_docs(400, g)
    obj = um.build_objective("text_infilling")  # every id from the tokenizer's roles
    batch = obj.prepare([{"input_ids": d} for d in docs], tokenizer=tok, generator=torch.Generator().manual_seed(1))
    masked = eligible = spans = inserts = 0
    nonzero = []
    for i, doc in enumerate(docs):
        source = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        labels = strip(batch["labels"][i], -100)
        assert labels == [BOS, *doc, EOS]  # the target is the original document, framed
        assert source[0] == BOS and source[-1] == EOS
        gaps = align(source[1:-1], doc)
        n = sum(t not in (EOS, SENTINEL) for t in doc)
        assert sum(gaps) == math.ceil(0.3 * n)  # the whole budget, exactly
        assert source.count(MASK) == len(gaps)  # one mask per span or insertion
        assert len(source) == len(labels) - sum(gaps) + len(gaps)
        assert Counter(t for t in source if t in (EOS, SENTINEL)) == Counter(t for t in labels if t in (EOS, SENTINEL))
        masked, eligible = masked + sum(gaps), eligible + n
        spans, inserts = spans + len(gaps), inserts + gaps.count(0)
        nonzero += [x for x in gaps if x]
    assert 0.3 <= masked / eligible < 0.32
    assert inserts > 0 and inserts / spans < 0.15  # Poisson(3) gives length 0 about 5% of the time
    assert 2.3 < sum(nonzero) / len(nonzero) < 3.6  # zero-truncated Poisson(3) has mean 3.16; last spans are cut
    pad_rows = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad_rows] == PAD).all() and pad_rows.any()


def test_sources_are_shorter_and_padded_labels_ignored():
    obj = um.build_objective("text_infilling", **IDS)
    docs = [list(range(10, 70)), list(range(100, 120))]
    batch = obj.prepare([{"input_ids": d} for d in docs], generator=torch.Generator().manual_seed(0))
    assert batch["labels"].shape == (2, 62) and batch["input_ids"].shape[1] < 62
    assert (batch["labels"][1, 22:] == -100).all() and (batch["labels"][1, :22] != -100).all()
    assert batch["attention_mask"].sum(1).tolist() == [
        len(strip(batch["input_ids"][0], PAD)),
        len(strip(batch["input_ids"][1], PAD)),
    ]


def test_same_seed_same_noise_other_seed_other_noise():
    obj = um.build_objective("text_infilling", **IDS, permute_sentences=0.5, full_stop_ids=tuple(range(105, 135)))
    docs = [{"input_ids": d} for d in unique_docs(8, torch.Generator().manual_seed(0), specials=False)]
    a = obj.prepare(docs, generator=torch.Generator().manual_seed(7))
    b = obj.prepare(docs, generator=torch.Generator().manual_seed(7))
    c = obj.prepare(docs, generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["input_ids"].tolist() != c["input_ids"].tolist()
    assert torch.equal(a["labels"], c["labels"])  # the targets do not depend on the noise


def sentences(tokens, stop):
    out, cur = [], []
    for t in tokens:
        cur.append(t)
        if t == stop:
            out.append(tuple(cur))
            cur = []
    if cur:
        out.append(tuple(cur))
    return out


def test_sentence_permutation_keeps_the_sentences():
    STOP = 9
    g = torch.Generator().manual_seed(2)
    docs = []
    for _ in range(30):
        doc = (torch.randperm(200, generator=g)[:40] + 10).tolist()
        for pos in sorted(torch.randperm(38, generator=g)[:5].tolist()):
            doc[pos + 1] = STOP
        docs.append(doc)
    obj = um.build_objective("text_infilling", **IDS, mask_ratio=0.0, permute_sentences=1.0, full_stop_ids=(STOP,))
    batch = obj.prepare([{"input_ids": d} for d in docs], generator=torch.Generator().manual_seed(0))
    moved = 0
    for i, doc in enumerate(docs):
        source = strip(batch["input_ids"][i], PAD)[1:-1]
        assert Counter(sentences(source, STOP)) == Counter(sentences(doc, STOP))
        assert strip(batch["labels"][i], -100)[1:-1] == doc  # labels keep the original order
        moved += source != doc
    assert moved >= 25


def test_sentence_permutation_finds_full_stops_in_the_tokenizer(tok):
    text = "The cat sat on the mat. The dog lay by the door. A bird sang in the tree. Rain fell on the town."
    ids = tok.encode(text)
    stop = tok.token_to_id(".")
    assert stop is not None and ids.count(stop) == 4
    obj = um.build_objective("text_infilling", mask_ratio=0.0, permute_sentences=1.0)
    seen = set()
    for seed in range(6):
        batch = obj.prepare([{"input_ids": ids}], tokenizer=tok, generator=torch.Generator().manual_seed(seed))
        source = batch["input_ids"][0].tolist()[1:-1]
        assert Counter(sentences(source, stop)) == Counter(sentences(ids, stop))
        seen.add(tuple(source))
    assert len(seen) > 1


def test_random_replacement_and_mask_from_tokenizer(tok):
    obj = um.build_objective("text_infilling", random_ratio=1.0)
    ids = tok.encode(" ".join(TEXT))
    batch = obj.prepare([{"input_ids": ids}], tokenizer=tok, generator=torch.Generator().manual_seed(0))
    source = batch["input_ids"][0].tolist()
    assert source[0] == tok.special_id("bos") and source[-1] == tok.special_id("eos")
    assert tok.special_id("mask") not in source and len(source) < len(ids) + 2
    assert not set(source[1:-1]) & tok.special_ids
    plain = um.build_objective("text_infilling").prepare(
        [{"input_ids": ids}], tokenizer=tok, generator=torch.Generator().manual_seed(0)
    )
    assert tok.special_id("mask") in plain["input_ids"][0].tolist()


def test_missing_tokens_are_clear_errors():
    with pytest.raises(ConfigError, match="mask"):
        um.build_objective("text_infilling").prepare([{"input_ids": [10, 11, 12]}])
    with pytest.raises(ConfigError, match="random_ratio"):
        um.build_objective("text_infilling", **IDS, random_ratio=0.5).prepare([{"input_ids": [10, 11]}])
    with pytest.raises(ConfigError, match="full_stop"):
        um.build_objective("text_infilling", **IDS, permute_sentences=1.0).prepare([{"input_ids": [10, 11]}])


def test_framing_is_not_doubled_and_max_length_holds():
    obj = um.build_objective("text_infilling", **IDS, max_length=20)
    batch = obj.prepare([{"input_ids": [BOS, *range(10, 60), EOS]}], generator=torch.Generator().manual_seed(0))
    labels = strip(batch["labels"][0], -100)
    assert labels == [BOS, *range(10, 28), EOS]
    source = strip(batch["input_ids"][0], PAD)
    assert source[0] == BOS and source[-1] == EOS and source.count(BOS) == 1 and source.count(EOS) == 1


def test_span_helpers():
    g = torch.Generator().manual_seed(0)
    for budget in (1, 5, 17, 60):
        lengths = poisson_span_lengths(budget, 3.0, g)
        assert sum(lengths) == budget and lengths[-1] > 0
    # spans never leave their segment, never overlap, never touch
    segments = [(0, 10), (12, 3), (16, 30)]
    for _ in range(50):
        spans = place_spans(segments, [4, 0, 3, 2, 0, 5, 1], g)
        assert len(spans) == 7 and sum(n for _, n in spans) == 15
        for (s1, n1), (s2, _) in itertools.pairwise(spans):
            assert s1 + n1 < s2
        for s, n in spans:
            assert any(a <= s and s + n <= a + m for a, m in segments)
    # an overfull segment gets what fits, with separators
    assert sum(n for _, n in place_spans([(0, 5)], [5, 5], g)) == 5
    noised = infill([10, 11, 12], mask_id=MASK, specials=frozenset({EOS}), mask_ratio=1.0, generator=g)
    assert noised.source == [MASK] and noised.spans == [(0, 3)]


# ------------------------------------------------------------ training
def test_text_infilling_training_reduces_loss(tok):
    torch.manual_seed(0)
    model = um.build_model("bart", **{**TINY, "vocab_size": tok.vocab_size}, tokenizer=tok)
    obj = model.objective
    docs = [tok.encode(t) for t in TEXT]
    held_out = obj.prepare([{"input_ids": d} for d in docs], tokenizer=tok, generator=torch.Generator().manual_seed(99))

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return obj(model, held_out).loss.item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        model.train()
        batch = obj.prepare([{"input_ids": d} for d in docs], tokenizer=tok, generator=g)
        out = obj(model, batch)
        assert out.n_predictions == sum(len(d) + 2 for d in docs)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_text_infilling_trains_other_encoder_decoders(tok):
    reg = um.get_registry()
    specs = [
        {
            "name": "encoder-decoder",
            "encoder": {"name": "bart", **TINY},
            "decoder": {"name": "gpt", "n_layers": 1, "d_model": 32, "n_heads": 4, "max_positions": 64},
            "vocab_size": tok.vocab_size,
            "pad_token_id": 1,
            "decoder_start_token_id": 2,
        },
    ]
    if reg.has("model", "t5"):
        specs.append({"name": "t5", **reg.get("model", "t5").tiny, "vocab_size": tok.vocab_size})
    docs = [{"input_ids": tok.encode(t)} for t in TEXT]
    for spec in specs:
        torch.manual_seed(0)
        model = um.build_model(spec, objective="text_infilling", tokenizer=tok)
        batch = model.objective.prepare(docs, tokenizer=tok, generator=torch.Generator().manual_seed(0))
        out = model.objective(model, batch)
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.loss.item() > 0
        assert model.encoder.get_input_embeddings().weight.grad is not None
