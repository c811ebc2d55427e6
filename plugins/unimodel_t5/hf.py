"""Hugging Face ``T5ForConditionalGeneration`` folders <-> the unimodel T5 family.

Layout differences: HF keeps separate ``q``/``k``/``v`` projections where
unimodel's attention fuses them (``qkv`` for self-attention, ``kv`` for
cross-attention), and stores each stack's relative bias in its first block.

The LM head follows transformers 5.x: the output rescale is
``scale_decoder_outputs`` when config.json has it, else
``tie_word_embeddings is not False``; the head matrix is ``lm_head.weight`` when
the file has one, else the shared embedding. Since 5.x forces
``tie_word_embeddings`` to true in every config it writes, only the file tells
whether the head is really tied, and the config is read before the weights; so a
folder loads tied when it scales its outputs (v1.0, whose head is the embedding)
and untied otherwise (v1.1, trained with its own head; an absent
``lm_head.weight`` then starts as a copy of the embedding, which gives the same
logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import CheckpointError
from unimodel.hf import HFConverter
from unimodel_t5.config import T5Config, parse_feed_forward

if TYPE_CHECKING:
    from unimodel.model import Model

_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Some old checkpoints carry a cross-attention bias table that T5 never uses.
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_TIED_HEAD_MISMATCH = (
    "{where}: lm_head.weight differs from the shared embedding, but config.json asks for a tied head with "
    'scaled decoder outputs. To load the two separately, set "tie_word_embeddings": false and '
    '"scale_decoder_outputs": true in config.json'
)


def _token(hf_config: Mapping[str, Any], key: str) -> int | None:
    """A special-token id (the first of a list), dropped when outside the vocabulary."""
    v = hf_config.get(key)
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, int) and 0 <= v < hf_config.get("vocab_size", 32128):
        return v
    return None


def scales_outputs(hf_config: Mapping[str, Any]) -> bool:
    """transformers 5.x's rule for the ``d_model ** -0.5`` rescale before the LM head."""
    return bool(hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True) is not False))


def _layer_map(prefix: str, hf_prefix: str, *, cross: bool, gated: bool) -> dict[str, tuple[str, ...]]:
    """unimodel key -> the HF keys concatenated (along dim 0) to make it, for one block."""
    ffn_layer = 2 if cross else 1
    ff = f"{hf_prefix}.layer.{ffn_layer}.DenseReluDense"
    sa = f"{hf_prefix}.layer.0.SelfAttention"
    out: dict[str, tuple[str, ...]] = {
        f"{prefix}.norm_attn.weight": (f"{hf_prefix}.layer.0.layer_norm.weight",),
        f"{prefix}.attn.qkv.weight": (f"{sa}.q.weight", f"{sa}.k.weight", f"{sa}.v.weight"),
        f"{prefix}.attn.out.weight": (f"{sa}.o.weight",),
        f"{prefix}.norm_ffn.weight": (f"{hf_prefix}.layer.{ffn_layer}.layer_norm.weight",),
        f"{prefix}.ffn.down.weight": (f"{ff}.wo.weight",),
    }
    if gated:
        out[f"{prefix}.ffn.gate.weight"] = (f"{ff}.wi_0.weight",)
        out[f"{prefix}.ffn.up.weight"] = (f"{ff}.wi_1.weight",)
    else:
        out[f"{prefix}.ffn.up.weight"] = (f"{ff}.wi.weight",)
    if cross:
        ca = f"{hf_prefix}.layer.1.EncDecAttention"
        out[f"{prefix}.norm_cross.weight"] = (f"{hf_prefix}.layer.1.layer_norm.weight",)
        out[f"{prefix}.cross.q.weight"] = (f"{ca}.q.weight",)
        out[f"{prefix}.cross.kv.weight"] = (f"{ca}.k.weight", f"{ca}.v.weight")
        out[f"{prefix}.cross.out.weight"] = (f"{ca}.o.weight",)
    return out


def key_map(n_layers: int, n_decoder_layers: int, *, gated: bool) -> dict[str, tuple[str, ...]]:
    """Every unimodel T5 weight except the embedding and the LM head -> its HF source keys."""
    out: dict[str, tuple[str, ...]] = {
        "encoder.relative_bias.weight": ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
        "encoder.final_norm.weight": ("encoder.final_layer_norm.weight",),
        "decoder.relative_bias.weight": ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",),
        "decoder.final_norm.weight": ("decoder.final_layer_norm.weight",),
    }
    for i in range(n_layers):
        out.update(_layer_map(f"encoder.blocks.{i}", f"encoder.block.{i}", cross=False, gated=gated))
    for i in range(n_decoder_layers):
        out.update(_layer_map(f"decoder.blocks.{i}", f"decoder.block.{i}", cross=True, gated=gated))
    return out


