"""The core's own plugin: decoding strategies, the generic objectives, the data kinds, the built-in
corpora and the reference encoder and decoder (the conformance kit's pairing partners).

Registered through the ``unimodel`` entry-point group like any other plugin.
"""

from __future__ import annotations

from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION, hookimpl
from unimodel.registry import Component

# Left-to-right strategies use a decoder's KV cache when it has one and re-run the prefix otherwise.
_CAUSAL = (Cap.CAUSAL, Cap.LM_HEAD)
_REFERENCE_TINY = {"vocab_size": 64, "max_positions": 64, "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64}
SEQ2SEQ_REQUIRES = frozenset({Cap.ENCODER_DECODER, Cap.LM_HEAD})  # the objective's class reads it from here


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
            config="unimodel.builtin_configs:FeaturesConfig",
            summary="no head, no loss: hidden states only (feature extraction, backbone checkpoints)",
        ),
        Component(
            kind="model",
            name="encoder-decoder",
            target="unimodel.pairing:EncoderDecoder",
            config="unimodel.builtin_configs:EncoderDecoderConfig",
            summary="any registered encoder joined to any registered decoder (cross-attention, projection)",
            provides=("encoder_decoder", "causal", "lm_head", "kv_cache"),
            default_objective="seq2seq",
        ),
        # the conformance kit pairs every encoder with this decoder and every decoder with this encoder
        Component(
            kind="encoder",
            name="reference",
            target="unimodel.testing.reference:ReferenceEncoder",
            summary="minimal pre-LN encoder from unimodel.nn; the conformance kit's pairing partner for decoders",
            provides=("encoder_only", "lm_head"),
            tiny=_REFERENCE_TINY,
        ),
        Component(
            kind="decoder",
            name="reference",
            target="unimodel.testing.reference:ReferenceDecoder",
            summary="minimal causal KV-cached decoder from unimodel.nn; the conformance kit's partner for encoders",
            provides=("causal", "lm_head", "kv_cache"),
            tiny=_REFERENCE_TINY,
        ),
        Component(
            kind="objective",
            name="seq2seq",
            target="unimodel.objectives:Seq2Seq",
            config="unimodel.builtin_configs:Seq2SeqConfig",
            summary="supervised source -> target pairs (optional label smoothing)",
            requires=SEQ2SEQ_REQUIRES,
        ),
        # data kinds: what an objective's data_kind names (see unimodel.data.kinds)
        Component(
            kind="data",
            name="text",
            target="unimodel.data.dataset:PackedData",
            summary="documents packed into fixed-length token blocks ({'input_ids': block} examples)",
        ),
        Component(
            kind="data",
            name="pairs",
            target="unimodel.data.dataset:PairData",
            summary="source -> target pairs ({'source': ids, 'target': ids} examples); exact match",
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
            data_kind="pairs",
            extra={
                "corpus_options": "n_train = 20000, n_validation = 500, max_value = 99999 (99999999 when count > 1), "
                "seed = 0, count = 1 (numbers per pair, joined by ' , ')",
            },
        ),
    ]
