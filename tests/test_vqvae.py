"""The vqvae model and the vq_reconstruction objective: outputs, the code pair, checkpoints, bad inputs."""

from __future__ import annotations

import pytest
import torch
from unimodel_vqvae.objectives import code_statistics, psnr

import unimodel as um
from unimodel.errors import ConfigError, DataError, IncompatibleObjectiveError, InputError, ResourceError

TINY = dict(um.get_registry().get("model", "vqvae").tiny)  # 16x16 RGB, 4x4 grid, 32 codes


def tiny(**overrides):
    return um.build_model("vqvae", **{**TINY, **overrides})


@pytest.fixture
def images():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_forward_returns_reconstruction_codes_and_quantizer_losses(images, one_thread):
    model = tiny().train()
    out = model(pixel_values=images)
    assert out.logits is None
    assert out.last_hidden_state.shape == (6, 16, 8)  # (B, h*w, latent_dim)
    assert out["reconstruction"].shape == (6, 3, 16, 16) and out.extra["reconstruction"].requires_grad
    assert out["codes"].shape == (6, 16) and out["codes"].dtype == torch.long
    assert out["quantizer_loss"].item() == pytest.approx(0.25 * out["commitment_loss"].item())
    with pytest.raises(KeyError, match="has no 'nonsense'; it has logits"):
        out["nonsense"]


def test_encode_and_decode_codes_are_the_forward_pass_in_two_halves(images, one_thread):
    model = tiny().train()
    model.objective(model, {"pixel_values": images})  # one training forward: k-means, EMA
    model.eval()
    out = model(pixel_values=images)
    codes = model.encode_codes(images)
    assert codes.shape == (6, 16) and codes.dtype == torch.long
    assert torch.equal(codes, out["codes"])
    decoded = model.decode_codes(codes)
    assert decoded.shape == (6, 3, 16, 16)
    assert torch.allclose(decoded, out["reconstruction"].clamp(0, 1), atol=1e-6)
    assert torch.equal(model.decode_codes(codes.reshape(6, 4, 4)), decoded)  # a (B, h, w) grid too
    assert model.codebook_part().code_shape == (4, 4) and model.vocab_size == 32


def test_code_pair_never_updates_the_codebook(images, one_thread):
    model = tiny().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.decode_codes(model.encode_codes(images))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fsq_model_round_trips_its_codes(images, one_thread):
    model = tiny(quantizer="fsq", fsq_levels=[4, 3, 3]).eval()
    assert model.vocab_size == 36
    codes = model.encode_codes(images)
    assert codes.max() < 36
    out = model(pixel_values=images)
    assert torch.allclose(model.decode_codes(codes), out["reconstruction"].clamp(0, 1), atol=1e-6)
    assert out["quantizer_loss"].item() == 0.0


def test_model_without_a_codebook_says_so():
    gpt = um.build_model("gpt2-tiny", vocab_size=64, max_positions=16)
    with pytest.raises(InputError, match="has no codebook .*provides 'codebook'"):
        gpt.encode_codes(torch.rand(1, 3, 16, 16))
    with pytest.raises(InputError, match="has no codebook"):
        gpt.decode_codes(torch.zeros(1, 16, dtype=torch.long))


def test_codebook_state_survives_save_and_load(tmp_path, images, one_thread):
    model = tiny(dead_code_steps=1).train()
    for _ in range(2):  # two training steps (plain SGD; torch.optim takes seconds to import)
        model.zero_grad()
        model.objective(model, {"pixel_values": images}).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
    assert bool(model.encoder.quantizer.initialised)
    model.save(tmp_path / "ck")
    loaded = um.load(tmp_path / "ck")
    saved, back = model.state_dict(), loaded.state_dict()
    for key in ("embed", "cluster_size", "embed_sum", "unused_steps", "initialised"):
        name = f"encoder.quantizer.{key}"
        assert torch.equal(saved[name], back[name]), key
    assert torch.equal(loaded.encode_codes(images), model.eval().encode_codes(images))
    # training goes on from the saved state: no second k-means, the same EMA step
    model.train(), loaded.train()
    torch.manual_seed(5)
    model(pixel_values=images)
    torch.manual_seed(5)
    loaded(pixel_values=images)
    assert torch.equal(model.encoder.quantizer.embed, loaded.encoder.quantizer.embed)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(3, 16, 16), r"shape \(batch, 3, 16, 16\).*add a batch dimension"),
        (torch.zeros(2, 3, 32, 32), r"got \(2, 3, 32, 32\); resize images to 16x16"),
        (torch.zeros(2, 16, 16, 3), r"\(channels first\)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating point.*divide uint8 images by 255"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.long), "floating point in"),
        (torch.full((2, 3, 16, 16), 200.0), r"must lie in \[0, 1\], got values in \[200, 200\]; divide 0-255"),
        (torch.linspace(-0.5, 0.5, 1536).reshape(2, 3, 16, 16), r"must lie in \[0, 1\], got values in \[-0.5, 0.5\]"),
        (torch.full((2, 3, 16, 16), float("nan")), "NaN"),
        (torch.empty(0, 3, 16, 16), "no images"),
        ([[0.5]], "torch tensor"),
    ],
)
def test_bad_pixel_values_raise_input_error(bad, message):
    model = tiny().eval()
    with pytest.raises(InputError, match=message):
        model(pixel_values=bad)
    if isinstance(bad, torch.Tensor) and bad.dim() != 3:
        with pytest.raises(InputError, match=message):
            model.encode_codes(bad)


