"""Capability names: what a backbone provides and what an objective or decoding strategy requires.

This module imports nothing heavy, so a plugin's hook module (which must not
import torch) states its capabilities with these names once, and its model code
imports the same sets from there.
"""

from __future__ import annotations

from collections.abc import Sequence


class Cap:
    """Capability names. Backbones declare what they provide, objectives what they require."""

    ENCODER_ONLY = "encoder_only"  # an encoder with no decoder
    DECODER_ONLY = "decoder_only"  # a decoder with no encoder
    ENCODER_DECODER = "encoder_decoder"  # both, the decoder reading the encoder's memory
    CAUSAL = "causal"  # the decoder is causal (left-to-right)
    NONCAUSAL_DECODER = "noncausal_decoder"  # the decoder sees its whole input (mask-predict)
    LM_HEAD = "lm_head"  # hidden states map to vocabulary logits
    KV_CACHE = "kv_cache"  # incremental decoding with a key/value cache
    MEMORY_CACHE = "memory_cache"  # a non-causal decoder keeps its memory's keys/values across calls (MemoryCache)
    OUTPUT_POSITIONS = "output_positions"  # a non-causal decoder runs its last layer at chosen positions only
    TOKEN_TYPES = "token_types"  # segment embeddings (token_type_ids)
    POOLER = "pooler"  # a pooled sequence vector
    TWO_STREAM = "two_stream"  # content and query streams (perm_mask, target_mapping)
    MEMS = "mems"  # recurrence memory across segments
    CONTINUOUS_INPUT = "continuous_input"  # inputs are real-valued (images), not ids
    CODEBOOK = "codebook"  # a vector-quantised bottleneck

    @classmethod
    def all(cls) -> list[str]:
        return sorted(v for k, v in vars(cls).items() if k.isupper())

    @classmethod
    def explain(cls, names: Sequence[str]) -> str:
        """``"encoder_decoder (an encoder and a decoder reading its memory), ..."`` for error messages."""
        return ", ".join(f"{n} ({_MEANINGS[n]})" if n in _MEANINGS else n for n in names)


_MEANINGS = {
    Cap.ENCODER_ONLY: "an encoder with no decoder",
    Cap.DECODER_ONLY: "a decoder with no encoder",
    Cap.ENCODER_DECODER: "an encoder and a decoder reading its memory",
    Cap.CAUSAL: "a left-to-right decoder",
    Cap.NONCAUSAL_DECODER: "a decoder that sees its whole input",
    Cap.LM_HEAD: "vocabulary logits",
    Cap.KV_CACHE: "incremental decoding with a key/value cache",
    Cap.MEMORY_CACHE: "the memory's cross-attention keys/values kept across calls of a non-causal decoder",
    Cap.OUTPUT_POSITIONS: "hidden states computed only at the positions asked for (output_positions)",
    Cap.TOKEN_TYPES: "segment embeddings",
    Cap.POOLER: "a pooled sequence vector",
    Cap.TWO_STREAM: "content and query streams",
    Cap.MEMS: "recurrence memory",
    Cap.CONTINUOUS_INPUT: "real-valued inputs",
    Cap.CODEBOOK: "a vector-quantised bottleneck",
}


__all__ = ["Cap"]
