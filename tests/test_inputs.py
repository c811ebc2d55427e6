"""What a model call receives: wrong shapes, dtypes, ranges and batch sizes are InputErrors naming the argument."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

import unimodel as um
from unimodel.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only adds waiting

GPT = dict(vocab_size=100, max_positions=32, d_model=32, n_layers=1, n_heads=4)
BERT = dict(vocab_size=100, max_positions=32, d_model=32, n_layers=1, n_heads=4)
T5 = dict(vocab_size=100, d_model=32, head_dim=8, d_ff=64, n_layers=1, n_heads=4)


@pytest.fixture(scope="module")
def models() -> dict[str, um.Model]:
    torch.manual_seed(0)
    return {
        "gpt": um.build_model("gpt", **GPT).eval(),
        "bert": um.build_model("bert", **BERT).eval(),
        "t5": um.build_model("t5", **T5).eval(),
    }


def ids(*shape: int) -> torch.Tensor:
    return torch.randint(0, 100, shape)


def ones(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.ones(shape, dtype=dtype)


# (model, call arguments, what the message must say); every case was a raw torch error or silently ran before
BAD_CALLS = [
    # attention masks
    ("gpt", dict(input_ids=ids(2, 5), attention_mask=ones(2, 7)), r"attention_mask must have shape \(2, 5\)"),
    ("gpt", dict(input_ids=ids(2, 5), attention_mask=ones(2, 1, 5)), r"attention_mask must have shape \(2, 5\)"),
    ("gpt", dict(input_ids=ids(2, 5), attention_mask=ones(2, 5) * 2), r"attention_mask must hold 1 .* got 2"),
    ("gpt", dict(input_ids=ids(2, 5), attention_mask=ones(2, 5, dtype=torch.float) / 2), "attention_mask must hold"),
    ("gpt", dict(input_ids=ids(2, 5), attention_mask="all"), "attention_mask must be a torch tensor"),
    ("bert", dict(input_ids=ids(2, 5), attention_mask=ones(3, 5)), r"attention_mask must have shape \(2, 5\)"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4), attention_mask=ones(2, 9)), "attention_mask"),
    (
        "t5",
        dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4), decoder_attention_mask=ones(2, 9)),
        r"decoder_attention_mask must have shape \(2, 4\) \(batch, length\) like decoder_input_ids",
    ),
    # labels
    ("gpt", dict(input_ids=ids(2, 5), labels=ids(2, 7)), r"labels must have shape \(2, 5\)"),
    ("gpt", dict(input_ids=ids(2, 5), labels=ids(3, 5)), r"labels must have one row per input \(batch 2\)"),
    ("gpt", dict(input_ids=ids(2, 5), labels=ids(2, 5) + 100), "labels contain 1[0-9][0-9], which is neither"),
    ("gpt", dict(input_ids=ids(2, 5), labels=-ids(2, 5) - 1), "labels contain -[0-9]+, which is neither"),
    ("gpt", dict(input_ids=ids(2, 5), labels=ids(2, 5).float()), "labels must hold integer token ids"),
    ("gpt", dict(input_ids=ids(2, 5), labels=[1, 2]), "labels must be a torch tensor"),
    ("t5", dict(input_ids=ids(2, 5), labels=ids(3, 4)), r"labels must have one row per input \(batch 2\)"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4), labels=ids(2, 6)), r"labels must have shape \(2, 4"),
    # position ids
    ("gpt", dict(input_ids=ids(2, 5), position_ids=torch.full((2, 5), 5000)), r"position_ids contains 5000.*0\.\.31"),
    ("gpt", dict(input_ids=ids(2, 5), position_ids=-torch.ones(2, 5, dtype=torch.long)), "position_ids contains -1"),
    ("gpt", dict(input_ids=ids(2, 5), position_ids=torch.arange(9)), r"position_ids must have shape \(2, 5\)"),
    ("gpt", dict(input_ids=ids(2, 5), position_ids=torch.arange(5.0)), "position_ids must hold integer positions"),
    ("bert", dict(input_ids=ids(2, 5), position_ids=torch.arange(40, 45)), r"position_ids contains 4[0-4]"),
    # token type ids
    ("gpt", dict(input_ids=ids(2, 5), token_type_ids=ones(2, 5)), "model 'gpt' has no token types"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4), token_type_ids=ones(2, 5)), "no token types"),
    ("bert", dict(input_ids=ids(2, 5), token_type_ids=ones(2, 5).float()), "token_type_ids must hold integer"),
    ("bert", dict(input_ids=ids(2, 5), token_type_ids=ones(2, 3)), r"token_type_ids must have shape \(2, 5\)"),
    # decoder inputs and batch sizes
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(3, 4)), "decoder_input_ids has batch size 3 but the enc"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4) + 100), "decoder_input_ids contains token id 1"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(8)), r"decoder_input_ids must have shape \(batch, length"),
    ("t5", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4).float()), "decoder_input_ids must hold integer"),
    ("bert", dict(input_ids=ids(2, 5), decoder_input_ids=ids(2, 4)), "model 'bert' has no decoder"),
    ("gpt", dict(input_ids=ids(2, 5), past_key_values=None, attention_mask=ones(2, 5, 1)), "attention_mask must have"),
]


@pytest.mark.parametrize(("name", "call", "message"), BAD_CALLS, ids=[f"{n}-{m[:30]}" for n, _, m in BAD_CALLS])
def test_bad_inputs_are_input_errors_naming_the_argument(models, name, call, message):
    with pytest.raises(InputError, match=message):
        models[name](**call)


def test_encoder_outputs_must_match_the_decoder_batch(models):
    t5 = models["t5"]
    with torch.no_grad():
        enc = t5.encoder(ids(2, 5))
    with pytest.raises(InputError, match="decoder_input_ids has batch size 3 but the encoder input has 2"):
        t5(encoder_outputs=enc, decoder_input_ids=ids(3, 4))
    with pytest.raises(InputError, match=r"attention_mask must have shape \(2, 5\)"):
        t5(encoder_outputs=enc, decoder_input_ids=ids(2, 4), attention_mask=ones(2, 6))
    with pytest.raises(InputError, match="encoder_outputs must be the encoder's output"):
        t5(encoder_outputs=torch.zeros(2, 5, 32), decoder_input_ids=ids(2, 4))


def test_a_cached_call_checks_the_mask_over_cached_and_new_positions(models):
    gpt = models["gpt"]
    x = ids(2, 5)
    with torch.no_grad():
        out = gpt(x, use_cache=True)
        with pytest.raises(InputError, match=r"attention_mask must have shape \(2, 6\) \(batch, 5 cached \+ 1 new"):
            gpt(ids(2, 1), attention_mask=ones(2, 1), past_key_values=out.past_key_values)
        with pytest.raises(InputError, match="past_key_values holds a batch of 2 rows but the input has 3"):
            gpt(ids(3, 1), past_key_values=out.past_key_values)
        gpt(ids(2, 1), attention_mask=ones(2, 6), past_key_values=out.past_key_values)  # 5 cached + 1 new


def test_good_inputs_of_every_accepted_form_run(models):
    gpt, bert = models["gpt"], models["bert"]
    x = ids(2, 5)
    with torch.no_grad():
        base = gpt(x).logits
        for mask in (ones(2, 5), ones(2, 5, dtype=torch.bool), ones(2, 5, dtype=torch.float)):
            assert torch.allclose(gpt(x, attention_mask=mask).logits, base, atol=1e-6)
        for pos in (torch.arange(5), torch.arange(5)[None], torch.arange(5).expand(2, 5)):
            assert torch.allclose(gpt(x, position_ids=pos).logits, base, atol=1e-6)
        bert(x, token_type_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=ones(2, 5))
        paired = um.build_model(
            {"name": "encoder-decoder", "encoder": {"name": "bert", **BERT}, "decoder": {"name": "gpt", **GPT}}
        )
        paired(x, token_type_ids=torch.zeros(2, 5, dtype=torch.long), decoder_input_ids=ids(2, 3))  # BERT's types


@pytest.mark.parametrize(("name", "fused"), [("gpt", False), ("gpt", True), ("t5", False), ("t5", True)])
def test_labels_that_are_all_ignored_give_a_zero_loss_and_a_warning(models, name, fused):
    model = models[name].train()
    labels = torch.full((2, 4), -100)
    call = dict(input_ids=ids(2, 4), labels=labels, return_logits=not fused)
    with pytest.warns(UserWarning, match="labels hold no target: every position is -100"):
        out = model(**call)
    model.eval()
    assert out.loss.item() == 0.0 and not torch.signbit(out.loss)
    out.loss.backward()  # part of the graph: training steps on such a batch do nothing instead of failing
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool((g == 0).all()) for g in grads)
    model.zero_grad(set_to_none=True)


def test_a_causal_target_only_at_the_first_position_counts_as_none(models):
    labels = torch.full((1, 4), -100)
    labels[0, 0] = 5  # position 0 is never predicted by a causal LM
    with pytest.warns(UserWarning, match="labels hold no target"):
        assert models["gpt"](ids(1, 4), labels=labels).loss.item() == 0.0
    labels[0, 2] = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models["gpt"](ids(1, 4), labels=labels).loss.item() > 0


class CountSyncs(TorchFunctionMode):
    """Counts the calls that copy a tensor's values to the host."""

    SYNCS = frozenset({"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero"})

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_every_range_of_a_call_is_checked_with_one_host_sync(models):
    from unimodel.inputs import check_call

    t5 = models["t5"]
    labels = ids(2, 4)
    with CountSyncs() as syncs:
        targets = check_call(
            t5,
            input_ids=ids(2, 5),
            attention_mask=ones(2, 5),
            token_type_ids=None,
            position_ids=None,
            decoder_input_ids=ids(2, 4),
            decoder_attention_mask=ones(2, 4, dtype=torch.float),
            decoder_position_ids=torch.arange(4),
            encoder_outputs=None,
            past_key_values=None,
            labels=labels,
            logits_at=None,
            lm_labels=True,
            shifted=False,
        )
    assert syncs.count == 1 and targets == 8
