"""Hugging Face BERT folders <-> the unimodel BERT family.

Reads ``BertForMaskedLM`` (``bert.`` prefix, ``cls.predictions.*``, no pooler),
``BertForPreTraining`` (MLM head plus pooler; the NSP head is dropped),
``BertModel`` (no prefix, pooler, no head; loads with the ``features``
objective), ``BertForSequenceClassification`` (``classify``) and
``BertForTokenClassification`` (``tag``). Old checkpoints' ``LayerNorm.gamma`` /
``LayerNorm.beta`` names and ``position_ids`` buffers are accepted. HF keeps
query, key and value as three Linears; unimodel fuses them into one ``qkv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unimodel.errors import CheckpointError
from unimodel.hf import HFConverter, hf_architecture, hf_num_labels, pop_known, strip_prefix
from unimodel_bert.model import BertConfig

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

# architecture -> (objective it loads with, whether it has a pooler)
_ARCHITECTURES = {
    "BertForMaskedLM": ("mlm", False),
    "BertForPreTraining": ("mlm", True),
    "BertModel": ("features", True),
    "BertForSequenceClassification": ("classify", True),
    "BertForTokenClassification": ("tag", False),
}

_TOP_KEYS = {  # unimodel key (under "encoder.") -> HF key (under "bert.")
    "embed_tokens.weight": "embeddings.word_embeddings.weight",
    "embed_positions.weight": "embeddings.position_embeddings.weight",
    "embed_types.weight": "embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "embeddings.LayerNorm.weight",
    "embed_norm.bias": "embeddings.LayerNorm.bias",
}
_POOLER_KEYS = {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
_LAYER_KEYS = {  # unimodel block key -> HF layer key
    "attn.out.weight": "attention.output.dense.weight",
    "attn.out.bias": "attention.output.dense.bias",
    "norm_attn.weight": "attention.output.LayerNorm.weight",
    "norm_attn.bias": "attention.output.LayerNorm.bias",
    "ffn.up.weight": "intermediate.dense.weight",
    "ffn.up.bias": "intermediate.dense.bias",
    "ffn.down.weight": "output.dense.weight",
    "ffn.down.bias": "output.dense.bias",
    "norm_ffn.weight": "output.LayerNorm.weight",
    "norm_ffn.bias": "output.LayerNorm.bias",
}
_QKV = ("query", "key", "value")
_MLM_KEYS = {  # unimodel key (under "heads.lm.") -> HF key
    "bias": "cls.predictions.bias",
    "dense.weight": "cls.predictions.transform.dense.weight",
    "dense.bias": "cls.predictions.transform.dense.bias",
    "norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "norm.bias": "cls.predictions.transform.LayerNorm.bias",
}


def _architecture(hf_config: Mapping[str, Any]) -> tuple[str, str, bool]:
    return hf_architecture(hf_config, _ARCHITECTURES, family="BERT", default="BertForMaskedLM")


def _legacy_names(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Old TF-converted checkpoints call LayerNorm parameters gamma and beta."""
    out = {}
    for k, v in tensors.items():
        if ".LayerNorm." in k or k.startswith("LayerNorm."):
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[k] = v
    return out


