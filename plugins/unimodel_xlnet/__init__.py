"""The XLNet family for unimodel: a two-stream relative-attention stack with segment
recurrence; the `plm` objective (permutation language modelling); generation the
way transformers does it (`xlnet_plm`); Hugging Face XLNet interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

# attn_type "bi" (the default) is an encoder; "uni" a causal decoder (XLNet.provides_for)
_PROVIDES = ("encoder_only", "lm_head", "token_types", "pooler", "two_stream", "mems")
_UNI = ("decoder_only", "causal", "kv_cache", "lm_head", "token_types", "two_stream", "mems")
_VARIANTS = {'attn_type = "uni"': _UNI}
_TINY = {
    "vocab_size": 99,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 37,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "act_dropout": 0.0,
}
# SentencePiece-style unigram with XLNet's roles; `<cls>` and `<sep>` frame classification inputs
_TOKENIZER = {
    "kind": "unigram",
    "roles": {
        "unk": "<unk>",
        "bos": "<s>",
        "eos": "</s>",
        "cls": "<cls>",
        "sep": "<sep>",
        "pad": "<pad>",
        "mask": "<mask>",
    },
}

# name: (config values, summary)
_PRESETS = {
    "xlnet-tiny": (
        {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_ff": 512},
        "2 layers, d 128: for tests and quick experiments",
    ),
    "xlnet-mini": (
        {"n_layers": 6, "d_model": 384, "n_heads": 6, "d_ff": 1536},
        "6 layers, d 384, 6 heads, ffn 1536",
    ),
    "xlnet-base-cased": (
        {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_ff": 3072, "vocab_size": 32000},
        "XLNet-base shapes: 12 layers, d 768 (117M at vocab 32000)",
    ),
    "xlnet-large-cased": (
        {"n_layers": 24, "d_model": 1024, "n_heads": 16, "d_ff": 4096, "vocab_size": 32000},
        "XLNet-large shapes: 24 layers, d 1024 (360M at vocab 32000)",
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
            name="xlnet",
            target="unimodel_xlnet.model:XLNet",
            summary="XLNet: two-stream relative attention with memory (bi: encoder; uni: causal decoder)",
            provides=_PROVIDES,
            default_objective="plm",
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER, "variants": _VARIANTS},
        ),
        Component(
            kind="objective",
            name="plm",
            target="unimodel_xlnet.objectives:PermutationLM",
            summary="permutation language modelling: ~1/6 of tokens in n-gram spans predicted by the query stream",
            requires=("two_stream", "lm_head"),
        ),
        Component(
            kind="decoding",
            name="xlnet_plm",
            target="unimodel_xlnet.generation:two_stream",
            summary="XLNet generation: a dummy last token predicted by the query stream, memory as the cache",
            requires=("two_stream", "lm_head"),
        ),
        Component(
            kind="hf_converter",
            name="xlnet",
            target="unimodel_xlnet.hf:XLNetConverter",
            summary="Hugging Face XLNetLMHeadModel / XLNetModel / XLNetForSequenceClassification folders, both ways",
            model_types=("xlnet",),
            extra={"exports": ("xlnet",)},
        ),
    ]
    for name, (values, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="xlnet",
                summary=summary,
                defaults=values,
                provides=_PROVIDES,
                default_objective="plm",
                extra={"tokenizer": _TOKENIZER},
            )
        )
    return comps
