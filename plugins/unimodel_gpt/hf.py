"""Hugging Face ``GPT2LMHeadModel`` folders <-> the unimodel GPT family.

HF GPT-2 stores its projections as ``Conv1D`` with weight ``[in, out]``;
unimodel uses ``nn.Linear`` (``[out, in]``), so those weights are transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from unimodel.errors import CheckpointError
from unimodel.hf import HFConverter, pop_known, strip_prefix
from unimodel_gpt.model import GPTConfig

if TYPE_CHECKING:
    from unimodel.model import Model

_ACT_FROM_HF = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "tanh": "tanh"}

# unimodel block key -> (HF key, transposed)
_LAYER_KEYS = {
    "norm_attn.weight": ("ln_1.weight", False),
    "norm_attn.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.out.weight": ("attn.c_proj.weight", True),
    "attn.out.bias": ("attn.c_proj.bias", False),
    "norm_ffn.weight": ("ln_2.weight", False),
    "norm_ffn.bias": ("ln_2.bias", False),
    "ffn.up.weight": ("mlp.c_fc.weight", True),
    "ffn.up.bias": ("mlp.c_fc.bias", False),
    "ffn.down.weight": ("mlp.c_proj.weight", True),
    "ffn.down.bias": ("mlp.c_proj.bias", False),
}
_TOP_KEYS = {
    "decoder.wte.weight": "wte.weight",
    "decoder.wpe.weight": "wpe.weight",
    "decoder.norm.weight": "ln_f.weight",
    "decoder.norm.bias": "ln_f.bias",
}


def _token(hf_config: Mapping[str, Any], key: str) -> int | None:
    """A special-token id, dropped when it lies outside the vocabulary (as tiny test configs have)."""
    v = hf_config.get(key)
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, int) and 0 <= v < hf_config.get("vocab_size", 50257):
        return v
    return None


class GPT2Converter(HFConverter):
    model_types = ("gpt2",)

    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        c = hf_config
        act = c.get("activation_function", "gelu_new")
        if act not in _ACT_FROM_HF:
            raise CheckpointError(
                f"GPT-2 activation_function {act!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}"
            )
        if c.get("add_cross_attention"):
            raise CheckpointError("GPT-2 folders with add_cross_attention are not supported")
        return {
            "name": "gpt",
            "vocab_size": c.get("vocab_size", 50257),
            "max_positions": c.get("n_positions", 1024),
            "d_model": c.get("n_embd", 768),
            "n_layers": c.get("n_layer", 12),
            "n_heads": c.get("n_head", 12),
            "d_ff": c.get("n_inner"),
            "activation": _ACT_FROM_HF[act],
            "layer_norm_eps": c.get("layer_norm_epsilon", 1e-5),
            "dropout": c.get("resid_pdrop", 0.1),
            "attn_dropout": c.get("attn_pdrop", 0.1),
            "tie_embeddings": c.get("tie_word_embeddings", True) is not False,
            "scale_attn_weights": c.get("scale_attn_weights", True),
            "scale_attn_by_inverse_layer_idx": c.get("scale_attn_by_inverse_layer_idx", False),
            "bos_token_id": _token(c, "bos_token_id"),
            "eos_token_id": _token(c, "eos_token_id"),
            "pad_token_id": _token(c, "pad_token_id"),
            "objective": "clm",
        }

    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
        src = strip_prefix(tensors, "transformer.")  # hub files store both forms
        pop_known(src, (".attn.bias", ".attn.masked_bias"))  # causal-mask buffers
        out: dict[str, Tensor] = {}
        for ours, theirs in _TOP_KEYS.items():
            if theirs in src:
                out[ours] = src.pop(theirs)
        for i in range(hf_config.get("n_layer", 12)):
            for ours, (theirs, transposed) in _LAYER_KEYS.items():
                key = f"h.{i}.{theirs}"
                if key in src:
                    t = src.pop(key)
                    out[f"decoder.blocks.{i}.{ours}"] = t.t() if transposed else t
        head = src.pop("lm_head.weight", None)
        if head is not None and hf_config.get("tie_word_embeddings", True) is False:
            out["heads.lm.weight"] = head
        out.update(src)  # anything left is reported as unexpected by the loader
        return out

    def config_to_hf(self, model: Model) -> dict[str, Any]:
        c = model.config
        assert isinstance(c, GPTConfig)
        if c.memory_dim is not None:
            raise CheckpointError("a GPT decoder with cross-attention has no GPT2LMHeadModel equivalent")
        if not c.causal_decoder:
            raise CheckpointError("a GPT model with a non-causal decoder has no GPT2LMHeadModel equivalent")
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_positions": c.max_positions,
            "n_embd": c.d_model,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "n_inner": c.d_ff,
            "activation_function": _ACT_TO_HF[c.activation],
            "layer_norm_epsilon": c.layer_norm_eps,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.attn_dropout,
            "scale_attn_weights": c.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
            "tie_word_embeddings": c.tie_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "pad_token_id": c.pad_token_id,
            "dtype": "float32",
        }

    def weights_to_hf(self, model: Model) -> dict[str, Tensor]:
        c = model.config
        assert isinstance(c, GPTConfig)
        state = model.state_dict()
        out = {f"transformer.{theirs}": state[ours] for ours, theirs in _TOP_KEYS.items()}
        for i in range(c.n_layers):
            for ours, (theirs, transposed) in _LAYER_KEYS.items():
                t = state[f"decoder.blocks.{i}.{ours}"]
                out[f"transformer.h.{i}.{theirs}"] = (t.t() if transposed else t).contiguous()
        if not c.tie_embeddings:
            out["lm_head.weight"] = state["heads.lm.weight"]
        return out
