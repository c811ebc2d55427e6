"""A VQ-VAE checkpoint as the tokenizer of images: code sequences, the prior's link to its VQ-VAE, sampling."""

from __future__ import annotations

import pytest
import torch
from unimodel_vqvae.prior import ImageTokenizer, checkpoint_digest, image_tokenizer_of, prompts

import unimodel as um
from unimodel.errors import CheckpointError, InputError

TINY = dict(um.get_registry().get("model", "vqvae").tiny)  # 16x16 RGB, 4x4 grid, 32 codes


@pytest.fixture(scope="module")
def vq_folder(tmp_path_factory):
    torch.manual_seed(0)
    vq = um.build_model("vqvae", **TINY).train()
    vq.objective(vq, {"pixel_values": torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))})
    folder = tmp_path_factory.mktemp("vq") / "checkpoint"
    vq.save(folder)
    return folder


def _prior(tok, layout, **overrides):
    torch.manual_seed(0)
    return um.build_model(
        "gpt2-tiny", vocab_size=tok.vocab_size, max_positions=layout.sequence_length, tokenizer=tok, **overrides
    )


def test_code_sequences_round_trip_through_the_image_tokenizer(vq_folder, one_thread):
    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=3)
    layout = it.layout
    assert (layout.num_codes, layout.code_shape, layout.vocab_size, layout.sequence_length) == (32, (4, 4), 38, 18)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    seq = it.encode(images, labels=[0, 1, 2, 0, 1])
    assert seq.shape == (5, 18)
    assert seq[:, 0].eq(32).all() and seq[:, 1].tolist() == [35, 36, 37, 35, 36]  # <image>, <class_c>
    codes = it.vqvae.encode_codes(images)
    assert torch.equal(seq[:, 2:], codes)
    assert torch.equal(it.decode(seq), it.vqvae.decode_codes(codes))  # the prefix is dropped
    tok = it.tokenizer()
    assert tok.vocab_size == 38 and tok.special_id("bos") == 32 and tok.pad_id == 33 and tok.special_id("mask") == 34
    assert tok.id_to_token(5) == "<code_5>" and tok.id_to_token(37) == "<class_2>"
    with pytest.raises(InputError, match="must be codes"):
        it.decode(seq[:, :17].flip(1))  # the start and class tokens land among the codes
    with pytest.raises(InputError, match="class 3 is not one of this prior's classes 0..2"):
        it.encode(images[:1], labels=[3])


def test_a_loaded_prior_finds_its_vqvae_and_says_when_it_is_missing_or_changed(vq_folder, tmp_path, one_thread):
    import shutil

    folder = tmp_path / "vq"
    shutil.copytree(vq_folder, folder)
    it = ImageTokenizer.from_checkpoint(folder)
    tok = it.tokenizer()
    _prior(tok, it.layout).save(tmp_path / "prior")
    loaded = um.load(tmp_path / "prior")
    linked = image_tokenizer_of(loaded)
    assert linked.path == str(folder.resolve()) and linked.digest == checkpoint_digest(folder)
    assert loaded.tokenizer.metadata["image_tokenizer"]["sha256"] == it.digest
    assert "vqvae" not in "".join(loaded.state_dict())  # attached, not a submodule saved with the prior
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="changed since"):
        um.load(tmp_path / "prior")
    shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match="which is missing"):
        um.load(tmp_path / "prior")
    plain = um.build_model("gpt2-tiny")
    with pytest.raises(InputError, match="not a prior over image codes"):
        image_tokenizer_of(plain)


def test_prompts_carry_the_class_a_conditional_prior_needs(vq_folder):
    cond = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2).layout
    assert prompts(cond, 2, 1).tolist() == [[32, 36], [32, 36]]
    assert prompts(cond, 2, [0, 1]).tolist() == [[32, 35], [32, 36]]
    with pytest.raises(InputError, match="class-conditional: give a class"):
        prompts(cond, 2, None)
    plain = ImageTokenizer.from_checkpoint(vq_folder).layout
    assert prompts(plain, 3, None).tolist() == [[32]] * 3
    with pytest.raises(InputError, match="unconditional"):
        prompts(plain, 1, 0)


