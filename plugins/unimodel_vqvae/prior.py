"""A VQ-VAE checkpoint as the tokenizer of images, so any causal decoder can be a prior over codes.

Ids of a code sequence (K codes, an h x w grid, n classes; n = 0 when unconditional):

========================  =================================================
``0 .. K-1``              the codes themselves (token id = code id)
``K``                     ``<image>``: the start of every sequence (role ``bos``)
``K + 1``                 ``<pad>`` (role ``pad``; never inside a sequence)
``K + 2``                 ``<mask>`` (role ``mask``: a hidden code, for masked-code priors)
``K + 3 + c``             ``<class_c>``, right after ``<image>`` when conditional
``K + 3 + n``             ``<class_none>`` (only when ``null_class``): "any class", the slot
                          classifier-free guidance samples against
========================  =================================================

A sequence is ``<image> [<class_c>] code_0 ... code_{h*w-1}`` (row-major over
the grid). The prior's tokenizer (a word-level ``tokenizers`` vocabulary of
these tokens) keeps, in its metadata, the link to the VQ-VAE: its absolute
path and the SHA-256 of its ``config.json`` and ``model.safetensors``. That
tokenizer travels with the prior's checkpoint, and loading the prior
(:func:`attach_image_tokenizer`, run by the ``unimodel_checkpoint_loaded``
hook) attaches the VQ-VAE as ``prior.image_tokenizer``, or raises a
:class:`~unimodel.errors.CheckpointError` saying that it is missing or changed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import CheckpointError, ConfigError, DataError, InputError
from unimodel.generation.refinement import cosine_schedule, refine
from unimodel.interfaces import Cap

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model

LINK_KEY = "image_tokenizer"
START, PAD, MASK = "<image>", "<pad>", "<mask>"
_HASHED = ("config.json", "model.safetensors")


def checkpoint_digest(folder: str | Path) -> str:
    """SHA-256 (hex) over a checkpoint's ``config.json`` and ``model.safetensors``, read in 1 MiB pieces."""
    h = hashlib.sha256()
    for name in _HASHED:
        path = Path(folder) / name
        if not path.is_file():
            raise CheckpointError(f"{str(folder)!r} is not a unimodel checkpoint: it has no {name}")
        with path.open("rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
    return h.hexdigest()


@dataclass(frozen=True)
class CodeLayout:
    """Where codes, the start, padding and class tokens sit among the prior's ids."""

    num_codes: int
    code_shape: tuple[int, int]
    num_classes: int = 0  # 0: unconditional
    null_class: bool = False  # a <class_none> token after the classes (classifier-free guidance)

    @property
    def start_id(self) -> int:
        return self.num_codes

    @property
    def pad_id(self) -> int:
        return self.num_codes + 1

    @property
    def mask_id(self) -> int:
        return self.num_codes + 2

    def class_id(self, label: int) -> int:
        if not 0 <= label < self.num_classes:
            what = f"classes 0..{self.num_classes - 1}" if self.num_classes else "no classes (it is unconditional)"
            raise InputError(f"class {label} is not one of this prior's {what}")
        return self.num_codes + 3 + label

    @property
    def null_class_id(self) -> int:
        """The id of ``<class_none>``; an error when this layout has none."""
        if not self.null_class:
            raise InputError(
                "this prior was trained without a null class, so classifier-free guidance has nothing to guide "
                "against: train it with data.kind_options.class_dropout > 0 (e.g. 0.1)"
            )
        return self.num_codes + 3 + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.num_codes + 3 + self.num_classes + int(self.null_class)

    @property
    def prefix_length(self) -> int:
        """Ids before the codes: ``<image>``, and the class token when conditional."""
        return 2 if self.num_classes else 1

    @property
    def num_positions(self) -> int:
        """h * w: codes per image."""
        return self.code_shape[0] * self.code_shape[1]

    @property
    def sequence_length(self) -> int:
        return self.prefix_length + self.num_positions

    def tokens(self) -> list[str]:
        """The vocabulary in id order."""
        return [
            *(f"<code_{i}>" for i in range(self.num_codes)),
            START,
            PAD,
            MASK,
            *(f"<class_{c}>" for c in range(self.num_classes)),
            *(["<class_none>"] if self.null_class else []),
        ]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_codes": self.num_codes,
            "code_shape": list(self.code_shape),
            "num_classes": self.num_classes,
        }
        if self.null_class:
            out["null_class"] = True
        return out


