"""The XLNet family's config classes: the model's and its objective's.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from unimodel.capabilities import Cap
from unimodel.config import ACTIVATION_NAMES, Config, param
from unimodel_xlnet import PROVIDES_BI, PROVIDES_UNI

SUMMARY_ACTIVATIONS = ("identity", *ACTIVATION_NAMES)


@dataclass(frozen=True)
class XLNetConfig(Config):
    section = "model 'xlnet'"

    vocab_size: int = param(32000, "vocabulary size (set from the tokenizer when training)")
    d_model: int = param(1024, "hidden width (even: the relative encodings are sin/cos pairs)")
    n_layers: int = param(24, "number of layers")
    n_heads: int = param(16, "attention heads")
    head_dim: int | None = param(None, "size of each head; d_model // n_heads when null")
    d_ff: int | None = param(None, "feed-forward width; 4 * d_model when null")
    activation: str = param("gelu", "feed-forward activation: " + ", ".join(ACTIVATION_NAMES))
    layer_norm_eps: float = param(1e-12, "LayerNorm epsilon")
    dropout: float = param(0.1, "dropout on embeddings, relative encodings, residual branches and the output")
    attn_dropout: float = param(0.1, "dropout on attention probabilities")
    act_dropout: float = param(0.1, "dropout after the feed-forward activation")
    tie_embeddings: bool = param(True, "share the token embedding with the LM head's output matrix")
    init_std: float = param(0.02, "standard deviation of the initial weights")
    attn_type: Literal["bi", "uni"] = param(
        "bi", "bi: bidirectional (an encoder); uni: causal (a decoder with a key/value cache, Transformer-XL)"
    )
    mem_len: int | None = param(None, "memory kept across segments: the last mem_len layer inputs (null: all)")
    reuse_len: int | None = param(None, "only the first reuse_len tokens of a segment enter the memory (null: all)")
    use_mems_eval: bool = param(True, "return the new memory (extra['mems']) in eval mode unless use_mems says")
    use_mems_train: bool = param(False, "return the new memory in training mode unless use_mems says")
    clamp_len: int = param(-1, "clamp relative distances to [-clamp_len, clamp_len]; <= 0: no clamping")
    bi_data: bool = param(False, "the second half of a batch reads backward relative distances (pretraining)")
    same_length: bool = param(False, "with attn_type uni, every token sees the same number of keys")
    untie_r: bool = param(True, "each layer its own r_w/r_r/r_s biases (false: shared by all layers)")
    add_pooler: bool = param(True, "add the sequence summary that sequence classification reads")
    summary_type: Literal["last", "first", "mean"] = param(
        "last", "the sequence summary reads the last real token, the first, or the mean over real tokens"
    )
    summary_use_proj: bool = param(True, "a d_model x d_model projection in the sequence summary")
    summary_activation: str = param("tanh", "activation of the sequence summary: " + ", ".join(SUMMARY_ACTIVATIONS))
    pad_token_id: int | None = param(5, "padding id")
    bos_token_id: int | None = param(1, "beginning-of-sequence id")
    eos_token_id: int | None = param(2, "end-of-sequence id (generation stops there)")

    def check(self) -> None:
        self.require_positive("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff")
        self.require_positive("mem_len", "reuse_len")
        for name in ("layer_norm_eps", "init_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                self.fail(name, "must be a finite positive number")
        if self.d_model % 2:
            self.fail("d_model", "must be even")
        if self.head_dim is None and self.d_model % self.n_heads:
            self.fail(("d_model", "n_heads"), "d_model must be divisible by n_heads (or set head_dim)")
        if self.activation not in ACTIVATION_NAMES:
            self.fail("activation", f"choose from {', '.join(ACTIVATION_NAMES)}")
        if self.summary_activation not in SUMMARY_ACTIVATIONS:
            self.fail("summary_activation", f"choose from {', '.join(SUMMARY_ACTIVATIONS)}")
        self.require_fraction("dropout", "attn_dropout", "act_dropout")
        self.require_token_ids("pad_token_id", "bos_token_id", "eos_token_id")

    def provides(self) -> frozenset[str]:
        """Capabilities of an XLNet built with this config: ``attn_type`` picks encoder or causal decoder; without
        the pooler, sequence classification has nothing to read."""
        provides = PROVIDES_UNI if self.attn_type == "uni" else PROVIDES_BI
        return provides if self.add_pooler else provides - {Cap.POOLER}

    @property
    def dims(self) -> tuple[int, int]:
        """(head_dim, d_ff) with their defaults applied."""
        return self.head_dim or self.d_model // self.n_heads, self.d_ff or 4 * self.d_model


@dataclass(frozen=True)
class PLMConfig(Config):
    section = "objective 'plm'"

    plm_probability: float = param(1 / 6, "share of each row's tokens that are targets (1/K; the paper's K is 6)")
    max_span_length: int = param(5, "targets come in spans of 1..max_span_length tokens, length n with p ∝ 1/n")
    perm_size: int | None = param(
        None, "the factorization order runs block by block over blocks of perm_size positions (null: one block)"
    )
    pad_token_id: int | None = param(None, "padding id for ragged batches (the tokenizer's pad when null)")
    special_token_ids: tuple[int, ...] = param((), "ids never chosen as targets, besides the tokenizer's role tokens")

    def check(self) -> None:
        if not 0.0 < self.plm_probability < 1.0:
            self.fail("plm_probability", "must be in (0, 1)")
        self.require_positive("max_span_length", "perm_size")


__all__ = ["SUMMARY_ACTIVATIONS", "PLMConfig", "XLNetConfig"]
