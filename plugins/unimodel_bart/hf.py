"""Hugging Face ``BartForConditionalGeneration`` folders <-> the unimodel BART family.

HF keeps separate q/k/v projections; unimodel's attention fuses them
(``attn.qkv`` = [q; k; v], ``cross.kv`` = [k; v]), so they are concatenated on
import and split on export. HF ties ``model.{encoder,decoder}.embed_tokens`` and
``lm_head`` to ``model.shared`` and does not save them; folders that carry the
copies, or whose keys lack the ``model.`` prefix (``BartModel``), are read too.
With ``tie_word_embeddings`` false HF uses three separate matrices (encoder,
decoder, LM head) and leaves ``model.shared`` unused; so does unimodel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import CheckpointError
from unimodel.hf import HFConverter, pop_known, strip_prefix
from unimodel_bart.config import BartConfig

if TYPE_CHECKING:
    from unimodel.model import Model

_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "tanh": "tanh"}

# unimodel block module -> HF layer module(s); several HF modules are concatenated on dim 0
_SELF = {
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.out": ("self_attn.out_proj",),
    "norm_attn": ("self_attn_layer_norm",),
    "ffn.up": ("fc1",),
    "ffn.down": ("fc2",),
    "norm_ffn": ("final_layer_norm",),
}
_CROSS = {
    "cross.q": ("encoder_attn.q_proj",),
    "cross.kv": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "cross.out": ("encoder_attn.out_proj",),
    "norm_cross": ("encoder_attn_layer_norm",),
}
_STACK_TOP = ("embed_positions.weight", "layernorm_embedding.weight", "layernorm_embedding.bias")
_SIDES = ("encoder", "decoder")

# HF BartConfig defaults, for keys a config.json leaves out
_DEFAULTS = {
    "vocab_size": 50265,
    "max_position_embeddings": 1024,
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "activation_function": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "init_std": 0.02,
    "scale_embedding": False,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "forced_eos_token_id": 2,
}


def _get(c: Mapping[str, Any], key: str) -> Any:
    v = c.get(key)
    return _DEFAULTS[key] if v is None and key not in c else v


def _token(c: Mapping[str, Any], key: str) -> int | None:
    """A special-token id; lists give their first id; ids outside the vocabulary are dropped."""
    v = _get(c, key)
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, int) and 0 <= v < _get(c, "vocab_size"):
        return v
    return None


def _is_base_model(c: Mapping[str, Any]) -> bool:
    """A ``BartModel`` folder: no LM head, no ``final_logits_bias``."""
    return list(c.get("architectures") or []) == ["BartModel"]


def _tied(c: Mapping[str, Any]) -> bool:
    return c.get("tie_word_embeddings", True) is not False


class BartConverter(HFConverter):
    model_types = ("bart",)

    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        c = hf_config
        act = _get(c, "activation_function")
        if act not in _ACT_FROM_HF:
            raise CheckpointError(
                f"BART activation_function {act!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}"
            )
        return {
            "name": "bart",
            "vocab_size": _get(c, "vocab_size"),
            "max_positions": _get(c, "max_position_embeddings"),
            "d_model": _get(c, "d_model"),
            "n_layers": _get(c, "encoder_layers"),
            "n_decoder_layers": _get(c, "decoder_layers"),
            "n_heads": _get(c, "encoder_attention_heads"),
            "n_decoder_heads": _get(c, "decoder_attention_heads"),
            "d_ff": _get(c, "encoder_ffn_dim"),
            "d_decoder_ff": _get(c, "decoder_ffn_dim"),
            "activation": _ACT_FROM_HF[act],
            "dropout": float(_get(c, "dropout")),
            "attn_dropout": float(_get(c, "attention_dropout")),
            "act_dropout": float(_get(c, "activation_dropout")),
            "layerdrop": float(_get(c, "encoder_layerdrop")),
            "decoder_layerdrop": float(_get(c, "decoder_layerdrop")),
            "scale_embedding": bool(_get(c, "scale_embedding")),
            "tie_embeddings": _tied(c),
            "init_std": float(_get(c, "init_std")),
            "pad_token_id": _token(c, "pad_token_id"),
            "bos_token_id": _token(c, "bos_token_id"),
            "eos_token_id": _token(c, "eos_token_id"),
            "decoder_start_token_id": _token(c, "decoder_start_token_id"),
            "forced_eos_token_id": _token(c, "forced_eos_token_id"),
            "objective": "features" if _is_base_model(c) else "text_infilling",
        }

    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
        prefix = "model." if any(k.startswith("model.") for k in tensors) else ""
        src = strip_prefix(tensors, "model.")  # BartForConditionalGeneration has it, BartModel does not
        original = {k.removeprefix("model."): k for k in tensors}  # for naming leftovers as the file does
        pop_known(src, ("encoder.version", "decoder.version"))  # fairseq leftovers HF ignores too
        out: dict[str, Tensor] = {}
        missing: list[str] = []
        has_head = not _is_base_model(hf_config)

        def take(*theirs: str) -> Tensor | None:
            absent = [k for k in theirs if k not in src]
            if absent:
                missing.extend(prefix + k for k in absent)
                return None
            parts = [src.pop(k) for k in theirs]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

        copies = {side: src.pop(f"{side}.embed_tokens.weight", None) for side in _SIDES}
        shared = src.pop("shared.weight", None)
        head = src.pop("lm_head.weight", None)
        if _tied(hf_config):
            # the copies and lm_head are the same matrix; read whichever the folder kept
            emb = next((t for t in (shared, copies["encoder"], copies["decoder"]) if t is not None), None)
            if emb is None:
                missing.append(prefix + "shared.weight")
            else:
                out["encoder.embed_tokens.weight"] = emb
        else:
            for side in _SIDES:
                emb = copies[side] if copies[side] is not None else shared
                if emb is None:
                    missing.append(f"{prefix}{side}.embed_tokens.weight")
                else:
                    out[f"{side}.embed_tokens.weight"] = emb
            if has_head:
                if head is None:
                    missing.append("lm_head.weight")
                else:
                    out["heads.lm.weight"] = head
        for side in _SIDES:
            for key in _STACK_TOP:
                t = take(f"{side}.{key}")
                if t is not None:
                    out[f"{side}.{key}"] = t
            modules = {**_SELF, **(_CROSS if side == "decoder" else {})}
            for i in range(_get(hf_config, f"{side}_layers")):
                for ours, theirs in modules.items():
                    for param in ("weight", "bias"):
                        t = take(*(f"{side}.layers.{i}.{m}.{param}" for m in theirs))
                        if t is not None:
                            out[f"{side}.blocks.{i}.{ours}.{param}"] = t
        bias = src.pop("final_logits_bias", None)
        if has_head:
            # HF zero-fills a missing final_logits_bias (_keys_to_ignore_on_load_missing); so do we
            out["heads.lm.logits_bias"] = bias if bias is not None else torch.zeros(1, _get(hf_config, "vocab_size"))
        elif bias is not None:
            src["final_logits_bias"] = bias
        leftovers = {original.get(k, k): v for k, v in src.items()}
        if missing:
            problems = f"missing keys: {', '.join(missing)}"
            if leftovers:
                problems += f". Unexpected keys: {', '.join(sorted(leftovers))}"
            raise CheckpointError(f"Hugging Face BART weights do not fit their config.json. {problems}")
        out.update(leftovers)  # the loader reports them as unexpected
        return out

    def config_to_hf(self, model: Model) -> dict[str, Any]:
        c = model.config
        assert isinstance(c, BartConfig)
        if not c.causal_decoder:
            raise CheckpointError(
                "a BART model with a non-causal decoder has no BartForConditionalGeneration equivalent"
            )
        return {
            "architectures": ["BartForConditionalGeneration"],
            "model_type": "bart",
            "is_encoder_decoder": True,
            "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_positions,
            "d_model": c.d_model,
            "encoder_layers": c.n_layers,
            "decoder_layers": c.dec_layers,
            "encoder_attention_heads": c.n_heads,
            "decoder_attention_heads": c.dec_heads,
            "encoder_ffn_dim": c.d_ff,
            "decoder_ffn_dim": c.dec_ff,
            "activation_function": _ACT_TO_HF[c.activation],
            "dropout": c.dropout,
            "attention_dropout": c.attn_dropout,
            "activation_dropout": c.act_dropout,
            "encoder_layerdrop": c.layerdrop,
            "decoder_layerdrop": c.decoder_layerdrop,
            "init_std": c.init_std,
            "scale_embedding": c.scale_embedding,
            "tie_word_embeddings": c.tie_embeddings,
            "pad_token_id": c.pad_token_id,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "decoder_start_token_id": c.decoder_start_token_id,
            "forced_eos_token_id": c.forced_eos_token_id,
            "use_cache": True,
            "dtype": "float32",
        }

    def weights_to_hf(self, model: Model) -> dict[str, Tensor]:
        c = model.config
        assert isinstance(c, BartConfig)
        state = model.state_dict()
        out: dict[str, Tensor] = {"model.shared.weight": state["encoder.embed_tokens.weight"]}
        if not c.tie_embeddings:
            # HF keeps an unused model.shared beside the three matrices; a copy, as safetensors refuses aliases
            out["model.shared.weight"] = out["model.shared.weight"].clone()
            for side in _SIDES:
                out[f"model.{side}.embed_tokens.weight"] = state[f"{side}.embed_tokens.weight"]
            if "heads.lm.weight" in state:
                out["lm_head.weight"] = state["heads.lm.weight"]
        for side in _SIDES:
            for key in _STACK_TOP:
                out[f"model.{side}.{key}"] = state[f"{side}.{key}"]
            modules = {**_SELF, **(_CROSS if side == "decoder" else {})}
            for i in range(c.n_layers if side == "encoder" else c.dec_layers):
                for ours, theirs in modules.items():
                    for param in ("weight", "bias"):
                        parts = state[f"{side}.blocks.{i}.{ours}.{param}"].chunk(len(theirs), dim=0)
                        for m, t in zip(theirs, parts):
                            out[f"model.{side}.layers.{i}.{m}.{param}"] = t
        bias = state.get("heads.lm.logits_bias")
        out["final_logits_bias"] = bias if bias is not None else torch.zeros(1, c.vocab_size)
        return {k: v.contiguous() for k, v in out.items()}
