"""One config vocabulary across families, and the conformance check that keeps plugins to it.

Every family names a shared concept the same way (``max_positions``, never
``n_positions`` in one family and ``max_position_embeddings`` in another), so a
user's habits and a plugin's code carry from one family to the next. The table
below maps each name of the vocabulary to the synonyms other codebases use for
it; :func:`check_config_names` fails a model, encoder or decoder whose config
has a field spelled as one of those synonyms. Concepts only Hugging Face has
(``type_vocab_size``, T5's ``relative_attention_*``, ``init_factor``) are not in
the table: they keep the names that model's users know.

A field renamed to follow the vocabulary keeps its old name as a deprecated
alias through the config class's ``renamed`` mapping; the check also verifies
that mapping (each old name is not a field, each new name is one).

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import dataclasses

from unimodel.registry import Registry

VOCABULARY: dict[str, tuple[str, ...]] = {
    "vocab_size": ("n_vocab", "vocabulary_size", "ntoken", "num_tokens"),
    "max_positions": (
        "n_positions",
        "max_position_embeddings",
        "n_ctx",
        "max_seq_len",
        "max_sequence_length",
        "context_length",
    ),
    "d_model": ("hidden_size", "n_embd", "n_embed", "d_hidden", "embed_dim", "model_dim"),
    "n_layers": (
        "num_layers",
        "n_layer",
        "num_hidden_layers",
        "encoder_layers",
        "num_encoder_layers",
        "n_encoder_layers",
    ),
    "n_decoder_layers": ("decoder_layers", "num_decoder_layers", "n_dec_layers"),
    "n_heads": (
        "num_heads",
        "n_head",
        "num_attention_heads",
        "encoder_heads",
        "encoder_attention_heads",
        "n_encoder_heads",
    ),
    "n_decoder_heads": ("decoder_heads", "decoder_attention_heads", "num_decoder_heads", "num_decoder_attention_heads"),
    "d_ff": (
        "ffn_dim",
        "intermediate_size",
        "n_inner",
        "d_inner",
        "dim_feedforward",
        "ff_dim",
        "ffn_hidden_size",
        "encoder_ffn_dim",
    ),
    "d_decoder_ff": ("decoder_ffn_dim", "decoder_intermediate_size", "decoder_d_ff"),
    "head_dim": ("d_kv", "d_head", "head_size", "attention_head_size", "kv_channels", "dim_head"),
    "activation": ("hidden_act", "activation_function", "act_fn", "hidden_activation"),
    "layer_norm_eps": ("norm_eps", "layer_norm_epsilon", "rms_norm_eps", "ln_eps", "norm_epsilon"),
    "dropout": ("dropout_rate", "hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "dropout_prob"),
    "attn_dropout": ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob", "attention_dropout_prob"),
    "act_dropout": ("activation_dropout", "relu_dropout", "ffn_dropout"),
    "layerdrop": ("encoder_layerdrop", "layer_drop"),
    "decoder_layerdrop": ("decoder_layer_drop",),
    "tie_embeddings": ("tie_word_embeddings", "tie_weights", "tied_embeddings", "tie_word_embedding"),
    "causal_decoder": ("is_causal", "decoder_causal"),
    "memory_dim": ("cross_attention_dim", "encoder_hidden_size", "cross_attention_hidden_size", "encoder_dim"),
    "init_std": ("initializer_range", "init_range", "initializer_std"),
    "pad_token_id": ("pad_id", "pad_idx", "padding_idx", "pad_index"),
    "bos_token_id": ("bos_id", "bos_idx"),
    "eos_token_id": ("eos_id", "eos_idx"),
    "decoder_start_token_id": ("decoder_start_id",),
}
"""The vocabulary's name for each shared concept -> synonyms a config must not use for it."""

SYNONYMS: dict[str, str] = {syn: name for name, syns in VOCABULARY.items() for syn in syns}
"""Synonym -> the vocabulary's name for it."""


def synonym_fields(config_class: type) -> list[tuple[str, str]]:
    """(field, the vocabulary's name for it) for each field of ``config_class`` named by a synonym."""
    return [(f.name, SYNONYMS[f.name]) for f in dataclasses.fields(config_class) if f.name in SYNONYMS]


def check_config_names(kind: str, name: str, *, registry: Registry | None = None) -> None:
    """The config of model (family or preset), encoder or decoder ``name`` follows the vocabulary.

    Fails on a field named by a known synonym (``n_positions``, ``hidden_size``,
    ``tie_word_embeddings`` ...) and on a ``renamed`` mapping that does not
    point from a non-field to a field.
    """
    from unimodel.testing.checks import NotApplicable, _fail, kit_context

    what = f"{kind} {name!r}"
    with kit_context(registry) as reg:
        comp = reg.resolve_model(name)[0] if kind == "model" else reg.get(kind, name)
        if comp.base is not None or kind not in ("model", "encoder", "decoder"):
            raise NotApplicable(f"{what} has no config class of its own")
        config_class = getattr(comp.load(), "config_class", None)
        if config_class is None:
            raise _fail(what, "its target has no config_class")
        found = synonym_fields(config_class)
        if found:
            names = ", ".join(f"{field!r} (call it {canonical!r})" for field, canonical in found)
            raise _fail(
                what,
                f"config {config_class.__name__} names shared concepts outside unimodel's vocabulary: {names}. "
                "Rename the fields and keep the old names readable through the config class's "
                "`renamed = {old: new}` (see 'One vocabulary' in docs/plugins.md)",
            )
        fields = {f.name for f in dataclasses.fields(config_class)}
        for old, new in getattr(config_class, "renamed", {}).items():
            if old in fields or new not in fields:
                raise _fail(
                    what,
                    f"config {config_class.__name__}.renamed maps {old!r} -> {new!r}, but an alias must "
                    f"name a removed field and point at an existing one",
                )


__all__ = ["SYNONYMS", "VOCABULARY", "check_config_names", "synonym_fields"]