def test_bad_codes_and_token_inputs_raise_input_error():
    model = tiny().eval()
    for bad, message in [
        (torch.full((1, 16), 32), r"contain 32, outside this model's 32 codes \(0..31\)"),
        (torch.full((1, 16), -1), "contain -1"),
        (torch.zeros(1, 16), "integer code ids"),
        (torch.zeros(1, 15, dtype=torch.long), r"shape \(batch, 16\) or \(batch, 4, 4\)"),
    ]:
        with pytest.raises(InputError, match=message):
            model.decode_codes(bad)
    with pytest.raises(InputError, match="takes pixel_values.*not input_ids"):
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))  # no id check of the core gets there first
    with pytest.raises(InputError, match="model call needs pixel_values"):
        model()
    with pytest.raises(InputError, match="does not take input.*'decoder_input_ids'|does not take input"):
        model(pixel_values=torch.rand(1, 3, 16, 16), mems=1)


def test_config_rules():
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*num_downsamples=4"):
        tiny(image_size=18)
    with pytest.raises(ConfigError, match="fsq_levels"):
        tiny(quantizer="fsq", fsq_levels=[8, 1])
    with pytest.raises(ConfigError, match="quantizer"):
        tiny(quantizer="rvq")
    with pytest.raises(IncompatibleObjectiveError, match="vq_reconstruction"):
        um.build_model("vqvae", objective="mlm", **TINY)
    with pytest.raises(IncompatibleObjectiveError, match="continuous_input"):
        um.build_model("gpt2-tiny", objective="vq_reconstruction")
    assert um.build_model("vqvae-tiny").config.image_size == 32
    small = um.build_model("vqvae-small")
    assert small.codebook_part().code_shape == (8, 8) and small.config.image_size == 64


# ------------------------------------------------------------------ objective
def test_objective_prepares_image_batches_and_trains(one_thread):
    model = tiny().train()
    obj = model.objective
    g = torch.Generator().manual_seed(0)
    examples = [{"pixel_values": torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g)} for _ in range(4)]
    batch = obj.prepare(examples)
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"][2], examples[2]["pixel_values"].float() / 255)
    assert torch.equal(
        obj.prepare([e["pixel_values"].float() / 255 for e in examples])["pixel_values"], batch["pixel_values"]
    )
    out = obj(model, batch)
    assert out.n_predictions == 4 and out.logits is None
    assert set(out.metrics) == {"psnr", "reconstruction_loss", "quantizer_loss", "codebook_usage", "code_perplexity"}
    assert out.loss.item() == pytest.approx(
        out.metrics["reconstruction_loss"] + out.metrics["quantizer_loss"], rel=1e-5
    )
    out.loss.backward()
    assert model.encoder.image_encoder.net[0].weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.encoder.image_decoder.net[-1].weight.grad.abs().sum() > 0


def test_objective_refuses_token_examples():
    obj = tiny().objective
    with pytest.raises(DataError, match="trains on images.*example 0 has keys \\['input_ids'\\]"):
        obj.prepare([{"input_ids": [1, 2, 3]}])
    with pytest.raises(DataError, match="example 1 has shape \\(3, 8, 8\\) but example 0 has"):
        obj.prepare([torch.rand(3, 16, 16), torch.rand(3, 8, 8)])


def test_metrics_psnr_usage_and_perplexity(images, one_thread):
    assert psnr(images + 0.1, images - 0.0).tolist() == pytest.approx([20.0] * 6, abs=0.5)  # clamped at 1
    assert psnr(images.clamp(0.2, 0.8) + 0.1, images.clamp(0.2, 0.8)).tolist() == pytest.approx([20.0] * 6, rel=1e-4)
    assert code_statistics(torch.tensor([2, 2, 0, 0])) == {"codebook_usage": 0.5, "code_perplexity": pytest.approx(2.0)}
    assert code_statistics(torch.tensor([5, 0, 0, 0]))["code_perplexity"] == pytest.approx(1.0)
    model = um.build_model("vqvae", objective={"name": "vq_reconstruction", "reconstruction": "l1"}, **TINY).eval()
    obj = model.objective
    first = obj(model, {"pixel_values": images[:3]}).metrics
    both = obj(model, {"pixel_values": images[3:]}).metrics
    all_codes = model.encode_codes(images)
    assert both["codebook_usage"] == pytest.approx(len(all_codes.unique()) / 32)  # accumulated over both batches
    assert first["codebook_usage"] == pytest.approx(len(all_codes[:3].unique()) / 32)
    obj.reset_metrics()
    assert obj(model, {"pixel_values": images[3:]}).metrics["codebook_usage"] == pytest.approx(
        len(all_codes[3:].unique()) / 32
    )
    rec = model(pixel_values=images[3:])["reconstruction"]
    assert obj.loss(rec, images[3:]).item() == pytest.approx((rec - images[3:]).abs().mean().item())


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_training_step_under_bf16_autocast_keeps_codebook_statistics_in_fp32(quantizer, images, one_thread):
    model = tiny(quantizer=quantizer).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.objective(model, {"pixel_values": images})
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name, buffer in model.encoder.quantizer.named_buffers():
        assert buffer.dtype in (torch.float32, torch.long, torch.bool), name


def test_a_codebook_too_large_for_memory_is_refused_before_it_is_written():
    import resource

    from unimodel.bounds import memory_limit

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with memory_limit(1 << 30), pytest.raises(ResourceError, match="model 'vqvae': this needs at least 2"):
        um.build_model("vqvae", **{**TINY, "codebook_size": 2**20, "code_dim": 2**9})  # 2 GiB of codes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 2**19  # not filled: < 0.5 GiB more
