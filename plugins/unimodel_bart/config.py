"""The BART family's config classes: the model's and its objective's.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from unimodel.config import ACTIVATION_NAMES, Config, param
from unimodel_bart import NONCAUSAL_PROVIDES, PROVIDES


@dataclass(frozen=True)
class BartConfig(Config):
    """One config for the family and for its encoder and decoder components.

    The encoder reads ``n_layers``, ``n_heads`` and ``d_ff``; the decoder reads
    ``n_decoder_layers``, ``n_decoder_heads`` and ``d_decoder_ff``, each falling
    back to the encoder's value when null. So a preset (``bart-mini``) names
    either side when paired.
    """

    section = "model 'bart'"
    renamed: ClassVar[dict[str, str]] = {
        "encoder_layers": "n_layers",
        "decoder_layers": "n_decoder_layers",
        "encoder_heads": "n_heads",
        "decoder_heads": "n_decoder_heads",
        "encoder_ffn_dim": "d_ff",
        "decoder_ffn_dim": "d_decoder_ff",
        "encoder_layerdrop": "layerdrop",
        "tie_word_embeddings": "tie_embeddings",
    }

    vocab_size: int = param(50265, "vocabulary size (set from the tokenizer when training)")
    max_positions: int = param(1024, "longest sequence either stack accepts (the table has 2 more rows)")
    d_model: int = param(768, "hidden width of both stacks")
    n_layers: int = param(6, "encoder blocks")
    n_decoder_layers: int | None = param(None, "decoder blocks; n_layers when null")
    n_heads: int = param(12, "encoder attention heads; must divide d_model")
    n_decoder_heads: int | None = param(
        None, "decoder self- and cross-attention heads; must divide d_model; n_heads when null"
    )
    d_ff: int = param(3072, "encoder feed-forward width")
    d_decoder_ff: int | None = param(None, "decoder feed-forward width; d_ff when null")
    activation: str = param("gelu", "feed-forward activation (gelu is exact erf): " + ", ".join(ACTIVATION_NAMES))
    dropout: float = param(0.1, "dropout on embeddings and on every sublayer's output")
    attn_dropout: float = param(0.0, "dropout on attention probabilities")
    act_dropout: float = param(0.0, "dropout after the feed-forward activation")
    layerdrop: float = param(0.0, "probability of skipping an encoder block while training")
    decoder_layerdrop: float = param(0.0, "probability of skipping a decoder block while training")
    scale_embedding: bool = param(False, "multiply token embeddings by sqrt(d_model)")
    tie_embeddings: bool = param(True, "one token embedding for encoder, decoder and LM head")
    causal_decoder: bool = param(True, "false: the decoder sees all its inputs (mask-predict / cmlm), no KV cache")
    memory_dim: int | None = param(
        None, "width of the memory the decoder cross-attends to (set when paired; d_model in the family)"
    )
    init_std: float = param(0.02, "standard deviation of the initial weights")
    pad_token_id: int | None = param(1, "padding id (its embedding row starts at zero and gets no gradient)")
    bos_token_id: int | None = param(0, "beginning-of-sequence id")
    eos_token_id: int | None = param(2, "end-of-sequence id (generation stops there)")
    decoder_start_token_id: int | None = param(2, "first decoder input; BART starts with eos")
    forced_eos_token_id: int | None = param(2, "Hugging Face's forced final eos; carried to exported configs")

    def check(self) -> None:
        self.require_positive(
            "vocab_size",
            "max_positions",
            "d_model",
            "n_layers",
            "n_decoder_layers",
            "n_heads",
            "n_decoder_heads",
            "d_ff",
            "d_decoder_ff",
            "memory_dim",
            "init_std",
        )
        for heads in ("n_heads", "n_decoder_heads"):
            if self.d_model % (getattr(self, heads) or self.n_heads):
                self.fail(("d_model", heads), f"d_model must be divisible by {heads}")
        if self.activation not in ACTIVATION_NAMES:
            self.fail("activation", f"choose from {', '.join(ACTIVATION_NAMES)}")
        self.require_fraction("dropout", "attn_dropout", "act_dropout", "layerdrop", "decoder_layerdrop")
        self.require_token_ids(
            "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id"
        )

    def provides(self) -> frozenset[str]:
        """Capabilities of a BART built with this config: a non-causal decoder keeps no cache."""
        return PROVIDES if self.causal_decoder else NONCAUSAL_PROVIDES

    @property
    def dec_layers(self) -> int:
        """Decoder blocks: ``n_decoder_layers``, or ``n_layers`` when that is null."""
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    @property
    def dec_heads(self) -> int:
        """Decoder heads: ``n_decoder_heads``, or ``n_heads`` when that is null."""
        return self.n_decoder_heads if self.n_decoder_heads is not None else self.n_heads

    @property
    def dec_ff(self) -> int:
        """Decoder feed-forward width: ``d_decoder_ff``, or ``d_ff`` when that is null."""
        return self.d_decoder_ff if self.d_decoder_ff is not None else self.d_ff


@dataclass(frozen=True)
class TextInfillingConfig(Config):
    section = "objective 'text_infilling'"

    mask_ratio: float = param(0.3, "fraction of each document's maskable tokens hidden in spans")
    poisson_lambda: float = param(3.0, "mean span length (Poisson); 0-length draws become insertions")
    random_ratio: float = param(0.0, "fraction of spans replaced by a random token instead of <mask>")
    permute_sentences: float = param(0.0, "fraction of sentences shuffled before masking (1.0: all; 0: off)")
    full_stop_ids: tuple[int, ...] = param((), "token ids that end a sentence (empty: found in the tokenizer)")
    full_stops: str = param(".", "characters that make a punctuation piece a full stop (when full_stop_ids is empty)")
    add_bos: bool = param(True, "start source and labels with bos (when the tokenizer has one)")
    add_eos: bool = param(True, "end source and labels with eos")
    max_length: int | None = param(None, "truncate framed labels (and sources) to this many tokens")
    label_smoothing: float = param(0.0, "label smoothing of the reconstruction cross-entropy")
    mask_token_id: int | None = param(None, "id of <mask> (the tokenizer's mask when null)")
    bos_token_id: int | None = param(None, "id of bos (the tokenizer's bos when null)")
    eos_token_id: int | None = param(None, "id of eos (the tokenizer's eos when null)")
    pad_token_id: int | None = param(None, "id used to pad sources (the tokenizer's pad when null)")

    def check(self) -> None:
        self.require_fraction("mask_ratio", "random_ratio", "permute_sentences", inclusive=True)
        self.require_positive("poisson_lambda")
        self.require_fraction("label_smoothing")
        if self.max_length is not None and self.max_length < 3:
            self.fail("max_length", "must leave room for bos, one token and eos (at least 3)")
        if not self.full_stops and not self.full_stop_ids and self.permute_sentences > 0:
            self.fail(("permute_sentences", "full_stops"), "sentence permutation needs full_stops or full_stop_ids")


__all__ = ["BartConfig", "TextInfillingConfig"]
