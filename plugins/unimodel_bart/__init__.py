"""The BART family for unimodel: post-LN encoder-decoder, `text_infilling`, HF BART interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, TokenizerRecipe, presets

PROVIDES = frozenset({Cap.ENCODER_DECODER, Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})
NONCAUSAL_PROVIDES = frozenset({Cap.ENCODER_DECODER, Cap.NONCAUSAL_DECODER, Cap.LM_HEAD})
ENCODER_PROVIDES = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD})
DECODER_PROVIDES = frozenset({Cap.DECODER_ONLY, Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})
TEXT_INFILLING_REQUIRES = frozenset({Cap.ENCODER_DECODER, Cap.CAUSAL, Cap.LM_HEAD})
_TINY = {
    "vocab_size": 99,
    "max_positions": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 37,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "act_dropout": 0.0,
}

# Byte-level BPE with BART's special tokens first, so <s>, <pad>, </s>, <unk> get
# ids 0..3 (the config defaults); <mask> serves text_infilling and the sentinels
# let span_corruption (T5's objective) train a BART backbone too.
TOKENIZER = TokenizerRecipe(
    kind="bpe",
    roles={
        "bos": "<s>",
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        "mask": "<mask>",
        **{f"sentinel_{i}": f"<extra_id_{i}>" for i in range(100)},
    },
)


def _sizes(n_layers: int, d_model: int, n_heads: int, d_ff: int) -> dict[str, int]:
    """Both stacks alike: the decoder's fields follow the encoder's when unset."""
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff}


_PRESETS = {
    "bart-tiny": ("2+2 layers, d 128: for tests and quick experiments", _sizes(2, 128, 4, 512)),
    "bart-mini": ("3+3 layers, d 384", _sizes(3, 384, 6, 1536)),
    "bart-base": ("BART base: 6+6 layers, d 768 (140M at vocab 50265)", _sizes(6, 768, 12, 3072)),
    "bart-large": ("BART large: 12+12 layers, d 1024 (406M at vocab 50265)", _sizes(12, 1024, 16, 4096)),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    bart = Component(
        kind="model",
        name="bart",
        target="unimodel_bart.model:BART",
        config="unimodel_bart.config:BartConfig",
        summary="BART encoder-decoder (post-LN, learned positions, tied LM head with final logits bias)",
        provides=PROVIDES,
        default_objective="text_infilling",
        tiny=_TINY,
        tokenizer=TOKENIZER,
    )
    return [
        bart,
        *presets(bart, _PRESETS),
        Component(
            kind="encoder",
            name="bart",
            target="unimodel_bart.model:BartEncoder",
            config="unimodel_bart.config:BartConfig",
            summary="BART's bidirectional post-LN encoder with embedding LayerNorm",
            provides=ENCODER_PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="decoder",
            name="bart",
            target="unimodel_bart.model:BartDecoder",
            config="unimodel_bart.config:BartConfig",
            summary="BART's causal post-LN decoder; cross-attends when paired with an encoder",
            provides=DECODER_PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="objective",
            name="text_infilling",
            target="unimodel_bart.objectives:TextInfilling",
            config="unimodel_bart.config:TextInfillingConfig",
            summary="BART denoising: Poisson spans -> one <mask> each, insertions, optional sentence permutation",
            requires=TEXT_INFILLING_REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="bart",
            target="unimodel_bart.hf:BartConverter",
            summary="Hugging Face BartForConditionalGeneration folders, both ways",
            model_types=("bart",),
            exports=("bart",),
        ),
    ]
