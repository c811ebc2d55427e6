"""Generation: token-for-token parity with transformers' ``generate``, and unimodel's own guarantees.

The reference is a tiny random ``GPT2LMHeadModel`` saved with ``save_pretrained``
and imported with ``um.from_hf``. Its weights are drawn with a large
``initializer_range`` so next-token distributions are peaked and continuations
vary, as a trained model's do (the default 0.02 gives near-uniform logits, one
token repeated forever, and near-ties that float rounding may break either way),
and every tensor is randomised (LayerNorms and biases too). Every test runs on
one intra-op thread, so reductions, and with them the tokens, are the same on
every machine. Encoder-decoder generation is checked against BART and T5, and
against uncached full forwards of a small encoder-decoder assembled from the
GPT decoder with cross-attention.
"""

from __future__ import annotations

import itertools
import sys
import types

import pytest
import torch
import transformers
from helpers import assert_peaked, randomize_, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import unimodel as um
from unimodel.errors import ComponentNotFoundError, ConfigError, InputError
from unimodel.generation import GenerationInputs, IncrementalDecoder, generate
from unimodel.interfaces import Backbone, Encoder, EncoderOutput
from unimodel.nn import Block, positions_from_mask
from unimodel.registry import Component, Registry

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

VOCAB = 99
BOS, EOS = 1, 2
PAD = 5  # non-zero: HF's beam search treats a pad id of 0 as unset and fills with EOS instead
HYP = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF GPT2LMHeadModel, the same weights imported with um.from_hf)."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=BOS,
        eos_token_id=EOS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.4,
    )
    hf = randomize_(transformers.GPT2LMHeadModel(config).eval())
    with torch.no_grad():
        assert_peaked(hf(torch.tensor(ROWS[2:])).logits)
    folder = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(folder)
    return hf, um.from_hf(folder)


def hf_generate(hf, ids, **kw):
    kw.setdefault("pad_token_id", PAD)
    kw.setdefault("do_sample", False)
    # Without a mask HF infers one from ids equal to the pad id, which would hide prompt tokens that happen to be 5.
    kw.setdefault("attention_mask", torch.ones_like(ids))
    with torch.no_grad():
        return hf.generate(ids, **kw)


def left_pad(rows: list[list[int]], pad: int = PAD, *, right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, longest), left-padded (right-padded with ``right``)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if right else slice(width - len(r), width)
        ids[i, span] = torch.tensor(r)
        mask[i, span] = 1
    return ids, mask


ROWS = [[17, 40, 3, 88, 61], [9, 70], [33, 12, 54, 8, 21, 95, 44, 6]]
prompt_tokens = st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=12)


def frequent_tokens(model, ids, mask, n=3):
    """Tokens greedy decoding produces early, to use as EOS so that hypotheses end mid-run."""
    plain = generate(model, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    new = plain[:, ids.shape[1] :]
    picks = [int(new[0, 2]), int(new[1 % len(new), 4]), int(new[-1, 6])]
    return sorted(set(picks))[:n]


# ------------------------------------------------------------------ greedy
@HYP
@given(prompt=prompt_tokens, new=st.integers(1, 24))
def test_greedy_matches_hf_single_row(pair, prompt, new):
    hf, model = pair
    ids = torch.tensor([prompt])
    assert torch.equal(model.generate(ids, max_new_tokens=new), hf_generate(hf, ids, max_new_tokens=new))


@HYP
@given(rows=st.lists(prompt_tokens, min_size=2, max_size=4), new=st.integers(1, 16))
def test_greedy_left_padded_batch_matches_hf_and_each_row_alone(pair, rows, new):
    hf, model = pair
    ids, mask = left_pad(rows)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new, pad_token_id=PAD)
    assert torch.equal(out, hf_generate(hf, ids, attention_mask=mask, max_new_tokens=new))
    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), max_new_tokens=new, pad_token_id=PAD)[0, len(row) :]
        got = out[i, ids.shape[1] :]
        assert torch.equal(got[: len(alone)], alone)
        assert bool((got[len(alone) :] == PAD).all())  # the row ended (EOS) before the batch did


# ------------------------------------------------------------------ beam search
BEAM_CASES = [
    # num_beams, length_penalty, early_stopping, num_return_sequences
    (3, 1.0, False, 1),
    (4, 1.0, True, 4),
    (4, 2.0, "never", 2),
    (3, -0.5, False, 3),
    (4, 0.0, "never", 1),
    (4, 0.7, True, 2),
]


