"""The BERT family's config classes: the model's and its objectives'.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from unimodel.capabilities import Cap
from unimodel.config import ACTIVATION_NAMES, Config, param
from unimodel_bert import PROVIDES


@dataclass(frozen=True)
class BertConfig(Config):
    section = "model 'bert'"

    vocab_size: int = param(30522, "vocabulary size (set from the tokenizer when training)")
    max_positions: int = param(512, "length of the learned position table: the longest sequence")
    type_vocab_size: int = param(2, "number of token types (segments A/B)")
    d_model: int = param(768, "hidden width")
    n_layers: int = param(12, "number of transformer blocks")
    n_heads: int = param(12, "attention heads; must divide d_model")
    d_ff: int | None = param(None, "feed-forward width; 4 * d_model when null")
    activation: str = param(
        "gelu", "activation of the feed-forward and the MLM head transform: " + ", ".join(ACTIVATION_NAMES)
    )
    layer_norm_eps: float = param(1e-12, "LayerNorm epsilon (every norm, the MLM head's included)")
    dropout: float = param(0.1, "dropout after the embeddings and on every residual branch")
    attn_dropout: float = param(0.1, "dropout on attention probabilities")
    add_pooler: bool = param(True, "add the pooler tanh(dense(h[:, 0])) that sequence classification reads")
    tie_embeddings: bool = param(True, "share the token embedding with the MLM head's output matrix")
    init_std: float = param(0.02, "standard deviation of the initial weights")
    pad_token_id: int | None = param(0, "padding id; its embedding row starts at zero and gets no gradient")

    def check(self) -> None:
        self.require_positive(
            "vocab_size", "max_positions", "type_vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "layer_norm_eps"
        )
        if self.d_model % self.n_heads:
            self.fail(("d_model", "n_heads"), "d_model must be divisible by n_heads")
        if self.activation not in ACTIVATION_NAMES:
            self.fail("activation", f"choose from {', '.join(ACTIVATION_NAMES)}")
        self.require_fraction("dropout", "attn_dropout")
        self.require_positive("init_std")
        self.require_token_ids("pad_token_id")

    def provides(self) -> frozenset[str]:
        """Capabilities of a BERT built with this config: without the pooler, sequence classification has
        nothing to read."""
        return PROVIDES if self.add_pooler else PROVIDES - {Cap.POOLER}


@dataclass(frozen=True)
class MLMConfig(Config):
    section = "objective 'mlm'"

    mlm_probability: float = param(0.15, "fraction of non-special tokens (or words) selected for prediction")
    mask_replace_prob: float = param(0.8, "of the selected tokens, the fraction replaced by [MASK]")
    random_replace_prob: float = param(0.1, "of the selected tokens, the fraction replaced by a random token")
    whole_word: bool = param(False, "select whole words: a word's '##' continuation pieces go with it")
    continuation_prefix: str = param("##", "prefix marking a word-continuation piece (WordPiece convention)")
    min_predictions: int = param(1, "at least this many selections per sequence (fewer only if it has fewer)")
    mask_token_id: int | None = param(None, "id of [MASK] (the tokenizer's mask role when null)")
    pad_token_id: int | None = param(None, "padding id for ragged batches (the tokenizer's pad when null)")
    special_token_ids: tuple[int, ...] = param((), "ids never selected, besides the tokenizer's role tokens")
    vocab_size: int | None = param(None, "random replacements are drawn below this (the tokenizer's size when null)")

    def check(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            self.fail("mlm_probability", "must be in (0, 1)")
        self.require_fraction("mask_replace_prob", "random_replace_prob", inclusive=True)
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            self.fail(("mask_replace_prob", "random_replace_prob"), "their sum must be at most 1")
        if self.min_predictions < 0:
            self.fail("min_predictions", "must be >= 0")
        if self.whole_word and not self.continuation_prefix:
            self.fail(("whole_word", "continuation_prefix"), "whole-word masking needs a continuation prefix")


@dataclass(frozen=True)
class ClassifyConfig(Config):
    section = "objective 'classify'"

    num_labels: int = param(2, "number of classes; 1 makes it a regression with a mean-squared-error loss")
    dropout: float = param(0.1, "dropout on the head's input")
    add_special_tokens: bool = param(False, "wrap each example as [CLS] A [SEP] (B [SEP]) from the tokenizer's roles")
    pad_token_id: int | None = param(None, "padding id for ragged batches (the tokenizer's pad when null)")
    init_std: float = param(0.02, "standard deviation of the head's initial weights")

    def check(self) -> None:
        if self.num_labels < 1:
            self.fail("num_labels", "must be at least 1")
        self.require_fraction("dropout")
        self.require_positive("init_std")


@dataclass(frozen=True)
class TagConfig(ClassifyConfig):
    section = "objective 'tag'"

    num_labels: int = param(2, "number of tags")

    def check(self) -> None:
        super().check()
        if self.num_labels < 2:
            self.fail("num_labels", "token classification needs at least 2 tags")


__all__ = ["BertConfig", "ClassifyConfig", "MLMConfig", "TagConfig"]
