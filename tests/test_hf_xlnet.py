"""XLNet interop with transformers: tiny models with every tensor random, both directions, and generation."""

import json

import pytest
import torch
from safetensors.torch import load_file

import unimodel as um
from unimodel.errors import CheckpointError

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, d_model=32, n_layer=2, n_head=4, d_inner=37, dropout=0.0)
TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    """Pinned threads: generation parity compares argmaxes, and tiny models gain nothing from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_xlnet(cls_name="XLNetLMHeadModel", **overrides):
    """A transformers XLNet whose every tensor (LayerNorms, biases, mask_emb, r/seg terms) is random.

    Large attention weights make attention peaked, so outputs depend on the context and greedy
    continuations vary rather than repeat one token.
    """
    torch.manual_seed(1)
    model = getattr(transformers, cls_name)(transformers.XLNetConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.6 if "rel_attn" in name else 0.3)
            if name.endswith("layer_norm.weight"):
                p.add_(1.0)
    return model


def folder(tmp_path, cls_name="XLNetLMHeadModel", **overrides):
    hf = hf_xlnet(cls_name, **overrides)
    hf.save_pretrained(tmp_path)
    return hf, um.from_hf(tmp_path)


def max_err(a, b):
    return (a - b).abs().max().item()


def two_stream_inputs(batch=2, length=9, seed=1):
    """ids, token types, a random perm_mask and a one-hot target_mapping with a padding row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 99, (batch, length), generator=g)
    types = torch.randint(0, 3, (batch, length), generator=g)
    perm = (torch.rand(batch, length, length, generator=g) < 0.4).float()
    tm = torch.zeros(batch, 3, length)
    tm[0, 0, 1] = tm[0, 1, 4] = tm[0, 2, 8] = 1
    tm[1, 0, 0] = tm[1, 1, 5] = 1  # row 1 predicts two positions; its third row is padding
    return ids, types, perm, tm


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize(
    "overrides",
    [{}, {"attn_type": "uni"}, {"clamp_len": 3, "bi_data": True}, {"attn_type": "uni", "same_length": True}],
    ids=["bi", "uni", "clamp+bi_data", "uni+same_length"],
)
def test_logits_match_content_and_two_stream(tmp_path, overrides):
    hf, model = folder(tmp_path, **overrides)
    ids, types, perm, tm = two_stream_inputs()
    uni = overrides.get("attn_type") == "uni"
    cases = [{}, {"token_type_ids": types}, {"target_mapping": tm, "token_type_ids": types}]
    if not uni:  # transformers' uni attention cannot take a perm_mask (its in-place mask add fails)
        cases += [{"perm_mask": perm}, {"perm_mask": perm, "target_mapping": tm, "token_type_ids": types}]
    with torch.no_grad():
        for extra in cases:
            ref, ours = hf(ids, **extra).logits, model(input_ids=ids, **extra).logits
            assert ours.shape == ref.shape
            assert max_err(ours, ref) < TOL, list(extra)


def test_padding_matches_on_real_tokens(tmp_path):
    hf, model = folder(tmp_path)
    ids, types, perm, _ = two_stream_inputs()
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, perm_mask=perm, token_type_ids=types).logits
        ours = model(input_ids=ids, attention_mask=mask, perm_mask=perm, token_type_ids=types).logits
    assert max_err(ours[mask.bool()], ref[mask.bool()]) < TOL


def test_memory_across_segments_matches(tmp_path):
    hf, model = folder(tmp_path, mem_len=6, reuse_len=5)
    assert model.config.mem_len == 6 and model.config.reuse_len == 5
    ids, types, perm, tm = two_stream_inputs(length=9)
    with torch.no_grad():
        ref1, ours1 = hf(ids, token_type_ids=types, use_mems=True), model(input_ids=ids, token_type_ids=types)
        for a, b in zip(ref1.mems, ours1.extra["mems"]):  # transformers keeps mems sequence-first
            assert b.shape == (2, 5, 32) and max_err(b, a.transpose(0, 1)) < TOL
        nxt = torch.randint(0, 99, (2, 4))
        extra = {"perm_mask": perm[:, :4, :4], "target_mapping": tm[:, :2, :4] * 0 + torch.eye(4)[None, [0, 3]]}
        ref2 = hf(nxt, mems=ref1.mems, use_mems=True, **extra)
        ours2 = model(input_ids=nxt, mems=ours1.extra["mems"], **extra)
    assert max_err(ours2.logits, ref2.logits) < TOL
    for a, b in zip(ref2.mems, ours2.extra["mems"]):
        assert b.shape == (2, 6, 32) and max_err(b, a.transpose(0, 1)) < TOL


