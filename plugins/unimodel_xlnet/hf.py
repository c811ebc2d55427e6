"""Hugging Face XLNet folders <-> the unimodel XLNet family.

Reads and writes ``XLNetLMHeadModel`` (``plm``), ``XLNetModel`` (no prefix, no head;
``features``), ``XLNetForSequenceClassification`` (``classify``: the sequence summary
becomes the encoder's pooler, ``logits_proj`` the head) and
``XLNetForTokenClassification`` (``tag``). transformers keeps each projection as a
(d_model, heads, head_dim) parameter used by einsum; unimodel keeps linear layers,
with keys and values fused into one ``kv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from unimodel.errors import CheckpointError
from unimodel.hf import HFConverter, hf_architecture, hf_num_labels, strip_prefix

_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "tanh": "tanh"}

# architecture -> (objective it loads with, whether it has the sequence summary)
_ARCHITECTURES = {
    "XLNetLMHeadModel": ("plm", False),
    "XLNetModel": ("features", False),
    "XLNetForSequenceClassification": ("classify", True),
    "XLNetForTokenClassification": ("tag", False),
}

_LAYER_KEYS = {  # unimodel layer key -> HF layer key
    "attn.r_w_bias": "rel_attn.r_w_bias",
    "attn.r_r_bias": "rel_attn.r_r_bias",
    "attn.r_s_bias": "rel_attn.r_s_bias",
    "attn.seg_embed": "rel_attn.seg_embed",
    "norm_attn.weight": "rel_attn.layer_norm.weight",
    "norm_attn.bias": "rel_attn.layer_norm.bias",
    "ffn.up.weight": "ff.layer_1.weight",
    "ffn.up.bias": "ff.layer_1.bias",
    "ffn.down.weight": "ff.layer_2.weight",
    "ffn.down.bias": "ff.layer_2.bias",
    "norm_ffn.weight": "ff.layer_norm.weight",
    "norm_ffn.bias": "ff.layer_norm.bias",
}


def _architecture(hf_config: Mapping[str, Any]) -> tuple[str, str, bool]:
    return hf_architecture(hf_config, _ARCHITECTURES, family="XLNet", default="XLNetLMHeadModel")


def _to_linear(w: Tensor) -> Tensor:
    """An einsum projection (D, H, hd) used as ``x @ w`` -> a linear weight (H * hd, D)."""
    return w.reshape(w.shape[0], -1).t().contiguous()


class XLNetConverter(HFConverter):
    model_types = ("xlnet",)

    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        c = hf_config
        _, objective, summary = _architecture(c)
        act = c.get("ff_activation", "gelu")
        if act not in _ACT_FROM_HF:
            raise CheckpointError(f"XLNet ff_activation {act!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}")
        summary_type = c.get("summary_type", "last")
        if summary and summary_type not in ("last", "first", "mean"):
            raise CheckpointError(f"XLNet summary_type {summary_type!r} is not supported; use last, first or mean")
        if summary and c.get("summary_proj_to_labels") and c.get("summary_use_proj", True):
            raise CheckpointError("XLNet summary_proj_to_labels = true is not supported (transformers cannot run it)")
        d_model, n_heads = c.get("d_model", 1024), c.get("n_head", 16)
        vocab = c.get("vocab_size", c.get("n_token", 32000))
        dropout = c.get("dropout", 0.1)
        mem_len = c.get("mem_len", 512)
        reuse_len = c.get("reuse_len")

        def token(key: str, default: int) -> int | None:
            value = c.get(key, default)
            if isinstance(value, list):
                value = value[0] if value else None
            return value if isinstance(value, int) and 0 <= value < vocab else None

        spec: dict[str, Any] = {
            "name": "xlnet",
            "vocab_size": vocab,
            "d_model": d_model,
            "n_layers": c.get("n_layer", 24),
            "n_heads": n_heads,
            "head_dim": c.get("d_head") or d_model // n_heads,
            "d_ff": c.get("d_inner", 4096),
            "activation": _ACT_FROM_HF[act],
            "layer_norm_eps": c.get("layer_norm_eps", 1e-12),
            "dropout": dropout,
            "attn_dropout": dropout,
            "act_dropout": dropout,
            "tie_embeddings": c.get("tie_word_embeddings", True) is not False,
            "init_std": c.get("initializer_range", 0.02),
            "attn_type": c.get("attn_type", "bi"),
            "mem_len": mem_len if mem_len else None,  # 0 and null both keep every position
            "reuse_len": reuse_len if reuse_len else None,
            "use_mems_eval": bool(c.get("use_mems_eval", True)),
            "use_mems_train": bool(c.get("use_mems_train", False)),
            "clamp_len": c.get("clamp_len", -1),
            "bi_data": bool(c.get("bi_data", False)),
            "same_length": bool(c.get("same_length", False)),
            # transformers keeps r_w/r_r/r_s biases per layer whatever untie_r says
            "untie_r": True,
            "add_pooler": summary,
            "summary_type": summary_type if summary else "last",
            "summary_use_proj": bool(c.get("summary_use_proj", True)),
            "summary_activation": c.get("summary_activation") or "identity",
            "pad_token_id": token("pad_token_id", 5),
            "bos_token_id": token("bos_token_id", 1),
            "eos_token_id": token("eos_token_id", 2),
            "objective": objective,
        }
        if objective in ("classify", "tag"):
            if c.get("problem_type") == "multi_label_classification":
                raise CheckpointError("XLNet multi-label classification (BCE loss) is not supported by 'classify'")
            head_dropout = c.get("summary_last_dropout", 0.1) if objective == "classify" else 0.0
            spec["objective"] = {"name": objective, "num_labels": hf_num_labels(c), "dropout": head_dropout}
        return spec

    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
        _, objective, summary = _architecture(hf_config)
        prefix = "decoder." if hf_config.get("attn_type", "bi") == "uni" else "encoder."
        src = strip_prefix(tensors, "transformer.")
        out: dict[str, Tensor] = {}
        for ours, theirs in (("embed_tokens.weight", "word_embedding.weight"), ("mask_emb", "mask_emb")):
            if theirs in src:
                out[prefix + ours] = src.pop(theirs)
        for i in range(hf_config.get("n_layer", 24)):
            pre, mine = f"layer.{i}.", f"{prefix}layers.{i}."
            for ours, theirs in _LAYER_KEYS.items():
                if pre + theirs in src:
                    out[mine + ours] = src.pop(pre + theirs)
            for name in ("q", "r"):
                if f"{pre}rel_attn.{name}" in src:
                    out[f"{mine}attn.{name}.weight"] = _to_linear(src.pop(f"{pre}rel_attn.{name}"))
            if f"{pre}rel_attn.k" in src and f"{pre}rel_attn.v" in src:
                k, v = src.pop(f"{pre}rel_attn.k"), src.pop(f"{pre}rel_attn.v")
                out[f"{mine}attn.kv.weight"] = torch.cat([_to_linear(k), _to_linear(v)])
            if f"{pre}rel_attn.o" in src:
                o = src.pop(f"{pre}rel_attn.o")
                out[f"{mine}attn.o.weight"] = o.reshape(o.shape[0], -1).contiguous()
        if summary:
            for part in ("weight", "bias"):
                if f"sequence_summary.summary.{part}" in src:
                    out[f"{prefix}summary.{part}"] = src.pop(f"sequence_summary.summary.{part}")
        heads = {
            "plm": ("lm_loss", "lm"),
            "classify": ("logits_proj", "classify.proj"),
            "tag": ("classifier", "tag.proj"),
        }
        if objective in heads:
            theirs, ours = heads[objective]
            if f"{theirs}.bias" in src:
                out[f"heads.{ours}.bias"] = src.pop(f"{theirs}.bias")
            weight = src.pop(f"{theirs}.weight", None)
            if weight is not None and (objective != "plm" or hf_config.get("tie_word_embeddings", True) is False):
                out[f"heads.{ours}.weight"] = weight  # a tied LM head's weight is the embedding
        out.update(src)  # anything left is reported as unexpected by the loader
        return out

    # ------------------------------------------------------------------ export
    def _architecture_of(self, model: Any) -> str:
        if "lm" in model.heads:
            return "XLNetLMHeadModel"
        for head, arch in (("classify", "XLNetForSequenceClassification"), ("tag", "XLNetForTokenClassification")):
            if head in model.heads:
                return arch
        return "XLNetModel"

    def config_to_hf(self, model: Any) -> dict[str, Any]:
        c = model.config
        head_dim, d_ff = c.dims
        if head_dim * c.n_heads != c.d_model:
            raise CheckpointError(
                f"transformers' XLNet needs head_dim * n_heads == d_model; this model has {head_dim} * {c.n_heads} "
                f"!= {c.d_model}"
            )
        arch = self._architecture_of(model)
        if arch == "XLNetForSequenceClassification" and not c.add_pooler:
            raise CheckpointError("XLNetForSequenceClassification needs the sequence summary; this model has none")
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": "xlnet",
            "vocab_size": c.vocab_size,
            "d_model": c.d_model,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "d_head": head_dim,
            "d_inner": d_ff,
            "ff_activation": _ACT_TO_HF[c.activation],
            "layer_norm_eps": c.layer_norm_eps,
            "dropout": c.dropout,
            "initializer_range": c.init_std,
            "attn_type": c.attn_type,
            "mem_len": c.mem_len,
            "reuse_len": c.reuse_len,
            "use_mems_eval": c.use_mems_eval,
            "use_mems_train": c.use_mems_train,
            "clamp_len": c.clamp_len,
            "bi_data": c.bi_data,
            "same_length": c.same_length,
            "untie_r": True,
            "summary_type": c.summary_type,
            "summary_use_proj": c.summary_use_proj,
            "summary_activation": None if c.summary_activation == "identity" else c.summary_activation,
            "pad_token_id": c.pad_token_id,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "tie_word_embeddings": c.tie_embeddings,
            "dtype": "float32",
        }
        if arch in ("XLNetForSequenceClassification", "XLNetForTokenClassification"):
            oc = model.objective.config
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(oc.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(oc.num_labels)}
            if arch == "XLNetForSequenceClassification":
                out["summary_last_dropout"] = oc.dropout
                out["problem_type"] = "regression" if oc.num_labels == 1 else "single_label_classification"
        return out

    def weights_to_hf(self, model: Any) -> dict[str, Tensor]:
        c = model.config
        state = model.state_dict()
        arch = self._architecture_of(model)
        stack = "decoder." if c.attn_type == "uni" else "encoder."
        pre = "" if arch == "XLNetModel" else "transformer."
        head_dim = c.dims[0]
        out = {
            pre + "word_embedding.weight": state[stack + "embed_tokens.weight"],
            pre + "mask_emb": state[stack + "mask_emb"],
        }
        for i in range(c.n_layers):
            mine, theirs = f"{stack}layers.{i}.", f"{pre}layer.{i}."
            for ours, hf in _LAYER_KEYS.items():
                out[theirs + hf] = state[mine + ours]
            k, v = state[mine + "attn.kv.weight"].chunk(2, dim=0)
            for name, w in (
                ("q", state[mine + "attn.q.weight"]),
                ("k", k),
                ("v", v),
                ("r", state[mine + "attn.r.weight"]),
            ):
                out[f"{theirs}rel_attn.{name}"] = w.t().reshape(c.d_model, c.n_heads, head_dim)
            out[f"{theirs}rel_attn.o"] = state[mine + "attn.o.weight"].reshape(c.d_model, c.n_heads, head_dim)
        if arch == "XLNetLMHeadModel":
            out["lm_loss.bias"] = state["heads.lm.bias"]
            if not c.tie_embeddings:
                out["lm_loss.weight"] = state["heads.lm.weight"]
        elif arch == "XLNetForSequenceClassification":
            if c.summary_use_proj:
                out.update({f"sequence_summary.summary.{p}": state[f"{stack}summary.{p}"] for p in ("weight", "bias")})
            out.update({f"logits_proj.{p}": state[f"heads.classify.proj.{p}"] for p in ("weight", "bias")})
        elif arch == "XLNetForTokenClassification":
            out.update({f"classifier.{p}": state[f"heads.tag.proj.{p}"] for p in ("weight", "bias")})
        return {k: v.contiguous() for k, v in out.items()}
