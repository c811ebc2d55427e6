"""The BERT family for unimodel: a post-LN encoder with a pooler and BERT's MLM head;
the `mlm`, `classify` and `tag` objectives; Hugging Face BERT interop.

Only metadata lives here; modules are imported when a component is built.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component, TokenizerRecipe, presets

PROVIDES = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD, Cap.TOKEN_TYPES, Cap.POOLER})
MLM_REQUIRES = frozenset({Cap.ENCODER_ONLY, Cap.LM_HEAD})
CLASSIFY_REQUIRES = frozenset({Cap.ENCODER_ONLY, Cap.POOLER})
TAG_REQUIRES = frozenset({Cap.ENCODER_ONLY})
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
TOKENIZER = TokenizerRecipe(
    kind="wordpiece", roles={"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
)


def _sizes(n_layers: int, d_model: int, n_heads: int, d_ff: int) -> dict[str, int]:
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff}


_PRESETS = {
    "bert-tiny": ("2 layers, d 128: for tests and quick experiments", _sizes(2, 128, 2, 512)),
    "bert-mini": ("6 layers, d 384 (~11M parameters without the embeddings)", _sizes(6, 384, 6, 1536)),
    "bert-base": ("BERT-base: 12 layers, d 768 (110M at vocab 30522)", _sizes(12, 768, 12, 3072)),
    "bert-large": ("BERT-large: 24 layers, d 1024 (340M at vocab 30522)", _sizes(24, 1024, 16, 4096)),
}


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    bert = Component(
        kind="model",
        name="bert",
        target="unimodel_bert.model:Bert",
        config="unimodel_bert.config:BertConfig",
        summary="BERT encoder (post-LN, learned positions, token types, pooler, tied MLM head)",
        provides=PROVIDES,
        default_objective="mlm",
        tiny=_TINY,
        tokenizer=TOKENIZER,
    )
    return [
        bert,
        *presets(bert, _PRESETS),
        Component(
            kind="encoder",
            name="bert",
            target="unimodel_bert.model:BertEncoder",
            config="unimodel_bert.config:BertConfig",
            summary="bidirectional post-LN BERT encoder with token types and a pooler",
            provides=PROVIDES,
            tiny=_TINY,
            tokenizer=TOKENIZER,
        ),
        Component(
            kind="objective",
            name="mlm",
            target="unimodel_bert.objectives:MaskedLM",
            config="unimodel_bert.config:MLMConfig",
            summary="masked language modelling: 15% selected, 80/10/10 mask/random/keep; optional whole words",
            requires=MLM_REQUIRES,
        ),
        Component(
            kind="objective",
            name="classify",
            target="unimodel_bert.objectives:SequenceClassification",
            config="unimodel_bert.config:ClassifyConfig",
            summary="sequence classification (or regression) on the pooled vector",
            requires=CLASSIFY_REQUIRES,
        ),
        Component(
            kind="objective",
            name="tag",
            target="unimodel_bert.objectives:TokenClassification",
            config="unimodel_bert.config:TagConfig",
            summary="token classification (tagging) on the encoder's hidden states",
            requires=TAG_REQUIRES,
        ),
        Component(
            kind="hf_converter",
            name="bert",
            target="unimodel_bert.hf:BertConverter",
            summary="Hugging Face BertForMaskedLM / BertModel (and classification) folders, both ways",
            model_types=("bert",),
            exports=("bert",),
        ),
    ]
