"""The T5 family's config classes: the model's and its objective's.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from unimodel.config import Config, param
from unimodel_t5 import NONCAUSAL_PROVIDES, PROVIDES

# Activation names T5 configs use (HF's ``feed_forward_proj`` = "[gated-]<act>") -> unimodel's.
# HF maps the legacy "gated-gelu" to the tanh approximation ("gelu_new"); plain "gelu" stays exact.
_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}


def parse_feed_forward(spec: str) -> tuple[str, bool] | None:
    """``"gated-gelu"`` -> ``("gelu_tanh", True)``; ``"relu"`` -> ``("relu", False)``; None if invalid."""
    if spec == "gated-gelu":
        return "gelu_tanh", True
    gated, _, act = spec.rpartition("-")
    if gated not in ("", "gated") or act not in _ACTIVATIONS:
        return None
    return _ACTIVATIONS[act], gated == "gated"


@dataclass(frozen=True)
class T5Config(Config):
    section = "model 't5'"
    renamed: ClassVar[dict[str, str]] = {"d_kv": "head_dim"}

    vocab_size: int = param(32128, "vocabulary size (set from the tokenizer when training)")
    d_model: int = param(512, "hidden width")
    head_dim: int = param(64, "size of each attention head; n_heads * head_dim may differ from d_model")
    d_ff: int = param(2048, "feed-forward width")
    n_layers: int = param(6, "encoder blocks")
    n_decoder_layers: int | None = param(None, "decoder blocks; n_layers when null")
    n_heads: int = param(8, "attention heads")
    relative_attention_num_buckets: int = param(32, "relative-position buckets (half per direction in the encoder)")
    relative_attention_max_distance: int = param(128, "distance from which all relative positions share a bucket")
    dropout: float = param(0.1, "dropout on embeddings, attention probabilities, the FFN and residual branches")
    layer_norm_eps: float = param(1e-6, "RMSNorm epsilon")
    feed_forward: str = param(
        "relu", 'feed-forward: "relu" (T5 v1.0), "gated-gelu" (v1.1, tanh GELU), "gated-silu", or "[gated-]<act>"'
    )
    tie_embeddings: bool = param(True, "the LM head reuses the shared token embedding")
    scale_decoder_outputs: bool | None = param(
        None, "multiply decoder states by d_model ** -0.5 before the LM head; null: when tie_embeddings"
    )
    init_factor: float = param(1.0, "multiplier of every initial weight's standard deviation (HF initializer_factor)")
    memory_dim: int | None = param(None, "width of the encoder memory the decoder attends to; d_model when null")
    causal_decoder: bool = param(
        True,
        "false: the decoder sees all its inputs, with bidirectional position buckets (cmlm), no KV cache; both "
        "stacks add sinusoidal absolute positions to their inputs",
    )
    pad_token_id: int | None = param(0, "padding id")
    eos_token_id: int | None = param(1, "end-of-sequence id (generation stops there)")
    decoder_start_token_id: int | None = param(None, "first decoder input; pad_token_id when null")

    def check(self) -> None:
        self.require_positive(
            "vocab_size",
            "d_model",
            "head_dim",
            "d_ff",
            "n_layers",
            "n_heads",
            "n_decoder_layers",
            "layer_norm_eps",
            "init_factor",
            "memory_dim",
        )
        if self.relative_attention_num_buckets < 4:
            self.fail("relative_attention_num_buckets", "needs at least 4 buckets (2 exact ones per direction)")
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            self.fail(
                ("relative_attention_max_distance", "relative_attention_num_buckets"),
                "max_distance must exceed num_buckets / 2, where the log-spaced buckets begin",
            )
        self.require_fraction("dropout")
        if parse_feed_forward(self.feed_forward) is None:
            self.fail("feed_forward", f'use "<act>" or "gated-<act>" with <act> one of {", ".join(_ACTIVATIONS)}')
        self.require_token_ids("pad_token_id", "eos_token_id", "decoder_start_token_id")

    def provides(self) -> frozenset[str]:
        """Capabilities of a T5 built with this config: a non-causal decoder keeps no cache."""
        return PROVIDES if self.causal_decoder else NONCAUSAL_PROVIDES

    @property
    def dec_layers(self) -> int:
        """Decoder blocks: ``n_decoder_layers``, or ``n_layers`` when that is null."""
        return self.n_decoder_layers if self.n_decoder_layers is not None else self.n_layers

    @property
    def scales_outputs(self) -> bool:
        return self.tie_embeddings if self.scale_decoder_outputs is None else self.scale_decoder_outputs

    @property
    def start_token_id(self) -> int | None:
        return self.decoder_start_token_id if self.decoder_start_token_id is not None else self.pad_token_id


@dataclass(frozen=True)
class SpanCorruptionConfig(Config):
    section = "objective 'span_corruption'"

    noise_density: float = param(0.15, "fraction of each example's tokens that become noise")
    mean_noise_span_length: float = param(3.0, "mean length of a noise span, in tokens")
    label_smoothing: float = param(0.0, "label smoothing of the target cross-entropy")
    first_sentinel_id: int | None = param(
        None,
        "id of the first sentinel when there is no tokenizer (or to override its roles); sentinel i is "
        "first_sentinel_id - i, as Hugging Face's <extra_id_i> = vocab - 1 - i",
    )
    n_sentinels: int = param(100, "sentinels available counting down from first_sentinel_id")
    eos_token_id: int | None = param(
        None, "end-of-sequence id appended to inputs and targets (the tokenizer's eos when null)"
    )
    pad_token_id: int | None = param(None, "padding id (the tokenizer's pad when null, else 0)")

    def check(self) -> None:
        if not 0.0 < self.noise_density < 1.0:
            self.fail("noise_density", "must be in (0, 1)")
        if self.mean_noise_span_length < 1.0:
            self.fail("mean_noise_span_length", "must be at least 1 token")
        self.require_fraction("label_smoothing")
        if self.n_sentinels < 1:
            self.fail("n_sentinels", "must be at least 1")
        if self.first_sentinel_id is not None and self.first_sentinel_id - self.n_sentinels + 1 < 0:
            self.fail(("first_sentinel_id", "n_sentinels"), "the sentinels count down and would reach negative ids")
        for name in ("eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and v < 0:
                self.fail(name, "must be a non-negative token id")


__all__ = ["SpanCorruptionConfig", "T5Config", "parse_feed_forward"]
