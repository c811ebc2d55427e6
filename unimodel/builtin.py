"""The core's own plugin: decoding strategies, the generic objectives and the built-in corpora.

Registered through the ``unimodel`` entry-point group like any other plugin.
"""

from __future__ import annotations

from unimodel.hookspecs import PLUGIN_API_VERSION, hookimpl
from unimodel.registry import Component

_CAUSAL = ("causal", "lm_head", "kv_cache")


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    return [
        Component(
            kind="decoding",
            name="greedy",
            target="unimodel.generation.strategies:greedy",
            summary="argmax at every step",
            requires=_CAUSAL,
        ),
        Component(
            kind="decoding",
            name="sample",
            target="unimodel.generation.strategies:sample",
            summary="multinomial sampling with temperature, top-k, top-p",
            requires=_CAUSAL,
        ),
        Component(
            kind="decoding",
            name="beam",
            target="unimodel.generation.strategies:beam_search",
            summary="beam search with length penalty and early stopping",
            requires=_CAUSAL,
        ),
        Component(
            kind="objective",
            name="features",
            target="unimodel.objectives:Features",
            summary="no head, no loss: hidden states only (feature extraction, backbone checkpoints)",
        ),
        Component(
            kind="model",
            name="encoder-decoder",
            target="unimodel.pairing:EncoderDecoder",
            summary="any registered encoder joined to any registered decoder (cross-attention, projection)",
            provides=("encoder_decoder", "causal", "lm_head", "kv_cache"),
            default_objective="seq2seq",
        ),
        Component(
            kind="objective",
            name="seq2seq",
            target="unimodel.objectives:Seq2Seq",
            summary="supervised source -> target pairs (optional label smoothing)",
            requires=("encoder_decoder", "lm_head"),
        ),
        Component(
            kind="corpus",
            name="pydoc",
            target="unimodel.data.corpus:pydoc_topics",
            summary="the Python standard library's pydoc topics (ships with every Python)",
        ),
        # a pair corpus: called with split="train" / "validation" (see unimodel.data.corpus)
        Component(
            kind="corpus",
            name="numbers",
            target="unimodel.data.synthetic:numbers_pairs",
            summary="pairs: numbers in digits -> English words (generated; 20,000 train / 500 validation)",
            extra={
                "data": "pairs",
                "corpus_options": "n_train = 20000, n_validation = 500, max_value = 99999 (99999999 when count > 1), "
                "seed = 0, count = 1 (numbers per pair, joined by ' , ')",
            },
        ),
    ]
