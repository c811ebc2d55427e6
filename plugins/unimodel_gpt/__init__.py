"""The GPT family for unimodel: GPT-2 architecture, `clm` and `fim` objectives, HF GPT-2 interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.data.tokenizer import DEFAULT_BPE_ROLES
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

_PROVIDES = ("decoder_only", "causal", "lm_head", "kv_cache")
_REQUIRES = ("decoder_only", "causal", "lm_head")
_TINY = {
    "vocab_size": 99,
    "n_positions": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}

# Byte-level BPE reserving what clm and fim need (and a mask, for pairings with encoder objectives).
_ROLES = dict(DEFAULT_BPE_ROLES)

# name: (n_layers, d_model, n_heads, summary)
_PRESETS = {
    "gpt2-tiny": (2, 128, 4, "2 layers, d 128: for tests and quick experiments"),
    "gpt2-mini": (6, 384, 6, "6 layers, d 384 (~11M parameters at vocab 8192)"),
    "gpt2": (12, 768, 12, "GPT-2 small: 12 layers, d 768 (124M at vocab 50257)"),
    "gpt2-medium": (24, 1024, 16, "GPT-2 medium: 24 layers, d 1024 (355M)"),
    "gpt2-large": (36, 1280, 20, "GPT-2 large: 36 layers, d 1280 (774M)"),
    "gpt2-xl": (48, 1600, 25, "GPT-2 XL: 48 layers, d 1600 (1.5B)"),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    comps = [
        Component(
            kind="model",
            name="gpt",
            target="unimodel_gpt.model:GPT",
            summary="GPT-2 style decoder-only transformer (pre-LN, learned positions, tied LM head)",
            provides=_PROVIDES,
            default_objective="clm",
            tiny=_TINY,
            extra={"tokenizer": {"kind": "bpe", "roles": _ROLES}},
        ),
        Component(
            kind="decoder",
            name="gpt",
            target="unimodel_gpt.model:GPTDecoder",
            summary="causal GPT-2 decoder; gains cross-attention when paired with an encoder",
            provides=_PROVIDES,
            tiny=_TINY,
        ),
        Component(
            kind="objective",
            name="clm",
            target="unimodel_gpt.objectives:CausalLM",
            summary="causal language modelling (next-token prediction)",
            requires=_REQUIRES,
        ),
        Component(
            kind="objective",
            name="fim",
            target="unimodel_gpt.objectives:FillInTheMiddle",
            summary="fill-in-the-middle: prefix-suffix-middle rearrangement with sentinels, then CLM",
            requires=_REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="gpt2",
            target="unimodel_gpt.hf:GPT2Converter",
            summary="Hugging Face GPT2LMHeadModel folders, both ways",
            model_types=("gpt2",),
            extra={"exports": ("gpt",)},
        ),
    ]
    for name, (layers, d, heads, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="gpt",
                summary=summary,
                defaults={"n_layers": layers, "d_model": d, "n_heads": heads},
                provides=_PROVIDES,
                default_objective="clm",
            )
        )
    return comps