class ImageTokenizer:
    """Images <-> code sequences through a VQ-VAE (any model whose backbone provides ``codebook``).

    Args:
        vqvae: the model, in eval mode.
        path: the checkpoint folder it was loaded from (recorded in the prior's tokenizer).
        digest: :func:`checkpoint_digest` of that folder.
        num_classes: class tokens to reserve (0: unconditional).
        null_class: also reserve ``<class_none>``, the "any class" token that classifier-free guidance needs.
    """

    def __init__(
        self, vqvae: Model, *, path: str | Path, digest: str, num_classes: int = 0, null_class: bool = False
    ) -> None:
        if Cap.CODEBOOK not in vqvae.provides:
            raise ConfigError(
                f"the image tokenizer at {str(path)!r} is a {vqvae.name!r} model without a codebook; "
                "give a VQ-VAE checkpoint (a model providing 'codebook')"
            )
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        if null_class and not num_classes:
            raise ConfigError("a null class needs class tokens: set class_conditional = true")
        self.vqvae = vqvae.eval()
        self.path = str(Path(path).resolve())
        self.digest = digest
        part = vqvae.codebook_part()
        h, w = part.code_shape
        self.layout = CodeLayout(part.vocab_size, (h, w), num_classes, null_class)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, num_classes: int = 0, null_class: bool = False) -> ImageTokenizer:
        """Load the VQ-VAE checkpoint at ``path`` (a folder written by ``model.save`` or ``unimodel train``)."""
        from unimodel.checkpoint import load

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise CheckpointError(f"image tokenizer {str(path)!r}: no such checkpoint folder")
        digest = checkpoint_digest(folder)
        return cls(load(folder), path=folder, digest=digest, num_classes=num_classes, null_class=null_class)

    # ------------------------------------------------------------ the prior's vocabulary
    def link(self) -> dict[str, Any]:
        """What the prior's tokenizer records about this VQ-VAE."""
        return {"path": self.path, "sha256": self.digest, **self.layout.to_dict()}

    def tokenizer(self) -> Tokenizer:
        """The prior's tokenizer: the code vocabulary, roles ``bos``, ``pad`` and ``mask``, the link in its metadata."""
        import tokenizers

        from unimodel.data.tokenizer import Tokenizer

        vocab = {tok: i for i, tok in enumerate(self.layout.tokens())}
        backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=PAD))
        backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
        backend.add_special_tokens([START, PAD, MASK])
        return Tokenizer(backend, {"bos": START, "pad": PAD, "mask": MASK}, metadata={LINK_KEY: self.link()})

    # ------------------------------------------------------------ images <-> sequences
    @torch.no_grad()
    def encode(self, pixel_values: Tensor, labels: Tensor | Sequence[int] | None = None) -> Tensor:
        """Images (B, C, H, W) in [0, 1] (and class labels (B,)) -> sequences (B, prefix + h*w) long."""
        layout = self.layout
        codes = self.vqvae.encode_codes(pixel_values).cpu()
        prefix = [torch.full((codes.shape[0], 1), layout.start_id, dtype=torch.long)]
        if layout.num_classes:
            if labels is None:
                raise DataError("a class-conditional image tokenizer needs the images' class labels")
            lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if lab.shape[0] != codes.shape[0]:
                raise DataError(f"{lab.shape[0]} labels for {codes.shape[0]} images")
            prefix.append(torch.tensor([[layout.class_id(int(c))] for c in lab], dtype=torch.long))
        return torch.cat([*prefix, codes], dim=1)

    def codes_of(self, sequences: Tensor) -> Tensor:
        """Sequences (B, prefix + h*w) or bare codes (B, h*w) -> codes (B, h*w), checked to be codes."""
        n = self.layout.num_positions
        if sequences.dim() != 2 or sequences.shape[1] < n:
            raise InputError(f"code sequences must have shape (batch, >= {n}), got {tuple(sequences.shape)}")
        codes = sequences[:, -n:]
        bad = (codes < 0) | (codes >= self.layout.num_codes)
        if bool(bad.any()):
            raise InputError(
                f"the last {n} ids of a sequence must be codes (0..{self.layout.num_codes - 1}); found "
                f"{int(codes[bad][0])} (a start, pad or class token: was the prior sampled with those suppressed?)"
            )
        return codes

    @torch.no_grad()
    def decode(self, sequences: Tensor) -> Tensor:
        """Sequences (B, prefix + h*w) or codes (B, h*w) -> images (B, C, H, W) in [0, 1]."""
        return self.vqvae.decode_codes(self.codes_of(sequences))


