"""The T5 family for unimodel: an RMSNorm encoder-decoder with relative position
biases, the `span_corruption` objective, and Hugging Face T5 (v1.0 and v1.1) interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

_PROVIDES = ("encoder_decoder", "causal", "lm_head", "kv_cache")
_TINY = {"vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "n_layers": 2, "n_heads": 4, "dropout": 0.0}
N_SENTINELS = 100
# The roles cover every objective that fits an encoder-decoder: span_corruption needs
# eos and the sentinels, text_infilling needs mask, seq2seq and padding need eos/pad.
_TOKENIZER = {
    "kind": "unigram",
    "roles": {
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        "mask": "<mask>",
        **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(N_SENTINELS)},
    },
}

_V1_1 = {"feed_forward": "gated-gelu", "tie_embeddings": False, "scale_decoder_outputs": False}
# name: (config values, summary)
_PRESETS = {
    "t5-tiny": (
        {"n_layers": 2, "d_model": 128, "d_kv": 32, "n_heads": 4, "d_ff": 512},
        "2+2 layers, d 128: for tests and quick experiments",
    ),
    "t5-mini": (
        {"n_layers": 3, "d_model": 384, "d_kv": 64, "n_heads": 6, "d_ff": 1536},
        "3+3 layers, d 384, 6 heads, ffn 1536",
    ),
    "t5-small": (
        {"n_layers": 6, "d_model": 512, "d_kv": 64, "n_heads": 8, "d_ff": 2048},
        "T5 v1.0 small: 6+6 layers, d 512 (60M at vocab 32128)",
    ),
    "t5-base": (
        {"n_layers": 12, "d_model": 768, "d_kv": 64, "n_heads": 12, "d_ff": 3072},
        "T5 v1.0 base: 12+12 layers, d 768 (220M at vocab 32128)",
    ),
    "t5-v1_1-small": (
        {"n_layers": 8, "d_model": 512, "d_kv": 64, "n_heads": 6, "d_ff": 1024, **_V1_1},
        "T5 v1.1 small: 8+8 layers, d 512, gated GELU, untied head (77M)",
    ),
    "t5-v1_1-base": (
        {"n_layers": 12, "d_model": 768, "d_kv": 64, "n_heads": 12, "d_ff": 2048, **_V1_1},
        "T5 v1.1 base: 12+12 layers, d 768, gated GELU, untied head (248M)",
    ),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    comps = [
        Component(
            kind="model",
            name="t5",
            target="unimodel_t5.model:T5",
            summary="T5 encoder-decoder (pre-RMSNorm, relative position bias, shared embedding)",
            provides=_PROVIDES,
            default_objective="span_corruption",
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER},
        ),
        Component(
            kind="encoder",
            name="t5",
            target="unimodel_t5.model:T5Encoder",
            summary="bidirectional T5 encoder: RMSNorm, relative position bias, no absolute positions",
            provides=("encoder_only", "lm_head"),
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER},
        ),
        Component(
            kind="decoder",
            name="t5",
            target="unimodel_t5.model:T5Decoder",
            summary="causal T5 decoder with cross-attention to an encoder memory, KV-cached",
            provides=("causal", "lm_head", "kv_cache"),
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER},
        ),
        Component(
            kind="objective",
            name="span_corruption",
            target="unimodel_t5.objectives:SpanCorruption",
            summary="T5 span corruption: 15% noise in spans of mean 3, each span replaced by one sentinel",
            requires=("encoder_decoder", "lm_head"),
        ),
        Component(
            kind="hf_converter",
            name="t5",
            target="unimodel_t5.hf:T5Converter",
            summary="Hugging Face T5ForConditionalGeneration folders (v1.0 and v1.1), both ways",
            model_types=("t5",),
            extra={"exports": ("t5",)},
        ),
    ]
    for name, (values, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="t5",
                summary=summary,
                defaults=values,
                provides=_PROVIDES,
                default_objective="span_corruption",
                extra={"tokenizer": _TOKENIZER},
            )
        )
    return comps
