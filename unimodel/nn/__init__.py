"""Shared building blocks. Families compose these and differ only where they must."""

from unimodel.nn.attention import Attention, KVCache, MemoryCache, attention_mask_for, gather_positions
from unimodel.nn.block import Block
from unimodel.nn.ffn import ACTIVATIONS, FeedForward, get_activation, init_normal_
from unimodel.nn.heads import LMHead
from unimodel.nn.linear import Linear, decoding_layout
from unimodel.nn.norms import RMSNorm, make_norm
from unimodel.nn.positions import LearnedPositions, positions_from_mask, sinusoids
from unimodel.nn.shared_random import shared_generator, shared_randomness, shared_uniform

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "Block",
    "FeedForward",
    "KVCache",
    "LMHead",
    "LearnedPositions",
    "Linear",
    "MemoryCache",
    "RMSNorm",
    "attention_mask_for",
    "decoding_layout",
    "gather_positions",
    "get_activation",
    "init_normal_",
    "make_norm",
    "positions_from_mask",
    "shared_generator",
    "shared_randomness",
    "shared_uniform",
    "sinusoids",
]