@pytest.mark.parametrize(("num_beams", "length_penalty", "early_stopping", "num_return"), BEAM_CASES)
def test_beam_search_matches_hf(pair, num_beams, length_penalty, early_stopping, num_return):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    kw = dict(
        attention_mask=mask,
        max_new_tokens=16,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return,
        eos_token_id=frequent_tokens(model, ids, mask),
        pad_token_id=PAD,
    )
    out = model.generate(ids, **kw)
    assert out.shape[0] == len(ROWS) * num_return
    assert torch.equal(out, hf_generate(hf, ids, **kw))


def test_beam_search_options_change_the_result(pair):
    """The early-stopping and length-penalty cases above are not all the same search in disguise."""
    _, model = pair
    ids, mask = left_pad(ROWS)
    eos = frequent_tokens(model, ids, mask)
    outs = {
        (lp, es): model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=16,
            num_beams=4,
            length_penalty=lp,
            early_stopping=es,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
        for lp in (-0.5, 2.0)
        for es in (True, False, "never")
    }
    distinct = {tuple(o.flatten().tolist()) for o in outs.values()}
    assert len(distinct) >= 3
    ended_early = [o for o in outs.values() if bool(torch.isin(o[:, ids.shape[1] : -1], torch.tensor(eos)).any())]
    assert ended_early  # some hypotheses finished on EOS before max_length


@settings(HYP, max_examples=6)
@given(
    rows=st.lists(prompt_tokens, min_size=1, max_size=3),
    beams=st.integers(2, 4),
    lp=st.sampled_from([0.0, 1.0, 1.5]),
)
def test_beam_search_matches_hf_on_random_prompts(pair, rows, beams, lp):
    hf, model = pair
    ids, mask = left_pad(rows)
    kw = dict(attention_mask=mask, max_new_tokens=10, num_beams=beams, length_penalty=lp, eos_token_id=[EOS, 93, 59])
    assert torch.equal(model.generate(ids, pad_token_id=PAD, **kw), hf_generate(hf, ids, **kw))


def test_beam_returns_sequences_best_first(pair):
    """With length_penalty=0 and no EOS every hypothesis scores its summed log-probability."""
    _, model = pair
    ids = torch.tensor([[17, 40, 3, 88]])
    out = model.generate(
        ids,
        max_new_tokens=8,
        num_beams=4,
        num_return_sequences=4,
        length_penalty=0.0,
        early_stopping="never",
        eos_token_id=[],
    )
    with torch.no_grad():
        logp = model(input_ids=out).logits.log_softmax(-1)[:, 3:-1]
    scores = logp.gather(-1, out[:, 4:, None]).squeeze(-1).sum(-1)
    assert len({tuple(r) for r in out.tolist()}) == 4
    assert torch.all(scores[:-1] >= scores[1:] - 1e-4)
    greedy = model.generate(ids, max_new_tokens=8, eos_token_id=[])
    with torch.no_grad():
        g = model(input_ids=greedy).logits.log_softmax(-1)[:, 3:-1].gather(-1, greedy[:, 4:, None]).sum()
    assert scores[0] >= g - 1e-4


# ------------------------------------------------------------------ processors
@pytest.mark.parametrize(
    "options",
    [
        {"repetition_penalty": 1.8},
        {"repetition_penalty": 0.6},
        {"no_repeat_ngram_size": 1},
        {"no_repeat_ngram_size": 2},
        {"no_repeat_ngram_size": 3, "repetition_penalty": 1.3},
    ],
)
def test_processors_match_hf_greedy(pair, options):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    kw = dict(attention_mask=mask, max_new_tokens=24, **options)
    out = model.generate(ids, pad_token_id=PAD, **kw)
    assert torch.equal(out, hf_generate(hf, ids, **kw))
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=24, pad_token_id=PAD)
    assert not torch.equal(out, plain)  # the processor did something here


def test_no_repeat_ngram_leaves_no_repeated_ngram(pair):
    _, model = pair
    ids = torch.tensor([[17, 40, 3, 88, 61]])
    out = model.generate(ids, max_new_tokens=40, no_repeat_ngram_size=2, eos_token_id=[])[0].tolist()
    bigrams = list(itertools.pairwise(out))
    assert len(bigrams) == len(set(bigrams))