def test_masked_codes_hides_a_cosine_share_of_codes_and_never_the_condition(vq_folder):
    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2)
    tok = it.tokenizer()
    obj = um.build_objective("masked_codes")
    seqs = it.encode(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(2)), [0, 1] * 32)
    examples = [{"input_ids": s} for s in seqs.tolist()]
    batch = obj.prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    masked = batch["input_ids"] == 34
    assert not masked[:, :2].any()  # <image> and the class token are the condition
    assert masked.sum(1).min() >= 1 and torch.equal(batch["labels"] != -100, masked)
    assert torch.equal(batch["labels"][masked], seqs[masked])
    assert torch.equal(batch["input_ids"][~masked], seqs[~masked])
    # E[cos(pi/2 U)] = 2/pi of the 16 codes: about 10.2 per row
    assert 8.5 < masked.sum(1).double().mean() < 12
    again = obj.prepare(examples, tokenizer=tok, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], batch["input_ids"])  # seeded by the generator only


def test_an_autoregressive_prior_samples_only_codes_and_decodes_them(vq_folder, tmp_path, one_thread):
    from unimodel_vqvae.prior import sample_codes, sample_images

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2)
    _prior(it.tokenizer(), it.layout).save(tmp_path / "prior")
    prior = um.load(tmp_path / "prior")  # untrained: every id is about as likely, specials included
    codes = sample_codes(prior, 6, class_id=1, temperature=1.5, seed=3)
    assert codes.shape == (6, 16) and int(codes.max()) < 32
    assert torch.equal(codes, sample_codes(prior, 6, class_id=1, temperature=1.5, seed=3))
    assert not torch.equal(codes, sample_codes(prior, 6, class_id=1, temperature=1.5, seed=4))
    images = sample_images(prior, 2, class_id=[0, 1], seed=0)
    assert images.shape == (2, 3, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1


# ------------------------------------------------------------------ parallel (MaskGIT) sampling
def _parallel_prior(it):
    torch.manual_seed(0)
    prior = um.build_model(
        "bert-tiny", vocab_size=it.layout.vocab_size, max_positions=it.layout.sequence_length,
        tokenizer=it.tokenizer(), objective="masked_codes", n_layers=1, d_model=32, n_heads=2, d_ff=64,
    )  # fmt: skip
    prior.image_tokenizer = it  # what loading its checkpoint attaches
    return prior


class InputSpy:
    """Records the input_ids of every forward call of a model."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(kwargs["input_ids"].clone())


def test_parallel_sampling_unmasks_codes_on_the_cosine_schedule_and_fills_every_code(vq_folder, one_thread):
    from unimodel_vqvae.prior import sample_codes_parallel

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=3)
    prior = _parallel_prior(it)
    spy = InputSpy(prior)
    codes = sample_codes_parallel(prior, 3, class_id=[2, 0, 1], iterations=5, seed=1)
    assert len(spy.calls) == 5  # one pass of the network per iteration
    masked = [(ids[:, 2:] == it.layout.mask_id).sum(1).tolist() for ids in spy.calls]
    # 16 codes: floor(16 * cos(pi/2 * t/5)) masked before iteration t, every row alike
    assert masked == [[16] * 3, [15] * 3, [12] * 3, [9] * 3, [4] * 3]
    for before, after in zip(spy.calls, spy.calls[1:]):
        kept = before != it.layout.mask_id
        assert torch.equal(after[kept], before[kept])  # a code once revealed stays as it is
    last = spy.calls[-1][:, 2:]
    assert torch.equal(codes[last != it.layout.mask_id], last[last != it.layout.mask_id])
    assert codes.shape == (3, 16) and int(codes.min()) >= 0 and int(codes.max()) < 32  # all filled, all codes
    # the condition reaches the network unmasked at every pass: <image> then the asked class of each row
    for ids in spy.calls:
        assert ids[:, 0].eq(32).all() and ids[:, 1].tolist() == [35 + 2, 35, 35 + 1]
    spy.handle.remove()


def test_parallel_sampling_is_seeded_and_top_k_restricts_the_draws(vq_folder, one_thread):
    from unimodel_vqvae.prior import sample_codes_parallel

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=3)
    prior = _parallel_prior(it)
    first = sample_codes_parallel(prior, 4, class_id=1, iterations=4, seed=7)
    assert torch.equal(first, sample_codes_parallel(prior, 4, class_id=1, iterations=4, seed=7))
    assert not torch.equal(first, sample_codes_parallel(prior, 4, class_id=1, iterations=4, seed=8))
    # one pass with top_k = 1: every code is the argmax of the prior's code logits given the all-masked grid
    one = sample_codes_parallel(prior, 2, class_id=[0, 2], iterations=1, top_k=1, seed=3)
    ids = torch.cat([prompts(it.layout, 2, [0, 2]), torch.full((2, 16), it.layout.mask_id)], dim=1)
    with torch.no_grad():
        expected = prior.eval()(input_ids=ids, return_logits=True).logits[:, 2:, :32].argmax(-1)
    assert torch.equal(one, expected)
    prior.train()  # the sampler runs in eval mode and restores the mode it found
    sample_codes_parallel(prior, 1, class_id=0, iterations=2)
    assert prior.training


def test_each_sampler_refuses_a_prior_of_the_other_kind(vq_folder, one_thread):
    from unimodel_vqvae.prior import sample_codes, sample_codes_parallel, sample_images

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2)
    causal = _prior(it.tokenizer(), it.layout)
    causal.image_tokenizer = it
    with pytest.raises(InputError, match="'gpt2-tiny' is a causal decoder .objective 'clm'.: sample it with sample_co"):
        sample_codes_parallel(causal, 1, class_id=0)
    bidirectional = _parallel_prior(it)
    with pytest.raises(InputError, match="'bert-tiny' is an encoder .* sample it with sample_codes_parallel"):
        sample_codes(bidirectional, 1, class_id=0)
    seq2seq = um.build_model("t5-tiny", vocab_size=it.layout.vocab_size)
    seq2seq.image_tokenizer = it
    for sampler in (sample_codes, sample_codes_parallel, sample_images):
        with pytest.raises(InputError, match="'t5-tiny' is an encoder-decoder .* which neither sampler can draw"):
            sampler(seq2seq, 1, class_id=0)
    with pytest.raises(InputError, match="top_k must be at least 1"):
        sample_codes_parallel(bidirectional, 1, class_id=0, top_k=0)


# ------------------------------------------------------------------ classifier-free guidance
def _reference_guided_draws(prior, ids, layout, scale, seed):
    """Guided ancestral sampling written out: every step re-runs the whole prefix (no cache) for both rows."""
    g = torch.Generator().manual_seed(seed)
    free = ids.clone()
    free[:, 1] = layout.null_class_id
    rows = torch.cat([ids, free])
    for _ in range(layout.num_positions):
        with torch.no_grad():
            logits = prior(input_ids=rows, return_logits=True).logits[:, -1, : layout.num_codes].float()
        cond, uncond = logits.chunk(2)
        drawn = torch.multinomial(torch.softmax(uncond + scale * (cond - uncond), -1), 1, generator=g)
        rows = torch.cat([rows, drawn.repeat(2, 1)], dim=1)
    return rows[: ids.shape[0], -layout.num_positions :]


def test_guided_sampling_draws_from_the_guided_distribution_on_the_cache(vq_folder, tmp_path, one_thread):
    from unimodel_vqvae.prior import sample_codes

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=3, null_class=True)
    layout = it.layout
    assert layout.vocab_size == 39 and layout.null_class_id == 38 and it.tokenizer().id_to_token(38) == "<class_none>"
    _prior(it.tokenizer(), layout).save(tmp_path / "prior")
    prior = um.load(tmp_path / "prior")  # the link records the null class
    assert image_tokenizer_of(prior).layout.null_class
    with torch.no_grad():  # make the class token matter, so that guidance has something to sharpen
        prior.decoder.wte.weight[35:39].normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    codes = sample_codes(prior, 3, class_id=[0, 2, 1], guidance_scale=3.0, seed=5)
    expected = _reference_guided_draws(prior, prompts(layout, 3, [0, 2, 1]), layout, 3.0, seed=5)
    assert torch.equal(codes, expected)
    assert not torch.equal(codes, sample_codes(prior, 3, class_id=[0, 2, 1], guidance_scale=1.5, seed=5))


def test_guidance_needs_a_null_class_and_a_scale_of_at_least_one(vq_folder, tmp_path, one_thread):
    from unimodel_vqvae.prior import sample_codes, sample_codes_parallel

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2)
    prior = _prior(it.tokenizer(), it.layout)
    prior.image_tokenizer = it
    with pytest.raises(InputError, match="trained without a null class.*class_dropout > 0"):
        sample_codes(prior, 1, class_id=0, guidance_scale=2.0)
    with pytest.raises(InputError, match="trained without a null class"):
        sample_codes_parallel(_parallel_prior(it), 1, class_id=0, guidance_scale=2.0)
    for bad in (0.5, float("nan")):
        with pytest.raises(InputError, match="guidance_scale must be at least 1"):
            sample_codes(prior, 1, class_id=0, guidance_scale=bad)
    with pytest.raises(um.errors.ConfigError, match="a null class needs class tokens"):
        ImageTokenizer.from_checkpoint(vq_folder, null_class=True)


def test_guided_parallel_sampling_runs_every_pass_with_and_without_the_class(vq_folder, one_thread):
    from unimodel_vqvae.prior import sample_codes_parallel

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=3, null_class=True)
    prior = _parallel_prior(it)
    spy = InputSpy(prior)
    codes = sample_codes_parallel(prior, 2, class_id=[2, 0], iterations=3, guidance_scale=2.0, seed=1)
    assert codes.shape == (2, 16) and int(codes.max()) < 32
    assert len(spy.calls) == 3
    for ids in spy.calls:  # the two rows with their classes, then the same grids with <class_none>
        assert ids[:, 1].tolist() == [37, 35, 38, 38] and torch.equal(ids[:2, 2:], ids[2:, 2:])
    spy.handle.remove()
    # one pass, top_k = 1: the argmax of the guided logits u + 2 (c - u)
    one = sample_codes_parallel(prior, 2, class_id=[0, 2], iterations=1, top_k=1, guidance_scale=2.0)
    ids = torch.cat([prompts(it.layout, 2, [0, 2]), torch.full((2, 16), it.layout.mask_id)], dim=1)
    free = ids.clone()
    free[:, 1] = it.layout.null_class_id
    with torch.no_grad():
        c, u = (prior.eval()(input_ids=x, return_logits=True).logits[:, 2:, :32] for x in (ids, free))
    assert torch.equal(one, (u + 2.0 * (c - u)).argmax(-1))


def test_either_sampler_refuses_a_request_beyond_memory_before_allocating(vq_folder, one_thread):
    from unimodel_vqvae.prior import sample_codes, sample_codes_parallel

    from unimodel.bounds import memory_limit
    from unimodel.errors import ResourceError

    it = ImageTokenizer.from_checkpoint(vq_folder, num_classes=2, null_class=True)
    causal = _prior(it.tokenizer(), it.layout)
    causal.image_tokenizer = it
    with memory_limit(64 << 20):
        for scale in (1.0, 3.0):  # the guided path runs its own loop: it is bounded as generate is
            with pytest.raises(ResourceError, match=r"generate \(batch (4000000|8000000), 18 positions\)"):
                sample_codes(causal, 4_000_000, class_id=0, guidance_scale=scale)
        with pytest.raises(ResourceError, match=r"parallel sampling \(4000000 grids, guided\): this needs at least"):
            sample_codes_parallel(_parallel_prior(it), 4_000_000, class_id=0, guidance_scale=3.0)
        assert sample_codes(causal, 2, class_id=1, guidance_scale=3.0).shape == (2, 16)  # small requests run