class BertConverter(HFConverter):
    model_types = ("bert",)

    def spec_from_hf(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        c = hf_config
        _, objective, pooler = _architecture(c)
        if c.get("is_decoder") or c.get("add_cross_attention"):
            raise CheckpointError(
                "BERT folders with is_decoder or add_cross_attention (BertLMHeadModel) are not supported"
            )
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(
                f"BERT position_embedding_type {c['position_embedding_type']!r} is not supported; only 'absolute'"
            )
        act = c.get("hidden_act", "gelu")
        if act not in _ACT_FROM_HF:
            raise CheckpointError(f"BERT hidden_act {act!r} is not supported; supported: {', '.join(_ACT_FROM_HF)}")
        vocab = c.get("vocab_size", 30522)
        pad = c.get("pad_token_id", 0)
        dropout = c.get("hidden_dropout_prob", 0.1)
        spec: dict[str, Any] = {
            "name": "bert",
            "vocab_size": vocab,
            "max_positions": c.get("max_position_embeddings", 512),
            "type_vocab_size": c.get("type_vocab_size", 2),
            "d_model": c.get("hidden_size", 768),
            "n_layers": c.get("num_hidden_layers", 12),
            "n_heads": c.get("num_attention_heads", 12),
            "d_ff": c.get("intermediate_size", 3072),
            "activation": _ACT_FROM_HF[act],
            "layer_norm_eps": c.get("layer_norm_eps", 1e-12),
            "dropout": dropout,
            "attn_dropout": c.get("attention_probs_dropout_prob", 0.1),
            # BertModel / BertForMaskedLM imply a pooler or none; unimodel's exports say so explicitly
            "add_pooler": bool(c.get("add_pooling_layer", pooler)),
            "tie_embeddings": c.get("tie_word_embeddings", True) is not False,
            "init_std": c.get("initializer_range", 0.02),
            "pad_token_id": pad if isinstance(pad, int) and 0 <= pad < vocab else None,
            "objective": objective,
        }
        if objective in ("classify", "tag"):
            if c.get("problem_type") == "multi_label_classification":
                raise CheckpointError("BERT multi-label classification (BCE loss) is not supported by 'classify'")
            head_dropout = c.get("classifier_dropout")
            spec["objective"] = {
                "name": objective,
                "num_labels": hf_num_labels(c),
                "dropout": dropout if head_dropout is None else head_dropout,
            }
        return spec

    def weights_from_hf(self, tensors: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
        _, objective, pooler = _architecture(hf_config)
        pooler = bool(hf_config.get("add_pooling_layer", pooler))
        src = _legacy_names(strip_prefix(tensors, "bert."))
        pop_known(src, ("embeddings.position_ids", "embeddings.token_type_ids"))  # index buffers
        for key in [k for k in src if k.startswith("cls.seq_relationship.")]:  # the NSP head
            del src[key]
        if not pooler:  # as BertForMaskedLM does, ignore a pooler the file carries (BertForPreTraining files)
            for key in _POOLER_KEYS.values():
                src.pop(key, None)
        out: dict[str, Tensor] = {}
        names = {**_TOP_KEYS, **_POOLER_KEYS}
        for ours, theirs in names.items():
            if theirs in src:
                out[f"encoder.{ours}"] = src.pop(theirs)
        for i in range(hf_config.get("num_hidden_layers", 12)):
            pre = f"encoder.layer.{i}."
            for ours, theirs in _LAYER_KEYS.items():
                if pre + theirs in src:
                    out[f"encoder.blocks.{i}.{ours}"] = src.pop(pre + theirs)
            for part in ("weight", "bias"):
                keys = [f"{pre}attention.self.{name}.{part}" for name in _QKV]
                if all(k in src for k in keys):  # a partial set stays behind and is reported
                    out[f"encoder.blocks.{i}.attn.qkv.{part}"] = torch.cat([src.pop(k) for k in keys])
        self._head_from_hf(src, out, hf_config, objective)
        out.update(src)  # anything left is reported as unexpected by the loader
        return out

    @staticmethod
    def _head_from_hf(
        src: dict[str, Tensor], out: dict[str, Tensor], hf_config: Mapping[str, Any], objective: str
    ) -> None:
        # With tied embeddings transformers ties decoder.bias to cls.predictions.bias, and files hold
        # either or both. Untied (transformers 5), decoder.bias is its own parameter and the one used.
        decoder_bias = src.pop("cls.predictions.decoder.bias", None)
        if decoder_bias is not None:
            untied = hf_config.get("tie_word_embeddings", True) is False
            if untied or "cls.predictions.bias" not in src:
                src["cls.predictions.bias"] = decoder_bias
        for ours, theirs in _MLM_KEYS.items():
            if theirs in src:
                out[f"heads.lm.{ours}"] = src.pop(theirs)
        decoder = src.pop("cls.predictions.decoder.weight", None)
        if decoder is not None and hf_config.get("tie_word_embeddings", True) is False:
            out["heads.lm.weight"] = decoder
        if objective in ("classify", "tag"):
            for part in ("weight", "bias"):
                if f"classifier.{part}" in src:
                    out[f"heads.{objective}.proj.{part}"] = src.pop(f"classifier.{part}")

    # ------------------------------------------------------------------ export
    def _architecture_of(self, model: Model) -> str:
        if "lm" in model.heads:
            return "BertForMaskedLM"
        if "classify" in model.heads:
            return "BertForSequenceClassification"
        if "tag" in model.heads:
            return "BertForTokenClassification"
        return "BertModel"

    def config_to_hf(self, model: Model) -> dict[str, Any]:
        c = model.config
        assert isinstance(c, BertConfig)
        arch = self._architecture_of(model)
        out: dict[str, Any] = {
            "architectures": [arch],
            "model_type": "bert",
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "intermediate_size": c.d_ff or 4 * c.d_model,
            "hidden_act": _ACT_TO_HF[c.activation],
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attn_dropout,
            "max_position_embeddings": c.max_positions,
            "type_vocab_size": c.type_vocab_size,
            "initializer_range": c.init_std,
            "layer_norm_eps": c.layer_norm_eps,
            "pad_token_id": c.pad_token_id,
            "tie_word_embeddings": c.tie_embeddings,
            "add_pooling_layer": c.add_pooler,  # transformers ignores it; it lets from_hf rebuild the same model
            "dtype": "float32",
        }
        if arch in ("BertForSequenceClassification", "BertForTokenClassification"):
            oc = model.objective.config
            out["id2label"] = {str(i): f"LABEL_{i}" for i in range(oc.num_labels)}
            out["label2id"] = {f"LABEL_{i}": i for i in range(oc.num_labels)}
            out["classifier_dropout"] = oc.dropout
            if arch == "BertForSequenceClassification":
                out["problem_type"] = "regression" if oc.num_labels == 1 else "single_label_classification"
        return out

    def weights_to_hf(self, model: Model) -> dict[str, Tensor]:
        c = model.config
        assert isinstance(c, BertConfig)
        state = model.state_dict()
        arch = self._architecture_of(model)
        pre = "" if arch == "BertModel" else "bert."
        names = dict(_TOP_KEYS)
        if c.add_pooler:
            names.update(_POOLER_KEYS)
        out = {pre + theirs: state[f"encoder.{ours}"] for ours, theirs in names.items()}
        for i in range(c.n_layers):
            ours_pre, theirs_pre = f"encoder.blocks.{i}.", f"{pre}encoder.layer.{i}."
            for ours, theirs in _LAYER_KEYS.items():
                out[theirs_pre + theirs] = state[ours_pre + ours]
            for part in ("weight", "bias"):
                q, k, v = state[f"{ours_pre}attn.qkv.{part}"].chunk(3, dim=0)
                for name, t in zip(_QKV, (q, k, v)):
                    out[f"{theirs_pre}attention.self.{name}.{part}"] = t.contiguous()
        if arch == "BertForMaskedLM":
            out.update({theirs: state[f"heads.lm.{ours}"] for ours, theirs in _MLM_KEYS.items()})
            if not c.tie_embeddings:
                out["cls.predictions.decoder.weight"] = state["heads.lm.weight"]
                out["cls.predictions.decoder.bias"] = state["heads.lm.bias"]
        elif arch != "BertModel":
            head = "classify" if arch == "BertForSequenceClassification" else "tag"
            out.update({f"classifier.{p}": state[f"heads.{head}.proj.{p}"] for p in ("weight", "bias")})
        return {k: v.contiguous() for k, v in out.items()}

    def generation_config(self, model: Model) -> dict[str, Any] | None:
        return None  # BERT does not generate; transformers writes no generation_config.json for it