# ------------------------------------------------------------------ the prior's link
def attach_image_tokenizer(model: Any, path: str) -> None:
    """Give a loaded prior its VQ-VAE (``model.image_tokenizer``) when its tokenizer records one.

    Raises :class:`CheckpointError` when the recorded VQ-VAE is missing or its files changed.
    """
    tok = getattr(model, "tokenizer", None)
    link = getattr(tok, "metadata", {}).get(LINK_KEY) if tok is not None else None
    if not isinstance(link, dict):
        return
    where = link.get("path")
    if not isinstance(where, str) or not isinstance(link.get("sha256"), str):
        raise CheckpointError(f"{path!r}: the tokenizer's image_tokenizer record lacks its path or sha256")
    if not Path(where).is_dir():
        raise CheckpointError(
            f"the prior at {path!r} models the codes of the VQ-VAE at {where!r}, which is missing; "
            "put that checkpoint back (or retrain the prior on the VQ-VAE you have)"
        )
    digest = checkpoint_digest(where)
    if digest != link["sha256"]:
        raise CheckpointError(
            f"the prior at {path!r} models the codes of the VQ-VAE at {where!r}, but that checkpoint changed since "
            f"(sha256 {digest[:12]}... instead of {link['sha256'][:12]}...): its codes no longer mean what the "
            "prior learned; restore it or retrain the prior"
        )
    from unimodel.checkpoint import load

    vq = ImageTokenizer(
        load(where),
        path=where,
        digest=digest,
        num_classes=int(link.get("num_classes", 0)),
        null_class=bool(link.get("null_class", False)),
    )
    if [vq.layout.num_codes, list(vq.layout.code_shape)] != [link.get("num_codes"), link.get("code_shape")]:
        raise CheckpointError(f"the VQ-VAE at {where!r} has another code layout than the prior at {path!r} records")
    model.image_tokenizer = vq


def image_tokenizer_of(prior: Model) -> ImageTokenizer:
    """The VQ-VAE a prior over codes decodes with; a clear error for a model that is not such a prior."""
    vq = getattr(prior, "image_tokenizer", None)
    if not isinstance(vq, ImageTokenizer):
        raise InputError(
            f"model {prior.name!r} is not a prior over image codes: its tokenizer records no image_tokenizer "
            "(train it with [data] kind = 'codes' on a VQ-VAE checkpoint)"
        )
    return vq


# ------------------------------------------------------------------ sampling
def prompts(layout: CodeLayout, num: int, class_id: int | Sequence[int] | None) -> Tensor:
    """The (num, prefix) prompts: ``<image>`` and, when conditional, the class token(s) (one or one per row)."""
    start = torch.full((num, 1), layout.start_id, dtype=torch.long)
    if not layout.num_classes:
        if class_id is not None:
            raise InputError("this prior is unconditional: it takes no class")
        return start
    if class_id is None:
        raise InputError(f"this prior is class-conditional: give a class (0..{layout.num_classes - 1})")
    labels = [class_id] * num if isinstance(class_id, int) else list(class_id)
    if len(labels) != num:
        raise InputError(f"{len(labels)} classes for {num} samples")
    return torch.cat([start, torch.tensor([[layout.class_id(c)] for c in labels], dtype=torch.long)], dim=1)


