"""The BERT family for unimodel: a post-LN encoder with a pooler and BERT's MLM head;
the `mlm`, `classify` and `tag` objectives; Hugging Face BERT interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

_PROVIDES = ("encoder_only", "lm_head", "token_types", "pooler")
_TINY = {
    "vocab_size": 99,
    "max_positions": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 37,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}
# The roles cover every objective that fits an encoder: mlm needs mask; classify/tag
# wrap inputs as [CLS] A [SEP]; padding needs pad.
_TOKENIZER = {
    "kind": "wordpiece",
    "roles": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
}

# name: (n_layers, d_model, n_heads, d_ff, summary)
_PRESETS = {
    "bert-tiny": (2, 128, 2, 512, "2 layers, d 128: for tests and quick experiments"),
    "bert-mini": (6, 384, 6, 1536, "6 layers, d 384 (~11M parameters without the embeddings)"),
    "bert-base": (12, 768, 12, 3072, "BERT-base: 12 layers, d 768 (110M at vocab 30522)"),
    "bert-large": (24, 1024, 16, 4096, "BERT-large: 24 layers, d 1024 (340M at vocab 30522)"),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    comps = [
        Component(
            kind="model",
            name="bert",
            target="unimodel_bert.model:Bert",
            summary="BERT encoder (post-LN, learned positions, token types, pooler, tied MLM head)",
            provides=_PROVIDES,
            default_objective="mlm",
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER},
        ),
        Component(
            kind="encoder",
            name="bert",
            target="unimodel_bert.model:BertEncoder",
            summary="bidirectional post-LN BERT encoder with token types and a pooler",
            provides=_PROVIDES,
            tiny=_TINY,
            extra={"tokenizer": _TOKENIZER},
        ),
        Component(
            kind="objective",
            name="mlm",
            target="unimodel_bert.objectives:MaskedLM",
            summary="masked language modelling: 15% selected, 80/10/10 mask/random/keep; optional whole words",
            requires=("encoder_only", "lm_head"),
        ),
        Component(
            kind="objective",
            name="classify",
            target="unimodel_bert.objectives:SequenceClassification",
            summary="sequence classification (or regression) on the pooled vector",
            requires=("encoder_only", "pooler"),
        ),
        Component(
            kind="objective",
            name="tag",
            target="unimodel_bert.objectives:TokenClassification",
            summary="token classification (tagging) on the encoder's hidden states",
            requires=("encoder_only",),
        ),
        Component(
            kind="hf_converter",
            name="bert",
            target="unimodel_bert.hf:BertConverter",
            summary="Hugging Face BertForMaskedLM / BertModel (and classification) folders, both ways",
            model_types=("bert",),
            extra={"exports": ("bert",)},
        ),
    ]
    for name, (layers, d, heads, ff, summary) in _PRESETS.items():
        comps.append(
            Component(
                kind="model",
                name=name,
                target="",
                base="bert",
                summary=summary,
                defaults={"n_layers": layers, "d_model": d, "n_heads": heads, "d_ff": ff},
                provides=_PROVIDES,
                default_objective="mlm",
                extra={"tokenizer": _TOKENIZER},
            )
        )
    return comps