def test_min_new_tokens_suppresses_eos(pair):
    hf, model = pair
    ids = torch.tensor([[17, 40, 3, 88, 61]])
    first = int(model.generate(ids, max_new_tokens=1, eos_token_id=[])[0, -1])
    stopped = model.generate(ids, max_new_tokens=10, eos_token_id=first)
    assert stopped.shape[1] == 6  # EOS at once without the constraint
    for kw in ({"min_new_tokens": 6}, {"min_length": 11}):
        out = model.generate(ids, max_new_tokens=10, eos_token_id=first, **kw)
        assert first not in out[0, 5:11].tolist()
        assert torch.equal(out, hf_generate(hf, ids, max_new_tokens=10, eos_token_id=first, **kw))


def test_eos_stops_and_later_positions_are_pad(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=[])
    p = ids.shape[1]
    eos = int(plain[0, p + 2])  # row 0 ends at its third new token at the latest
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out, hf_generate(hf, ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos))
    new = out[:, p:]
    ends = []
    for row in new.tolist():
        end = row.index(eos) + 1 if eos in row else len(row)
        assert all(t == PAD for t in row[end:])
        ends.append(end)
    assert ends[0] <= 3
    assert new.shape[1] == max(ends)  # generation stops once every row has ended


# ------------------------------------------------------------------ lengths
def test_max_length_and_max_new_tokens(pair):
    hf, model = pair
    ids = torch.tensor([[17, 40, 3, 88, 61]])
    no_eos = {"eos_token_id": []}
    by_new = model.generate(ids, max_new_tokens=7, **no_eos)
    assert by_new.shape == (1, 12)
    assert torch.equal(model.generate(ids, max_length=12, **no_eos), by_new)
    assert model.generate(ids, max_new_tokens=7, max_length=30, **no_eos).shape == (1, 12)  # max_new_tokens wins
    assert model.generate(ids, **no_eos).shape == (1, 25)  # HF's default: 20 new tokens
    long_prompt = torch.randint(3, VOCAB, (1, 55), generator=torch.Generator().manual_seed(1))
    assert model.generate(long_prompt, **no_eos).shape == (1, 64)  # the default stops at the position table
    assert torch.equal(model.generate(long_prompt), hf_generate(hf, long_prompt))
    assert torch.equal(model.generate(ids, max_length=12), hf_generate(hf, ids, max_length=12))
    assert torch.equal(model.generate(ids, max_new_tokens=0), ids)


