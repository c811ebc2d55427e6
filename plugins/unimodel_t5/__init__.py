"""The T5 family for unimodel: an RMSNorm encoder-decoder with relative position
biases, the `span_corruption` objective, and Hugging Face T5 (v1.0 and v1.1) interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from typing import Any

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, TokenizerRecipe, presets

PROVIDES = frozenset({Cap.ENCODER_DECODER, Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})
ENCODER_PROVIDES = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD})
DECODER_PROVIDES = frozenset({Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})
# causal_decoder = false (cmlm): the decoder sees its whole input and keeps no cache
NONCAUSAL_PROVIDES = frozenset({Cap.ENCODER_DECODER, Cap.NONCAUSAL_DECODER, Cap.LM_HEAD})
# the decoder built with causal_decoder = false: a MemoryCache keeps the memory's keys/values from call to call
NONCAUSAL_DECODER_PROVIDES = frozenset({Cap.NONCAUSAL_DECODER, Cap.LM_HEAD, Cap.MEMORY_CACHE, Cap.OUTPUT_POSITIONS})
SPAN_CORRUPTION_REQUIRES = frozenset({Cap.ENCODER_DECODER, Cap.LM_HEAD})
_TINY = {"vocab_size": 99, "d_model": 32, "head_dim": 8, "d_ff": 37, "n_layers": 2, "n_heads": 4, "dropout": 0.0}
N_SENTINELS = 100
# The roles cover every objective that fits an encoder-decoder: span_corruption needs
# eos and the sentinels, text_infilling needs mask, seq2seq and padding need eos/pad.
TOKENIZER = TokenizerRecipe(
    kind="unigram",
    roles={
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        "mask": "<mask>",
        **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(N_SENTINELS)},
    },
)


def _sizes(n_layers: int, d_model: int, n_heads: int, d_ff: int, head_dim: int = 64) -> dict[str, int]:
    return {"n_layers": n_layers, "d_model": d_model, "head_dim": head_dim, "n_heads": n_heads, "d_ff": d_ff}


_V1_1: dict[str, Any] = {"feed_forward": "gated-gelu", "tie_embeddings": False, "scale_decoder_outputs": False}
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5-tiny": ("2+2 layers, d 128: for tests and quick experiments", _sizes(2, 128, 4, 512, head_dim=32)),
    "t5-mini": ("3+3 layers, d 384, 6 heads, ffn 1536", _sizes(3, 384, 6, 1536)),
    "t5-small": ("T5 v1.0 small: 6+6 layers, d 512 (60M at vocab 32128)", _sizes(6, 512, 8, 2048)),
    "t5-base": ("T5 v1.0 base: 12+12 layers, d 768 (220M at vocab 32128)", _sizes(12, 768, 12, 3072)),
    "t5-v1_1-small": (
        "T5 v1.1 small: 8+8 layers, d 512, gated GELU, untied head (77M)",
        {**_sizes(8, 512, 6, 1024), **_V1_1},
    ),
    "t5-v1_1-base": (
        "T5 v1.1 base: 12+12 layers, d 768, gated GELU, untied head (248M)",
        {**_sizes(12, 768, 12, 2048), **_V1_1},
    ),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    t5 = Component(
        kind="model",
        name="t5",
        target="unimodel_t5.model:T5",
        config="unimodel_t5.config:T5Config",
        summary="T5 encoder-decoder (pre-RMSNorm, relative position bias, shared embedding)",
        provides=PROVIDES,
        default_objective="span_corruption",
        tiny=_TINY,
        tokenizer=TOKENIZER,
    )
    return [
        t5,
        *presets(t5, _PRESETS),
        Component(
            kind="encoder",
            name="t5",
            target="unimodel_t5.model:T5Encoder",
            config="unimodel_t5.config:T5Config",
            summary="bidirectional T5 encoder: RMSNorm, relative position bias, no absolute positions",
            provides=ENCODER_PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="decoder",
            name="t5",
            target="unimodel_t5.model:T5Decoder",
            config="unimodel_t5.config:T5Config",
            summary="causal T5 decoder with cross-attention to an encoder memory, KV-cached",
            provides=DECODER_PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="objective",
            name="span_corruption",
            target="unimodel_t5.objectives:SpanCorruption",
            config="unimodel_t5.config:SpanCorruptionConfig",
            summary="T5 span corruption: 15% noise in spans of mean 3, each span replaced by one sentinel",
            requires=SPAN_CORRUPTION_REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="t5",
            target="unimodel_t5.hf:T5Converter",
            summary="Hugging Face T5ForConditionalGeneration folders (v1.0 and v1.1), both ways",
            model_types=("t5",),
            exports=("t5",),
        ),
    ]
