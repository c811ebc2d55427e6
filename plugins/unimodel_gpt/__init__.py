"""The GPT family for unimodel: GPT-2 architecture, `clm` and `fim` objectives, HF GPT-2 interop.

Only metadata lives here; modules are imported when a component is built.
The capability sets below are the family's one statement of them: the
registry records and the built backbones (``unimodel_gpt.model``) both use them.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.data.tokenizer import DEFAULT_BPE_ROLES
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, TokenizerRecipe, presets

PROVIDES = frozenset({Cap.DECODER_ONLY, Cap.CAUSAL, Cap.LM_HEAD, Cap.KV_CACHE})
NONCAUSAL_PROVIDES = frozenset({Cap.DECODER_ONLY, Cap.NONCAUSAL_DECODER, Cap.LM_HEAD})  # causal_decoder = false
REQUIRES = frozenset({Cap.DECODER_ONLY, Cap.CAUSAL, Cap.LM_HEAD})
_TINY = {
    "vocab_size": 99,
    "max_positions": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}

# Byte-level BPE reserving what clm and fim need (and a mask, for pairings with encoder objectives).
TOKENIZER = TokenizerRecipe(kind="bpe", roles=DEFAULT_BPE_ROLES)

_PRESETS = {
    "gpt2-tiny": ("2 layers, d 128: for tests and quick experiments", {"n_layers": 2, "d_model": 128, "n_heads": 4}),
    "gpt2-mini": ("6 layers, d 384 (~11M parameters at vocab 8192)", {"n_layers": 6, "d_model": 384, "n_heads": 6}),
    "gpt2": ("GPT-2 small: 12 layers, d 768 (124M at vocab 50257)", {"n_layers": 12, "d_model": 768, "n_heads": 12}),
    "gpt2-medium": ("GPT-2 medium: 24 layers, d 1024 (355M)", {"n_layers": 24, "d_model": 1024, "n_heads": 16}),
    "gpt2-large": ("GPT-2 large: 36 layers, d 1280 (774M)", {"n_layers": 36, "d_model": 1280, "n_heads": 20}),
    "gpt2-xl": ("GPT-2 XL: 48 layers, d 1600 (1.5B)", {"n_layers": 48, "d_model": 1600, "n_heads": 25}),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    gpt = Component(
        kind="model",
        name="gpt",
        target="unimodel_gpt.model:GPT",
        config="unimodel_gpt.config:GPTConfig",
        summary="GPT-2 style decoder-only transformer (pre-LN, learned positions, tied LM head)",
        provides=PROVIDES,
        default_objective="clm",
        tiny=_TINY,
        tokenizer=TOKENIZER,
    )
    return [
        gpt,
        *presets(gpt, _PRESETS),
        Component(
            kind="decoder",
            name="gpt",
            target="unimodel_gpt.model:GPTDecoder",
            config="unimodel_gpt.config:GPTConfig",
            summary="causal GPT-2 decoder; gains cross-attention when paired with an encoder",
            provides=PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="objective",
            name="clm",
            target="unimodel_gpt.objectives:CausalLM",
            config="unimodel_gpt.config:CLMConfig",
            summary="causal language modelling (next-token prediction)",
            requires=REQUIRES,
        ),
        Component(
            kind="objective",
            name="fim",
            target="unimodel_gpt.objectives:FillInTheMiddle",
            config="unimodel_gpt.config:FIMConfig",
            summary="fill-in-the-middle: prefix-suffix-middle rearrangement with sentinels, then CLM",
            requires=REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="gpt2",
            target="unimodel_gpt.hf:GPT2Converter",
            summary="Hugging Face GPT2LMHeadModel folders, both ways",
            model_types=("gpt2",),
            exports=("gpt",),
        ),
    ]