class T5Converter(HFConverter):
    model_types = ("t5",)

    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        c = hf_config
        feed_forward = c.get("feed_forward_proj", "relu")
        if not isinstance(feed_forward, str) or parse_feed_forward(feed_forward) is None:
            raise CheckpointError(f"T5 feed_forward_proj {feed_forward!r} is not supported")
        if c.get("is_encoder_decoder", True) is False or c.get("is_decoder", False):
            raise CheckpointError("only encoder-decoder T5 folders (T5ForConditionalGeneration) are supported")
        n_layers = c.get("num_layers", 6)
        scale = scales_outputs(c)
        pad = _token(c, "pad_token_id")
        start = _token(c, "decoder_start_token_id")
        return {
            "name": "t5",
            "vocab_size": c.get("vocab_size", 32128),
            "d_model": c.get("d_model", 512),
            "head_dim": c.get("d_kv", 64),
            "d_ff": c.get("d_ff", 2048),
            "n_layers": n_layers,
            "n_decoder_layers": c.get("num_decoder_layers") or n_layers,
            "n_heads": c.get("num_heads", 8),
            "relative_attention_num_buckets": c.get("relative_attention_num_buckets", 32),
            "relative_attention_max_distance": c.get("relative_attention_max_distance", 128),
            "dropout": c.get("dropout_rate", 0.1),
            "layer_norm_eps": c.get("layer_norm_epsilon", 1e-6),
            "feed_forward": feed_forward,
            "tie_embeddings": scale and c.get("tie_word_embeddings", True) is not False,
            "scale_decoder_outputs": scale,
            "init_factor": c.get("initializer_factor", 1.0),
            "pad_token_id": pad,
            "eos_token_id": _token(c, "eos_token_id"),
            "decoder_start_token_id": start if start is not None else pad,
            "objective": "span_corruption",
        }

    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
        spec = self.spec_from_hf(hf_config)
        src = dict(tensors)
        for key in _IGNORED:
            src.pop(key, None)
        gated = parse_feed_forward(spec["feed_forward"])[1]  # type: ignore[index]
        out: dict[str, Tensor] = {}
        missing: list[str] = []
        for ours, theirs in key_map(spec["n_layers"], spec["n_decoder_layers"], gated=gated).items():
            absent = [k for k in theirs if k not in src]
            if absent:
                missing += absent
                continue
            parts = [src.pop(k) for k in theirs]
            if len({p.shape[1:] for p in parts}) > 1:
                shapes = ", ".join(f"{k} {tuple(p.shape)}" for k, p in zip(theirs, parts))
                raise CheckpointError(f"Hugging Face T5 checkpoint has projections of unequal widths: {shapes}")
            out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        # Hub files hold any subset of the embedding's aliases; transformers ties them all to "shared".
        embeddings = [src.pop(k) for k in _EMBEDDING_KEYS if k in src]
        if not embeddings:
            missing.append("shared.weight")
        head = src.pop("lm_head.weight", None)
        if missing:
            unexpected = f"; unexpected keys: {', '.join(sorted(src))}" if src else ""
            raise CheckpointError(
                "Hugging Face T5 checkpoint does not fit its config.json: "
                f"missing keys: {', '.join(missing)}{unexpected}"
            )
        shared = embeddings[0]
        out["encoder.embed_tokens.weight"] = shared
        if spec["tie_embeddings"]:
            if head is not None and not torch.equal(head, shared):
                raise CheckpointError(_TIED_HEAD_MISMATCH.format(where="Hugging Face T5 checkpoint"))
        else:
            out["heads.lm.weight"] = head if head is not None else shared.clone()
        out.update(src)  # anything left is reported as unexpected by the loader
        return out

    def config_to_hf(self, model: Model) -> dict[str, Any]:
        c = model.config
        assert isinstance(c, T5Config)
        if c.memory_dim is not None and c.memory_dim != c.d_model:
            raise CheckpointError("a T5 decoder reading a memory narrower or wider than d_model has no HF equivalent")
        if not c.causal_decoder:
            raise CheckpointError("a T5 model with a non-causal decoder has no T5ForConditionalGeneration equivalent")
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": c.vocab_size,
            "d_model": c.d_model,
            "d_kv": c.head_dim,
            "d_ff": c.d_ff,
            "num_layers": c.n_layers,
            "num_decoder_layers": c.dec_layers,
            "num_heads": c.n_heads,
            "relative_attention_num_buckets": c.relative_attention_num_buckets,
            "relative_attention_max_distance": c.relative_attention_max_distance,
            "dropout_rate": c.dropout,
            "layer_norm_epsilon": c.layer_norm_eps,
            "feed_forward_proj": c.feed_forward,
            "initializer_factor": c.init_factor,
            "is_encoder_decoder": True,
            # Both written explicitly: transformers 5.x reads the rescale from scale_decoder_outputs and
            # keeps a separately stored lm_head.weight untied.
            "tie_word_embeddings": c.tie_embeddings,
            "scale_decoder_outputs": c.scales_outputs,
            "pad_token_id": c.pad_token_id,
            "eos_token_id": c.eos_token_id,
            "decoder_start_token_id": c.start_token_id,
            "use_cache": True,
            "dtype": "float32",
        }

    def weights_to_hf(self, model: Model) -> dict[str, Tensor]:
        c = model.config
        assert isinstance(c, T5Config)
        state = model.state_dict()
        gated = parse_feed_forward(c.feed_forward)[1]  # type: ignore[index]
        out: dict[str, Tensor] = {"shared.weight": state["encoder.embed_tokens.weight"]}
        for ours, theirs in key_map(c.n_layers, c.dec_layers, gated=gated).items():
            parts = state[ours].chunk(len(theirs), dim=0) if len(theirs) > 1 else (state[ours],)
            for key, t in zip(theirs, parts):
                out[key] = t.contiguous()
        if not c.tie_embeddings:
            if "heads.lm.weight" not in state:
                raise CheckpointError(
                    f"this untied T5 model has no LM head (objective {model.objective_name!r}); "
                    "build it with an objective that keeps the LM head, e.g. span_corruption"
                )
            out["lm_head.weight"] = state["heads.lm.weight"]
        return out
