"""The XLNet family for unimodel: a two-stream relative-attention stack with segment
recurrence; the `plm` objective (permutation language modelling); generation the
way transformers does it (`xlnet_plm`); Hugging Face XLNet interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, TokenizerRecipe, presets

# attn_type "bi" (the default) is an encoder; "uni" a causal decoder (XLNet.provides_for)
PROVIDES_BI = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD, Cap.TOKEN_TYPES, Cap.POOLER, Cap.TWO_STREAM, Cap.MEMS})
PROVIDES_UNI = frozenset(
    {Cap.DECODER_ONLY, Cap.CAUSAL, Cap.KV_CACHE, Cap.LM_HEAD, Cap.TOKEN_TYPES, Cap.TWO_STREAM, Cap.MEMS}
)
PLM_REQUIRES = frozenset({Cap.TWO_STREAM, Cap.LM_HEAD})
_VARIANTS = {'attn_type = "uni"': tuple(sorted(PROVIDES_UNI))}
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
TOKENIZER = TokenizerRecipe(
    kind="unigram",
    roles={
        "unk": "<unk>",
        "bos": "<s>",
        "eos": "</s>",
        "cls": "<cls>",
        "sep": "<sep>",
        "pad": "<pad>",
        "mask": "<mask>",
    },
)


def _sizes(n_layers: int, d_model: int, n_heads: int, d_ff: int, **more: int) -> dict[str, int]:
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, **more}


_PRESETS = {
    "xlnet-tiny": ("2 layers, d 128: for tests and quick experiments", _sizes(2, 128, 4, 512)),
    "xlnet-mini": ("6 layers, d 384, 6 heads, ffn 1536", _sizes(6, 384, 6, 1536)),
    "xlnet-base-cased": (
        "XLNet-base shapes: 12 layers, d 768 (117M at vocab 32000)",
        _sizes(12, 768, 12, 3072, vocab_size=32000),
    ),
    "xlnet-large-cased": (
        "XLNet-large shapes: 24 layers, d 1024 (360M at vocab 32000)",
        _sizes(24, 1024, 16, 4096, vocab_size=32000),
    ),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    xlnet = Component(
        kind="model",
        name="xlnet",
        target="unimodel_xlnet.model:XLNet",
        config="unimodel_xlnet.config:XLNetConfig",
        summary="XLNet: two-stream relative attention with memory (bi: encoder; uni: causal decoder)",
        provides=PROVIDES_BI,
        default_objective="plm",
        tiny=_TINY,
        tokenizer=TOKENIZER,
        extra={"variants": _VARIANTS},
    )
    return [
        xlnet,
        *presets(xlnet, _PRESETS),
        Component(
            kind="objective",
            name="plm",
            target="unimodel_xlnet.objectives:PermutationLM",
            config="unimodel_xlnet.config:PLMConfig",
            summary="permutation language modelling: ~1/6 of tokens in n-gram spans predicted by the query stream",
            requires=PLM_REQUIRES,
        ),
        Component(
            kind="decoding",
            name="xlnet_plm",
            target="unimodel_xlnet.generation:two_stream",
            summary="XLNet generation: a dummy last token predicted by the query stream, memory as the cache",
            requires=PLM_REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="xlnet",
            target="unimodel_xlnet.hf:XLNetConverter",
            summary="Hugging Face XLNetLMHeadModel / XLNetModel / XLNetForSequenceClassification folders, both ways",
            model_types=("xlnet",),
            exports=("xlnet",),
        ),
    ]