# ------------------------------------------------------------------ sampling
def test_sampling_is_reproducible_under_a_seed(pair):
    _, model = pair
    ids, mask = left_pad(ROWS)
    kw = dict(attention_mask=mask, do_sample=True, max_new_tokens=16, eos_token_id=[])
    state = torch.get_rng_state()
    a = model.generate(ids, seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # a seed leaves torch's global RNG alone
    assert torch.equal(model.generate(ids, seed=7, **kw), a)
    assert torch.equal(model.generate(ids, generator=torch.Generator().manual_seed(7), **kw), a)
    assert not torch.equal(model.generate(ids, seed=8, **kw), a)


def test_sampling_matches_hf_under_the_same_global_seed(pair):
    hf, model = pair
    ids, mask = left_pad(ROWS)
    kw = dict(
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=16,
        temperature=0.8,
        top_k=50,
        top_p=0.9,
        num_return_sequences=2,
    )
    torch.manual_seed(123)
    ours = model.generate(ids, pad_token_id=PAD, **kw)
    torch.manual_seed(123)
    theirs = hf_generate(hf, ids, **kw)
    assert ours.shape[0] == 2 * len(ROWS)
    assert torch.equal(ours, theirs)


def test_narrow_sampling_equals_greedy(pair):
    _, model = pair
    ids, mask = left_pad(ROWS)
    kw = dict(attention_mask=mask, max_new_tokens=16, pad_token_id=PAD)
    greedy = model.generate(ids, **kw)
    assert torch.equal(model.generate(ids, do_sample=True, top_k=1, seed=0, **kw), greedy)
    assert torch.equal(model.generate(ids, do_sample=True, top_p=1e-6, seed=0, **kw), greedy)


def test_temperature_sharpens_and_flattens(pair):
    _, model = pair
    ids = torch.tensor([[9, 70]])
    with torch.no_grad():
        top2 = model(input_ids=ids).logits[0, -1].topk(2).values
    gap = float(top2[0] - top2[1])
    greedy_first = int(model.generate(ids, max_new_tokens=1)[0, -1])

    def first_tokens(temperature: float) -> list[int]:
        out = model.generate(
            ids, do_sample=True, temperature=temperature, max_new_tokens=1, num_return_sequences=64, seed=0
        )
        return out[:, -1].tolist()

    assert set(first_tokens(gap / 25)) == {greedy_first}  # the runner-up keeps e^-25 of the argmax's mass
    assert len(set(first_tokens(1.0))) < len(set(first_tokens(5.0)))
    assert len(set(first_tokens(5.0))) >= 10


def test_output_can_be_trained_on(pair):
    """Generated ids are ordinary tensors: a forward on them can be backpropagated (as after HF generate)."""
    _, model = pair
    out = model.generate(torch.tensor([[17, 40, 3]]), max_new_tokens=5)
    assert not out.is_inference()
    loss = model(input_ids=out, labels=out).loss
    loss.backward()
    assert model.decoder.wte.weight.grad is not None
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ cache, streamer
def test_cached_steps_equal_full_forward_logits(pair):
    _, model = pair
    ids, mask = left_pad(ROWS)
    inputs = GenerationInputs(ids, mask, ids)
    steps = 10
    run = IncrementalDecoder(model, inputs, capacity=ids.shape[1] + steps)
    seq = ids
    cached = []
    with torch.no_grad():
        logits = run.prefill()
        for _ in range(steps):
            cached.append(logits)
            token = logits.argmax(-1)
            seq = torch.cat([seq, token[:, None]], dim=1)
            logits = run.step(token)
        full_mask = torch.cat([mask, torch.ones(len(ROWS), steps, dtype=torch.long)], dim=1)
        full = model(input_ids=seq, attention_mask=full_mask, position_ids=positions_from_mask(full_mask)).logits
    p = ids.shape[1]
    torch.testing.assert_close(torch.stack(cached, 1), full[:, p - 1 : -1], rtol=1e-5, atol=1e-4)
    for i, row in enumerate(ROWS):  # each row as if alone: no padding, default positions
        alone = model(input_ids=seq[i : i + 1, p - len(row) :]).logits
        torch.testing.assert_close(alone[0, len(row) - 1 : -1], torch.stack(cached, 1)[i], rtol=1e-5, atol=1e-4)


def test_streamer_receives_exactly_the_new_tokens(pair):
    _, model = pair
    ids, mask = left_pad(ROWS)
    received: list[torch.Tensor] = []
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=PAD, streamer=received.append)
    assert all(t.shape == (len(ROWS),) and t.dtype == torch.long for t in received)
    assert torch.equal(torch.stack(received, dim=1), out[:, ids.shape[1] :])


# ------------------------------------------------------------------ a strategy from a plugin
def test_strategy_resolved_through_the_registry(pair, monkeypatch):
    _, model = pair
    calls = {}

    def first_token_forever(model, inputs, settings):
        calls["extra"] = dict(settings.extra)
        calls["prompt_length"] = settings.prompt_length
        token = torch.full((inputs.batch_size, settings.max_new_tokens), settings.extra["token"])
        return torch.cat([inputs.decoder_input_ids, token], dim=1)

    module = types.ModuleType("um_test_decoding")
    module.first_token_forever = first_token_forever
    monkeypatch.setitem(sys.modules, "um_test_decoding", module)

    class Plugin:
        @um.hookimpl
        def unimodel_components(self):
            return [
                Component(
                    kind="decoding",
                    name="constant",
                    target="um_test_decoding:first_token_forever",
                    requires=("causal",),
                    options=("token",),
                ),
                Component(
                    kind="decoding",
                    name="needs_encoder",
                    target="um_test_decoding:first_token_forever",
                    requires=("encoder_decoder", "causal"),
                ),
            ]

    import unimodel.builtin

    registry = Registry(discover=False)
    registry.add_plugin(unimodel.builtin, "core")
    registry.add_plugin(Plugin(), "test-plugin")
    ids = torch.tensor([[17, 40, 3]])
    out = generate(model, ids, registry=registry, strategy="constant", token=7, max_new_tokens=4)
    assert out.tolist() == [[17, 40, 3, 7, 7, 7, 7]]
    assert calls == {"extra": {"token": 7}, "prompt_length": 3}
    with pytest.raises(InputError, match="'encoder_decoder'"):
        generate(model, ids, registry=registry, strategy="needs_encoder")
    with pytest.raises(InputError, match="unknown option 'token'"):
        generate(model, ids, registry=registry, token=7)  # only the strategy that declares it accepts it


