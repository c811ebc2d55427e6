"""Non-autoregressive generation for unimodel: the `cmlm` objective and `mask_predict` decoding.

Both work on any encoder-decoder whose decoder can run without its causal mask
(T5, BART, and `encoder-decoder` pairings of decoders with a `causal_decoder`
option): `cmlm` builds the model that way, `mask_predict` decodes it.

Only metadata lives here; modules are imported when a component is used.
"""

from __future__ import annotations

from unimodel import hookimpl
from unimodel.capabilities import Cap
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.registry import Component

_REQUIRES = frozenset({Cap.ENCODER_DECODER, Cap.NONCAUSAL_DECODER, Cap.LM_HEAD})

# generate() options mask_predict reads (besides the standard ones it honours: attention_mask,
# length_penalty, num_return_sequences, eos/pad/decoder_start token ids, streamer). max_new_tokens and
# max_length are listed so that the strategy sees whether the caller set them: the predicted
# length is capped by them only then, not by generate's default of 20 new tokens.
MASK_PREDICT_OPTIONS = (
    "iterations",
    "length_beam",
    "length",
    "return_history",
    "schedule",
    "early_stop",
    "length_score",
    "max_new_tokens",
    "max_length",
)


@hookimpl
def unimodel_api_version() -> int:
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components() -> list[Component]:
    return [
        Component(
            kind="objective",
            name="cmlm",
            target="unimodel_nat.objective:CMLM",
            config="unimodel_nat.config:CMLMConfig",
            summary="conditional masked LM on pairs: a uniform number of target tokens masked, plus a length head",
            requires=_REQUIRES,
        ),
        Component(
            kind="decoding",
            name="mask_predict",
            target="unimodel_nat.decoding:mask_predict",
            summary="parallel decoding: predicted lengths, all-masked start, least confident tokens re-predicted",
            requires=_REQUIRES,
            options=MASK_PREDICT_OPTIONS,
        ),
    ]