@torch.no_grad()
def sample_codes(
    prior: Model,
    num: int,
    *,
    class_id: int | Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Sample ``num`` code grids (num, h*w) from an autoregressive prior, one code per step on its KV cache.

    ``guidance_scale`` s > 1 turns on classifier-free guidance (for a prior trained
    with ``class_dropout``): every step runs the rows twice, with their class and
    with ``<class_none>``, and draws from ``u + s * (c - u)`` over the two rows'
    logits c and u, which sharpens what sets the class apart; s = 1 samples the
    conditional distribution itself (with ``generate``). The start, pad and class
    tokens are never drawn, so every sampled id is a code. Raises
    :class:`~unimodel.errors.InputError` for a prior that is not a causal decoder.
    """
    layout = image_tokenizer_of(prior).layout
    if not is_autoregressive(prior):
        raise InputError(
            f"sample_codes draws code by code from a causal decoder (trained with clm); {_kind(prior)}"
            + (": sample it with sample_codes_parallel" if prior.decoder is None else "")
        )
    if num < 1:
        raise InputError(f"num must be at least 1, got {num}")
    _check_guidance(layout, guidance_scale)
    _check_sampling_memory(prior, layout, num, guidance_scale != 1.0, parallel=False)
    ids = prompts(layout, num, class_id)
    if guidance_scale == 1.0:
        out = prior.generate(
            ids,
            do_sample=True,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            max_new_tokens=layout.num_positions,
            suppress_tokens=list(range(layout.num_codes, layout.vocab_size)),
        )
        return out[:, -layout.num_positions :]
    _check_draw(temperature, top_k)
    return _guided_codes(prior, ids.to(prior.device), guidance_scale, temperature, top_k, seed)


def _check_sampling_memory(prior: Model, layout: CodeLayout, num: int, guided: bool, *, parallel: bool) -> None:
    """Refuse, before anything is allocated, ``num`` samples (twice the rows when guided) that need more memory
    than is available: the decoder's cache and logits (autoregressive, as ``generate`` estimates them), or one
    pass's activations and code logits (parallel)."""
    from types import SimpleNamespace

    from unimodel.bounds import check_generation_memory, check_memory

    rows = num * (2 if guided else 1)
    if not parallel:
        ids = torch.empty((rows, layout.prefix_length), dtype=torch.long, device="meta")
        settings = SimpleNamespace(num_beams=1, num_return_sequences=1, max_length=layout.sequence_length)
        check_generation_memory(prior, ids, settings)
        return
    assert prior.encoder is not None
    width = getattr(prior.encoder, "d_model", 0)
    per_position = (8 * width + 3 * layout.num_codes) * 4  # hidden states of a pass, fp32 code logits and draws
    check_memory(
        rows * layout.sequence_length * per_position,
        f"parallel sampling ({num} grids{', guided' if guided else ''})",
        device=prior.device,
        at_least=True,
        fix="Sample fewer grids per call.",
    )


def _check_draw(temperature: float, top_k: int | None) -> None:
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")


def _keep_top_k(logits: Tensor, top_k: int | None) -> Tensor:
    """Logits (..., K) with all but the ``top_k`` largest of each row set to -inf (all kept when ``None``)."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def _check_guidance(layout: CodeLayout, scale: float) -> None:
    if not math.isfinite(scale) or scale < 1.0:
        raise InputError(f"guidance_scale must be at least 1 (1: no guidance), got {scale:g}")
    if scale != 1.0:
        if not layout.num_classes:
            raise InputError("classifier-free guidance steers towards a class; this prior is unconditional")
        layout.null_class_id  # noqa: B018 -- raises, with the fix, for a prior trained without <class_none>


def _guide(logits: Tensor, scale: float) -> Tensor:
    """Rows (2N, ...) = N conditional rows, then the same N with ``<class_none>`` -> guided (N, ...)."""
    cond, free = logits.chunk(2, dim=0)
    return free + scale * (cond - free)


def _without_class(ids: Tensor, layout: CodeLayout) -> Tensor:
    """(N, L) -> (2N, L): the rows, then the same rows with ``<class_none>`` in the class slot."""
    free = ids.clone()
    free[:, 1] = layout.null_class_id
    return torch.cat([ids, free])


def _guided_codes(prior: Model, ids: Tensor, scale: float, temperature: float, top_k: int | None, seed: int) -> Tensor:
    """Classifier-free guided ancestral sampling on the decoder's cache: (N, h*w) codes."""
    from unimodel.generation.incremental import GenerationInputs, IncrementalDecoder

    layout = image_tokenizer_of(prior).layout
    both = _without_class(ids, layout)
    was = prior.training
    prior.eval()
    try:
        inputs = GenerationInputs(input_ids=both, attention_mask=None, decoder_input_ids=both)
        decoder = IncrementalDecoder(prior, inputs, capacity=layout.sequence_length)
        g = torch.Generator(device=ids.device).manual_seed(seed)
        logits = decoder.prefill()
        codes = []
        for step in range(layout.num_positions):
            guided = _keep_top_k(_guide(logits[:, : layout.num_codes], scale), top_k) / temperature
            drawn = torch.multinomial(torch.softmax(guided, dim=-1), 1, generator=g).squeeze(1)
            codes.append(drawn)
            if step + 1 < layout.num_positions:
                logits = decoder.step(torch.cat([drawn, drawn]))
    finally:
        prior.train(was)
    return torch.stack(codes, dim=1)


@torch.no_grad()
def sample_codes_parallel(
    prior: Model,
    num: int,
    *,
    class_id: int | Sequence[int] | None = None,
    iterations: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    choice_temperature: float = 4.5,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> Tensor:
    """Sample ``num`` code grids (num, h*w) from a bidirectional prior (``masked_codes``) MaskGIT's way.

    All codes start masked. Each of ``iterations`` rounds predicts every masked
    code at once (a draw from the prior's distribution at ``temperature``,
    restricted to codes, and to the ``top_k`` likeliest when given), keeps the
    surest and masks the rest again, fewer each round by the cosine schedule: before
    round t of T, ``floor(h*w * cos(pi/2 * t/T))`` codes are masked; a code once
    kept stays, and after round T every code is filled. The confidence is the
    draw's log-probability plus Gumbel noise scaled by
    ``choice_temperature * (1 - t / iterations)`` (MaskGIT's annealed
    randomness). ``guidance_scale`` > 1: classifier-free guidance, as in
    :func:`sample_codes` (each pass runs the grids with and without their class).
    The loop is :func:`unimodel.generation.refinement.refine`,
    the one mask-predict decoding uses. Raises :class:`~unimodel.errors.InputError`
    for a prior that is not a bidirectional encoder.
    """
    layout = image_tokenizer_of(prior).layout
    if is_autoregressive(prior) or prior.encoder is None or prior.decoder is not None:
        raise InputError(
            "sample_codes_parallel fills masked codes with a bidirectional encoder (trained with masked_codes); "
            f"{_kind(prior)}" + (": sample it with sample_codes" if is_autoregressive(prior) else "")
        )
    if num < 1:
        raise InputError(f"num must be at least 1, got {num}")
    if iterations < 1:
        raise InputError(f"iterations must be at least 1, got {iterations}")
    _check_draw(temperature, top_k)
    _check_guidance(layout, guidance_scale)
    guided = guidance_scale != 1.0
    _check_sampling_memory(prior, layout, num, guided, parallel=True)
    was = prior.training
    prior.eval()
    device = prior.device
    g = torch.Generator(device=device).manual_seed(seed)
    prefix = prompts(layout, num, class_id).to(device)
    n = layout.num_positions
    grid = torch.cat([prefix, torch.full((num, n), layout.mask_id, dtype=torch.long, device=device)], dim=1)
    open_positions = torch.zeros_like(grid, dtype=torch.bool)
    open_positions[:, prefix.shape[1] :] = True

    def predict(tokens: Tensor, positions: Tensor | None, step: int) -> tuple[Tensor, Tensor]:
        # the LM head runs only where codes are predicted; its rows come in position order
        where = open_positions if positions is None else torch.zeros_like(open_positions).scatter_(1, positions, True)
        if guided:
            tokens_in, where = _without_class(tokens, layout), where.repeat(2, 1)
        else:
            tokens_in = tokens
        flat = prior(input_ids=tokens_in, logits_at=where, return_logits=True).logits[:, : layout.num_codes].float()
        logits = flat.reshape(tokens_in.shape[0], -1, layout.num_codes)  # (N, Kpos, K), positions ascending
        if guided:
            logits = _guide(logits, guidance_scale)
        if positions is not None:  # back to the order of ``positions``
            order = positions.argsort(dim=1).argsort(dim=1)
            logits = logits.gather(1, order[..., None].expand(-1, -1, logits.shape[-1]))
        logp = torch.log_softmax(_keep_top_k(logits, top_k) / temperature, dim=-1)
        # inverse-CDF draw: one uniform per position (multinomial draws one exponential per code)
        cdf = logp.exp().cumsum(-1)
        u = torch.rand((*cdf.shape[:-1], 1), generator=g, device=device) * cdf[..., -1:]
        drawn = torch.searchsorted(cdf, u).squeeze(-1).clamp_max(layout.num_codes - 1)
        score = logp.gather(-1, drawn[..., None]).squeeze(-1)
        noise = -torch.log(-torch.log(torch.rand(score.shape, generator=g, device=device).clamp_min(1e-20)))
        confidence = score + choice_temperature * (1 - step / iterations) * noise
        if positions is None:  # the first pass answers for every position (the prefix's entries are ignored)
            scores = torch.zeros(tokens.shape, device=device).masked_scatter(open_positions, confidence)
            return tokens.masked_scatter(open_positions, drawn), scores
        return drawn, confidence

    try:
        out = refine(
            predict,
            grid,
            open_positions,
            mask_id=layout.mask_id,
            iterations=iterations,
            schedule=cosine_schedule,
            keep_revealed=True,
            early_stop=False,
        )
    finally:
        prior.train(was)
    return out.tokens[:, -n:]


def is_autoregressive(prior: Model) -> bool:
    """Whether ``prior`` is a causal decoder alone (sampled code by code); otherwise only an encoder alone, a
    bidirectional prior, can be sampled (in parallel)."""
    return prior.encoder is None and prior.decoder is not None and bool(getattr(prior.decoder, "is_causal", False))


def _kind(prior: Model) -> str:
    """What kind of network ``prior`` is, named by its preset (or family) and objective."""
    name, objective = prior.preset or prior.name, prior.objective_name
    if is_autoregressive(prior):
        return f"{name!r} is a causal decoder (objective {objective!r})"
    if prior.decoder is None:
        return f"{name!r} is an encoder (objective {objective!r})"
    what = "an encoder-decoder" if prior.encoder is not None else "a non-causal decoder"
    return f"{name!r} is {what} (objective {objective!r}), which neither sampler can draw codes from"


def sample_images(prior: Model, num: int, **options: Any) -> Tensor:
    """Sample and decode: (num, C, H, W) images in [0, 1]; a causal prior code by code (options as
    :func:`sample_codes`), an encoder (``masked_codes``) by parallel decoding (as :func:`sample_codes_parallel`)."""
    sampler = sample_codes if is_autoregressive(prior) else sample_codes_parallel
    return image_tokenizer_of(prior).decode(sampler(prior, num, **options))


__all__ = [
    "LINK_KEY",
    "CodeLayout",
    "ImageTokenizer",
    "attach_image_tokenizer",
    "checkpoint_digest",
    "image_tokenizer_of",
    "is_autoregressive",
    "prompts",
    "sample_codes",
    "sample_codes_parallel",
    "sample_images",
]