@pytest.mark.parametrize("beams", [1, 3])
def test_forced_first_and_last_tokens_match_hf(pair, beams):
    hf, model = pair
    ids = torch.tensor([[17]])  # the first token is forced when the decoder sequence is one token long
    kw = dict(max_new_tokens=6, num_beams=beams, forced_bos_token_id=33, forced_eos_token_id=44)
    out = model.generate(ids, **kw)
    assert torch.equal(out, hf_generate(hf, ids, **kw))
    assert out[0, 1] == 33 and out[0, -1] == 44


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_beams": 0}, ConfigError, "num_beams must be >= 1"),
        ({"do_sample": True, "temperature": 0.0}, ConfigError, "temperature must be > 0"),
        ({"do_sample": True, "temperature": -1.0}, ConfigError, "temperature must be > 0"),
        ({"do_sample": True, "top_p": 0.0}, ConfigError, r"top_p must be in \(0, 1\]"),
        ({"do_sample": True, "top_p": 1.5}, ConfigError, r"top_p must be in \(0, 1\]"),
        ({"do_sample": True, "top_k": 0}, ConfigError, "top_k must be >= 1"),
        ({"max_new_tokens": -1}, InputError, "max_new_tokens must be >= 0"),
        ({"num_beams": 2, "num_return_sequences": 3}, ConfigError, "cannot exceed num_beams"),
        ({"num_return_sequences": 2}, ConfigError, "greedy decoding returns one sequence"),
        ({"max_new_tokens": 62}, InputError, "position table of 64; ask for at most 61 new tokens"),
        ({"max_length": 3}, InputError, "max_length .3. must exceed"),
        ({"strategy": "nope"}, ComponentNotFoundError, "no decoding named 'nope'"),
        ({"max_new_token": 5}, InputError, "unknown option 'max_new_token'. Did you mean 'max_new_tokens'"),
        ({"num_beams": 2, "streamer": print}, InputError, "streamer cannot be used with beam search"),
        ({"eos_token_id": 500}, InputError, "eos_token_id 500 is outside"),
        ({"seed": 1, "generator": torch.Generator()}, InputError, "either seed or generator"),
        ({"early_stopping": "sometimes"}, ConfigError, "early_stopping must be"),
        ({"attention_mask": torch.tensor([[1, 1, 0]])}, InputError, "pad on the left"),
        ({"attention_mask": torch.ones(1, 4)}, InputError, "shaped like input_ids"),
    ],
)
def test_bad_options_are_refused(pair, options, error, match):
    _, model = pair
    with pytest.raises(error, match=match):
        model.generate(torch.tensor([[17, 40, 3]]), **options)


def test_non_integer_input_ids_are_refused(pair):
    _, model = pair
    with pytest.raises(InputError, match="integer token ids"):
        model.generate(torch.tensor([[1.0, 2.0]]))


