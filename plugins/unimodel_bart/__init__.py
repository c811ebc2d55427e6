"""The BART family for unimodel: post-LN encoder-decoder, `text_infilling`, HF BART interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

_PROVIDES = ("encoder_decoder", "causal", "lm_head", "kv_cache")
_ENCODER_PROVIDES = ("encoder_only", "lm_head")
_DECODER_PROVIDES = ("decoder_only", "causal", "lm_head", "kv_cache")
_TINY = {
    "vocab_size": 99,
    "max_positions": 64,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_heads": 4,
    "decoder_heads": 4,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "act_dropout": 0.0,
}

# Byte-level BPE with BART's special tokens first, so <s>, <pad>, </s>, <unk> get
# ids 0..3 (the config defaults); <mask> serves text_infilling and the sentinels
# let span_corruption (T5's objective) train a BART backbone too.
TOKENIZER = {
    "kind": "bpe",
    "roles": {
        "bos": "<s>",
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        "mask": "<mask>",
        **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(100)},
    },
}

# name: (layers per stack, d_model, heads, ffn width, summary)
_PRESETS = {
    "bart-tiny": (2, 128, 4, 512, "2+2 layers, d 128: for tests and quick experiments"),
    "bart-mini": (3, 384, 6, 1536, "3+3 layers, d 384"),
    "bart-base": (6, 768, 12, 3072, "BART base: 6+6 layers, d 768 (140M at vocab 50265)"),
    "bart-large": (12, 1024, 16, 4096, "BART large: 12+12 layers, d 1024 (406M at vocab 50265)"),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    comps = [
        Component(
            kind="model",
            name="bart",
            target="unimodel_bart.model:BART",
            summary="BART encoder-decoder (post-LN, learned positions, tied LM head with final logits bias)",
            provides=_PROVIDES,
            default_objective="text_infilling",
            tiny=_TINY,
            extra={"tokenizer": TOKENIZER},
        ),
        Component(
            kind="encoder",
            name="bart",
            target="unimodel_bart.model:BartEncoder",
            summary="BART's bidirectional post-LN encoder with embedding LayerNorm",
            provides=_ENCODER_PROVIDES,
            tiny=_TINY,
        ),
        Component(
            kind="decoder",
            name="bart",
            target="unimodel_bart.model:BartDecoder",
            summary="BART's causal post-LN decoder; cross-attends when paired with an encoder",
            provides=_DECODER_PROVIDES,
            tiny=_TINY,
        ),
        Component(
            kind="objective",
            name="text_infilling",
            target="unimodel_bart.objectives:TextInfilling",
            summary="BART denoising: Poisson spans -> one <mask> each, insertions, optional sentence permutation",
            requires=("encoder_decoder", "causal", "lm_head"),
        ),
        Component(
            kind="hf_converter",
            name="bart",
            target="unimodel_bart.hf:BartConverter",
            summary="Hugging Face BartForConditionalGeneration folders, both ways",
            model_types=("bart",),
            extra={"exports": ("bart",)},
        ),
    ]
    for name, (layers, d, heads, ffn, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="bart",
                summary=summary,
                defaults={
                    "d_model": d,
                    "encoder_layers": layers,
                    "decoder_layers": layers,
                    "encoder_heads": heads,
                    "decoder_heads": heads,
                    "encoder_ffn_dim": ffn,
                    "decoder_ffn_dim": ffn,
                },
                provides=_PROVIDES,
                default_objective="text_infilling",
                extra={"tokenizer": TOKENIZER},
            )
        )
    return comps
