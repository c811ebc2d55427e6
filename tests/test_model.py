"""The build API and the errors a user meets calling a model."""

import pytest
import torch
from helpers import build_tiny, tiny_config

import unimodel as um
from unimodel.errors import ComponentNotFoundError, IncompatibleObjectiveError, InputError

# the registered tiny GPT with a short position table (the input-length errors below need one)
TINY = {**tiny_config("gpt"), "vocab_size": 50, "max_positions": 16, "n_layers": 1}


@pytest.fixture(scope="module")
def model():
    return um.build_model("gpt", **TINY).eval()


def test_presets_resolve_and_override():
    m = um.build_model("gpt2-tiny", vocab_size=50, max_positions=16, n_layers=3)
    assert (m.name, m.preset, m.config.n_layers, m.config.d_model) == ("gpt", "gpt2-tiny", 3, 128)


def test_objective_swap_is_one_argument():
    a = um.build_model("gpt", **TINY)
    b = um.build_model("gpt", objective="fim", **TINY)
    assert (a.objective_name, b.objective_name) == ("clm", "fim")
    assert a.state_dict().keys() == b.state_dict().keys()


def test_unknown_model_suggests():
    with pytest.raises(ComponentNotFoundError, match=r"no model named 'gtp2'.*Did you mean 'gpt2'.*Available models"):
        um.build_model("gtp2")


def test_unknown_objective_suggests():
    with pytest.raises(ComponentNotFoundError, match=r"no objective named 'clmm'.*'clm'"):
        um.build_model("gpt", objective="clmm", **TINY)


def test_features_objective_drops_lm_head():
    m = um.build_model("gpt", objective="features", **TINY)
    out = m(input_ids=torch.zeros(1, 4, dtype=torch.long))
    assert out.logits is None and out.last_hidden_state.shape == (1, 4, 32)


def test_incompatible_objective_lists_alternatives():
    from unimodel.registry import Component, Registry

    class EncoderTask:
        @um.hookimpl
        def unimodel_components(self):
            return [
                Component(
                    kind="objective", name="enc_task", target="unimodel.objectives:Features", requires=("encoder_only",)
                )
            ]

    reg = Registry()
    reg.add_plugin(EncoderTask(), "enc-task")
    with pytest.raises(
        IncompatibleObjectiveError, match=r"needs encoder_only.*Objectives that work with 'gpt': .*clm.*fim"
    ):
        um.build_model("gpt", objective="enc_task", registry=reg, **TINY)


def test_ids_out_of_range(model):
    with pytest.raises(InputError, match=r"token id 50, outside this model's vocabulary of 50"):
        model(input_ids=torch.tensor([[1, 50]]))
    with pytest.raises(InputError, match="token id -1"):
        model(input_ids=torch.tensor([[-1, 2]]))


def test_wrong_dtype_and_shape(model):
    with pytest.raises(InputError, match="integer token ids.*float32"):
        model(input_ids=torch.zeros(1, 3))
    with pytest.raises(InputError, match=r"shape \(batch, length\)"):
        model(input_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match="torch tensor"):
        model(input_ids=[[1, 2]])


def test_too_long_for_position_table(model):
    with pytest.raises(InputError, match=r"17 positions.*position table of 16"):
        model(input_ids=torch.zeros(1, 17, dtype=torch.long))


def test_labels_give_shifted_loss(model):
    ids = torch.randint(0, 50, (2, 8))
    out = model(input_ids=ids, labels=ids)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref)


def test_kv_cache_matches_full_forward(model):
    ids = torch.randint(0, 50, (2, 10))
    full = model(input_ids=ids).logits
    out = model(input_ids=ids[:, :6], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(6, 10):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_objective_call_returns_loss(model):
    obj = um.build_objective("clm")
    batch = obj.prepare([{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5, 6]}])
    out = obj(model, batch)
    assert out.loss.ndim == 0 and out.n_predictions == 3 + 1


def test_unknown_inputs_are_named(model):
    with pytest.raises(InputError, match=r"does not take input\(s\) 'perm_mask'"):
        model(input_ids=torch.zeros(1, 3, dtype=torch.long), perm_mask=torch.zeros(1, 3, 3))


def test_load_with_another_objective_starts_new_heads_fresh(tmp_path):
    mlm = build_tiny("bert", n_layers=1)
    mlm.save(tmp_path / "mlm")
    with pytest.warns(UserWarning, match="head.*classify.*new and randomly initialised"):
        clf = um.load(tmp_path / "mlm", objective={"name": "classify", "num_labels": 3})
    enc_keys = [k for k in mlm.state_dict() if k.startswith("encoder.")]
    assert all(torch.equal(clf.state_dict()[k], mlm.state_dict()[k]) for k in enc_keys)
    assert clf(input_ids=torch.tensor([[2, 3, 4]])).logits.shape == (1, 3)
    clf.save(tmp_path / "clf")
    with pytest.warns(UserWarning, match="lm"):  # and back: the prediction head's transform is new
        again = um.load(tmp_path / "clf", objective="mlm")
    assert again(input_ids=torch.tensor([[2, 3]])).logits.shape == (1, 2, 99)


def test_missing_weights_of_the_saved_objective_are_still_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    m = um.build_model("gpt", **TINY)
    m.save(tmp_path / "ck")
    t = load_file(str(tmp_path / "ck" / "model.safetensors"))
    del t["decoder.norm.bias"]
    save_file(t, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(um.UnimodelError, match="missing keys: decoder.norm.bias"):
        um.load(tmp_path / "ck")
