"""The GPT family's config classes: the model's and its objectives'.

This module imports neither torch nor the model code, so a run file is checked
against these classes (the registry records name them) before anything heavy
is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from unimodel.config import ACTIVATION_NAMES, Config, param
from unimodel_gpt import NONCAUSAL_PROVIDES, PROVIDES


@dataclass(frozen=True)
class GPTConfig(Config):
    section = "model 'gpt'"
    renamed: ClassVar[dict[str, str]] = {"n_positions": "max_positions"}

    vocab_size: int = param(50257, "vocabulary size (set from the tokenizer when training)")
    max_positions: int = param(1024, "length of the learned position table: the longest sequence")
    d_model: int = param(768, "hidden width")
    n_layers: int = param(12, "number of transformer blocks")
    n_heads: int = param(12, "attention heads; must divide d_model")
    d_ff: int | None = param(None, "feed-forward width; 4 * d_model when null")
    activation: str = param("gelu_tanh", "feed-forward activation: " + ", ".join(ACTIVATION_NAMES))
    layer_norm_eps: float = param(1e-5, "LayerNorm epsilon")
    dropout: float = param(0.1, "dropout on embeddings and residual branches")
    attn_dropout: float = param(0.1, "dropout on attention probabilities")
    tie_embeddings: bool = param(True, "share the token embedding with the LM head")
    scale_attn_weights: bool = param(True, "scale attention scores by head_dim ** -0.5")
    scale_attn_by_inverse_layer_idx: bool = param(False, "divide layer i's attention scores by i+1 (GPT-2 option)")
    memory_dim: int | None = param(None, "width of an encoder memory to cross-attend to (set when paired)")
    causal_decoder: bool = param(True, "false: every position sees every other one (cmlm when paired), no KV cache")
    init_std: float = param(0.02, "standard deviation of the initial weights")
    bos_token_id: int | None = param(None, "beginning-of-sequence id")
    eos_token_id: int | None = param(None, "end-of-sequence id (generation stops there)")
    pad_token_id: int | None = param(None, "padding id (falls back to eos in generation)")

    def check(self) -> None:
        self.require_positive("vocab_size", "max_positions", "d_model", "n_layers", "n_heads", "d_ff")
        if self.d_model % self.n_heads:
            self.fail(("d_model", "n_heads"), "d_model must be divisible by n_heads")
        if self.activation not in ACTIVATION_NAMES:
            self.fail("activation", f"choose from {', '.join(ACTIVATION_NAMES)}")
        self.require_fraction("dropout", "attn_dropout")
        self.require_positive("layer_norm_eps", "init_std")
        self.require_token_ids("bos_token_id", "eos_token_id", "pad_token_id")

    def provides(self) -> frozenset[str]:
        """Capabilities of a GPT built with this config: a non-causal decoder keeps no cache."""
        return PROVIDES if self.causal_decoder else NONCAUSAL_PROVIDES


@dataclass(frozen=True)
class CLMConfig(Config):
    section = "objective 'clm'"

    label_smoothing: float = param(0.0, "label smoothing of the next-token cross-entropy")
    pad_token_id: int | None = param(None, "padding id for ragged batches (the tokenizer's pad when null)")

    def check(self) -> None:
        self.require_fraction("label_smoothing")


@dataclass(frozen=True)
class FIMConfig(CLMConfig):
    section = "objective 'fim'"

    rate: float = param(0.5, "fraction of examples turned into fill-in-the-middle form")
    mode: Literal["psm", "spm"] = param("psm", "psm: prefix, suffix, middle; spm: suffix, prefix, middle")
    fim_prefix_id: int | None = param(None, "id of the prefix sentinel (the tokenizer's fim_prefix when null)")
    fim_middle_id: int | None = param(None, "id of the middle sentinel")
    fim_suffix_id: int | None = param(None, "id of the suffix sentinel")

    def check(self) -> None:
        super().check()
        self.require_fraction("rate", inclusive=True)


__all__ = ["CLMConfig", "FIMConfig", "GPTConfig"]