# ------------------------------------------------------------------ encoder-decoder
class TinyEncoder(Encoder):
    """Embeddings, one bidirectional block, a final norm: the least an encoder is."""

    config_class = um.Config

    def __init__(self, *, vocab_size: int, d_model: int, n_heads: int, max_positions: int) -> None:
        super().__init__()
        self.d_model, self.vocab_size, self.max_positions = d_model, vocab_size, max_positions
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_positions, d_model)
        self.block = Block(d_model=d_model, n_heads=n_heads, d_ff=2 * d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            nn.init.normal_(p, std=0.4)

    def forward(self, input_ids, *, attention_mask=None, token_type_ids=None, position_ids=None) -> EncoderOutput:
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        return EncoderOutput(last_hidden_state=self.norm(self.block(x, mask=mask)))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def build_lm_head(self) -> nn.Module:
        raise NotImplementedError("this test encoder is only ever paired with a decoder")


START = 0


@pytest.fixture(scope="module")
def seq2seq():
    from unimodel_gpt.model import GPTConfig, GPTDecoder

    torch.manual_seed(1)
    config = GPTConfig(**{**tiny_config("gpt"), "vocab_size": VOCAB, "max_positions": 32}, memory_dim=24, init_std=0.4)
    decoder = GPTDecoder(config)
    encoder = TinyEncoder(vocab_size=VOCAB, d_model=24, n_heads=4, max_positions=32)
    backbone = Backbone(
        encoder=encoder,
        decoder=decoder,
        lm_head=decoder.build_lm_head(),
        provides=frozenset({"encoder_decoder", "causal", "lm_head", "kv_cache"}),
        special_tokens={"bos": BOS, "eos": EOS, "pad": PAD, "decoder_start": START},
    )
    return um.Model(
        name="tiny-seq2seq",
        config=config,
        backbone=backbone,
        objective=um.build_objective("clm"),
        objective_name="clm",
        heads={},
    ).eval()


def uncached_greedy(model, ids, mask, new):
    """Greedy decoding by full forwards over the whole decoder sequence each step."""
    dec = torch.full((ids.shape[0], 1), START)
    with torch.no_grad():
        for _ in range(new):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return dec


def test_seq2seq_greedy_cached_equals_uncached(seq2seq):
    ids, mask = left_pad([[17, 40, 3, 88, 61, 9], [9, 70, 12], [33, 12, 54, 8]], right=True)
    out = seq2seq.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    assert out.shape == (3, 11)
    assert bool((out[:, 0] == START).all())
    assert torch.equal(out, uncached_greedy(seq2seq, ids, mask, 10))
    assert len(set(out[:, 1:].flatten().tolist())) > 3  # a real continuation, not one token repeated


def test_seq2seq_step_logits_equal_full_forward(seq2seq):
    ids, mask = left_pad([[17, 40, 3, 88, 61, 9], [9, 70, 12]], right=True)
    inputs = GenerationInputs(
        ids, mask, torch.full((2, 1), START), encoder_output=seq2seq.encoder(ids, attention_mask=mask)
    )
    run = IncrementalDecoder(seq2seq, inputs, capacity=9)
    with torch.no_grad():
        cached = [run.prefill()]
        dec = torch.full((2, 1), START)
        for _ in range(8):
            token = cached[-1].argmax(-1)
            dec = torch.cat([dec, token[:, None]], dim=1)
            cached.append(run.step(token))
        full = seq2seq(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(torch.stack(cached, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.5}])
def test_seq2seq_padded_batch_equals_rows_alone(seq2seq, options):
    rows = [[17, 40, 3, 88, 61, 9], [9, 70, 12], [33, 12, 54, 8]]
    ids, mask = left_pad(rows, right=True)  # encoder inputs are right-padded; their positions start at 0
    eos = [EOS, 93]
    out = seq2seq.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, **options)
    per_input = options.get("num_return_sequences", 1)
    assert out.shape[0] == len(rows) * per_input
    assert bool((out[:, 0] == START).all())
    for i, row in enumerate(rows):
        alone = seq2seq.generate(torch.tensor([row]), max_new_tokens=12, eos_token_id=eos, **options)
        got = out[i * per_input : (i + 1) * per_input]
        assert torch.equal(got[:, : alone.shape[1]], alone)
        assert bool((got[:, alone.shape[1] :] == PAD).all())


def test_seq2seq_beam_hypotheses_are_ranked(seq2seq):
    ids = torch.tensor([[17, 40, 3, 88, 61, 9]])
    out = seq2seq.generate(
        ids,
        max_new_tokens=8,
        num_beams=4,
        num_return_sequences=4,
        length_penalty=0.0,
        early_stopping="never",
        eos_token_id=[],
    )
    assert out.shape == (4, 9)
    with torch.no_grad():
        logp = seq2seq(input_ids=ids.expand(4, -1), decoder_input_ids=out).logits.log_softmax(-1)[:, :-1]
    scores = logp.gather(-1, out[:, 1:, None]).squeeze(-1).sum(-1)
    assert torch.all(scores[:-1] >= scores[1:] - 1e-4)
    greedy = seq2seq.generate(ids, max_new_tokens=8, eos_token_id=[])
    with torch.no_grad():
        g = seq2seq(input_ids=ids, decoder_input_ids=greedy).logits.log_softmax(-1)[:, :-1]
    assert scores[0] >= g.gather(-1, greedy[:, 1:, None]).sum() - 1e-4


def test_seq2seq_max_length_counts_decoder_tokens(seq2seq):
    ids = torch.tensor([[17, 40, 3, 88, 61, 9, 33, 12, 54, 8]])
    assert seq2seq.generate(ids, max_length=5, eos_token_id=[]).shape == (1, 5)
    with pytest.raises(InputError, match="position table of 32; ask for at most 31 new tokens"):
        seq2seq.generate(ids, max_new_tokens=32)