@pytest.mark.parametrize("overrides", [{}, {"bi_data": True}, {"attn_type": "uni"}], ids=["bi", "bi_data", "uni"])
def test_long_segments_with_memory_match(tmp_path, overrides):
    """Segments longer than one block of rows of the distance term, after a memory, both streams."""
    hf, model = folder(tmp_path, **overrides)
    g = torch.Generator().manual_seed(2)
    ids, types = torch.randint(0, 99, (2, 80), generator=g), torch.randint(0, 2, (2, 80), generator=g)
    extra = {"target_mapping": torch.eye(80)[torch.tensor([[3, 70, 79], [0, 50, 66]])], "token_type_ids": types}
    if overrides.get("attn_type") != "uni":
        extra["perm_mask"] = (torch.rand(2, 80, 80, generator=g) < 0.3).float()
    with torch.no_grad():
        ref_mems, our_mems = hf(ids, use_mems=True).mems, model(input_ids=ids).extra["mems"]
        for streams in ({"token_type_ids": types}, extra):
            ref = hf(ids, mems=ref_mems, **streams).logits
            ours = model(input_ids=ids, mems=our_mems, **streams).logits
            assert max_err(ours, ref) < TOL


def test_sequence_classification_matches(tmp_path):
    hf, model = folder(tmp_path, "XLNetForSequenceClassification", num_labels=3, summary_type="mean")
    assert model.objective_name == "classify" and model.config.summary_type == "mean"
    ids, types, _, _ = two_stream_inputs()
    with torch.no_grad():
        assert max_err(model(input_ids=ids, token_type_ids=types).logits, hf(ids, token_type_ids=types).logits) < TOL


def test_base_model_states_match(tmp_path):
    hf, model = folder(tmp_path, "XLNetModel")
    assert model.objective_name == "features"
    ids, types, perm, tm = two_stream_inputs()
    with torch.no_grad():
        for extra in ({}, {"perm_mask": perm, "target_mapping": tm, "token_type_ids": types}):
            ref, ours = hf(ids, **extra).last_hidden_state, model(input_ids=ids, **extra).last_hidden_state
            assert max_err(ours, ref) < TOL


@pytest.mark.parametrize("overrides", [{}, {"mem_len": 6}, {"attn_type": "uni", "reuse_len": 4}], ids=str)
def test_greedy_generation_tokens_match_transformers(tmp_path, overrides):
    hf, model = folder(tmp_path, **overrides)
    prompt = torch.tensor([[17, 40, 3, 88, 61, 23]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits[0]
    gap = logits.topk(2, dim=-1).values
    assert bool(((gap[:, 0] - gap[:, 1]) > 1e-3).all())  # no near-ties for argmax to split
    ref = hf.generate(prompt, max_new_tokens=16, do_sample=False)
    ours = model.generate(prompt, max_new_tokens=16)
    assert ours.tolist() == ref.tolist()
    assert len(set(ours[0, 6:].tolist())) > 3  # a real continuation, not one token repeated


# ------------------------------------------------------------------ export
@pytest.mark.parametrize(
    "cls_name,objective",
    [
        ("XLNetLMHeadModel", "plm"),
        ("XLNetModel", "features"),
        ("XLNetForSequenceClassification", {"name": "classify", "num_labels": 3}),
    ],
)
def test_export_loads_in_transformers_with_identical_tensors(tmp_path, cls_name, objective):
    torch.manual_seed(3)
    spec = {"name": "xlnet", "vocab_size": 99, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 37}
    model = um.build_model(spec, objective=objective, dropout=0.0, attn_dropout=0.0, act_dropout=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    um.to_hf(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["architectures"] == [cls_name] and cfg["model_type"] == "xlnet"
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    hf = getattr(transformers, cls_name).from_pretrained(tmp_path / "out").eval()
    theirs = hf.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in saved.items())
    if cls_name == "XLNetLMHeadModel":
        assert "lm_loss.weight" not in saved and torch.equal(theirs["lm_loss.weight"], model.heads["lm"].weight)
    ids, types, _, _ = two_stream_inputs()
    with torch.no_grad():
        ours, ref = model(input_ids=ids, token_type_ids=types), hf(ids, token_type_ids=types)
        ref_main = ref.last_hidden_state if cls_name == "XLNetModel" else ref.logits
        ours_main = ours.last_hidden_state if cls_name == "XLNetModel" else ours.logits
    assert max_err(ours_main, ref_main) < TOL
    again = um.from_hf(tmp_path / "out")
    assert again.objective_name == model.objective_name
    mine, back = model.state_dict(), again.state_dict()
    assert all(torch.equal(mine[k], back[k]) for k in back)


def test_convert_command_both_ways(tmp_path, capsys):
    from unimodel.cli import main

    hf = hf_xlnet()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "um"), "--to", "unimodel"]) == 0
    assert main(["convert", str(tmp_path / "um"), str(tmp_path / "hf2"), "--to", "hf"]) == 0
    again = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "hf2").eval()
    ids = torch.randint(0, 99, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, hf(ids).logits)


def test_unsupported_folders_are_refused(tmp_path):
    hf_xlnet().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, message in (
        ({"architectures": ["XLNetForQuestionAnswering"]}, "architecture 'XLNetForQuestionAnswering'"),
        ({"ff_activation": "mish"}, "ff_activation 'mish'"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(CheckpointError, match=message):
            um.from_hf(tmp_path)