def _tiny_hf_seq2seq(family: str):
    torch.manual_seed(0)
    if family == "bart":
        config = transformers.BartConfig(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            max_position_embeddings=64,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            init_std=0.3,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
        )
        hf = transformers.BartForConditionalGeneration(config)
    else:
        config = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            initializer_factor=3.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        hf = transformers.T5ForConditionalGeneration(config)
    # plain HF semantics: no model-specific generation defaults (BART's ship forced EOS, n-gram bans, 4 beams)
    hf.generation_config = transformers.GenerationConfig(
        bos_token_id=getattr(config, "bos_token_id", None),
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    return randomize_(hf.eval())


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_seq2seq_matches_hf(family, tmp_path):
    hf = _tiny_hf_seq2seq(family)
    with torch.no_grad():
        assert_peaked(hf(input_ids=torch.tensor(ROWS[2:]), decoder_input_ids=torch.tensor([ROWS[0]])).logits)
    hf.save_pretrained(tmp_path)
    model = um.from_hf(tmp_path)
    ids, mask = left_pad([[17, 40, 3, 88, 61, 9, 33, 12, 54], [9, 70, 12, 44, 6, 21], [33, 12, 54, 8]], right=True)
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=14, eos_token_id=[])
    eos = sorted({int(plain[0, 4]), int(plain[1, 6]), int(plain[2, 8])})  # tokens the model does emit
    cases = [
        {},
        {"eos_token_id": eos},
        {"num_beams": 3, "eos_token_id": eos},
        {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.5, "early_stopping": True, "eos_token_id": eos},
        {"num_beams": 4, "length_penalty": 2.0, "early_stopping": "never", "eos_token_id": eos},
        {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
        {"min_new_tokens": 8, "eos_token_id": eos},
    ]
    for options in cases:
        kw = dict(attention_mask=mask, max_new_tokens=14, pad_token_id=PAD, **options)
        assert torch.equal(model.generate(ids, **kw), hf_generate(hf, ids, **kw)), options


def test_seq2seq_decoder_start_token(seq2seq):
    backbone = Backbone(
        encoder=seq2seq.encoder,
        decoder=seq2seq.decoder,
        lm_head=seq2seq.heads["lm"],
        provides=seq2seq.provides,
        special_tokens={"eos": EOS},
    )
    no_start = um.Model(
        name="no-start",
        config=seq2seq.config,
        backbone=backbone,
        objective=um.build_objective("clm"),
        objective_name="clm",
        heads={},
    )
    ids = torch.tensor([[17, 40, 3, 88]])
    with pytest.raises(InputError, match="no decoder start token.*pass decoder_start_token_id"):
        no_start.generate(ids, max_new_tokens=4)
    out = no_start.generate(ids, max_new_tokens=4, decoder_start_token_id=START, eos_token_id=[])
    assert torch.equal(out, seq2seq.generate(ids, max_new_tokens=4, eos_token_id=[]))
    assert seq2seq.generate(ids, max_new_tokens=4, decoder_start_token_id=7, eos_token_id=[])[0, 0] == 7


# ------------------------------------------------------------------ models that cannot generate
def test_encoder_only_model_cannot_generate(seq2seq):
    backbone = Backbone(encoder=seq2seq.encoder, decoder=None, lm_head=None, provides=frozenset({"encoder_only"}))
    model = um.Model(
        name="encoder-only",
        config=seq2seq.config,
        backbone=backbone,
        objective=um.build_objective("clm"),
        objective_name="clm",
        heads={},
    )
    with pytest.raises(InputError, match="no decoder"):
        model.generate(torch.tensor([[17, 40, 3]]))


def test_non_causal_decoder_cannot_generate_left_to_right(pair):
    _, model = pair
    backbone = Backbone(
        encoder=None,
        decoder=model.decoder,
        lm_head=model.heads["lm"],
        provides=frozenset({"decoder_only", "noncausal_decoder", "lm_head", "kv_cache"}),
    )
    noncausal = um.Model(
        name="noncausal",
        config=model.config,
        backbone=backbone,
        objective=um.build_objective("clm"),
        objective_name="clm",
        heads={},
    )
    with pytest.raises(InputError, match="needs capability 'causal'"):
        noncausal.generate(torch.tensor([[17, 40, 3]]))
