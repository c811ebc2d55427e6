"""The config classes of the core's own components: the encoder-decoder pairing and the generic objectives.

This module imports neither torch nor the modules that build the components,
so a run file naming them is checked (the registry records in
:mod:`unimodel.builtin` name these classes) before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from unimodel.capabilities import Cap
from unimodel.config import Config, param
from unimodel.errors import ConfigError


@dataclass(frozen=True)
class EncoderDecoderConfig(Config):
    section = "model 'encoder-decoder'"

    encoder: dict | None = param(None, 'the encoder: {name = "<encoder or model preset>", <its config fields>...}')
    decoder: dict | None = param(None, 'the decoder: {name = "<decoder or model preset>", <its config fields>...}')
    vocab_size: int | None = param(None, "vocabulary shared by both sides (set from the tokenizer when training)")
    share_embeddings: bool = param(False, "one embedding table for both sides (needs equal widths)")
    causal_decoder: bool = param(
        True, "false: the decoder sees all its inputs (cmlm / mask-predict); the decoder needs a causal_decoder option"
    )
    bos_token_id: int | None = param(None, "beginning-of-sequence id")
    eos_token_id: int | None = param(None, "end-of-sequence id")
    pad_token_id: int | None = param(0, "padding id")
    decoder_start_token_id: int | None = param(None, "first decoder input (bos, or pad when null)")

    def check(self) -> None:
        for side in ("encoder", "decoder"):
            spec = getattr(self, side)
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                self.fail(side, f'give the {side} as a table with a name, e.g. {side} = {{ name = "..." }}')
        self.require_positive("vocab_size")
        inner = (self.decoder or {}).get("causal_decoder", self.causal_decoder)
        if inner != self.causal_decoder:
            self.fail(
                ("causal_decoder", "decoder"),
                f"the decoder table sets causal_decoder = {inner!r}; set causal_decoder on the pair instead",
            )

    def provides(self) -> frozenset[str]:
        """Capabilities of the pair: the decoder's, minus decoder-only, plus encoder-decoder.

        With ``causal_decoder = false`` the decoder runs without its causal mask:
        ``noncausal_decoder`` replaces ``causal`` and ``kv_cache``. A decoder whose
        config has no ``causal_decoder`` option cannot, which is a :class:`ConfigError`.
        """
        from unimodel.registry import get_registry

        reg = get_registry()
        assert self.decoder is not None  # check() refuses a pair without one
        dec_name = self.decoder["name"]
        if not reg.has("decoder", dec_name) and reg.has("model", dec_name):
            dec_name = reg.resolve_model(dec_name)[0].name
        dec = reg.get("decoder", dec_name)
        provides = frozenset(dec.provides) - {Cap.DECODER_ONLY} | {Cap.ENCODER_DECODER}
        if self.causal_decoder:
            return provides
        if "causal_decoder" not in dec.config_class().field_names():
            raise ConfigError(
                f"model 'encoder-decoder': causal_decoder = false, but decoder {dec_name!r} always runs causally "
                "(its config has no causal_decoder option); pair a decoder that has one"
            )
        return provides - {Cap.CAUSAL, Cap.KV_CACHE} | {Cap.NONCAUSAL_DECODER}


@dataclass(frozen=True)
class FeaturesConfig(Config):
    section = "objective 'features'"


@dataclass(frozen=True)
class Seq2SeqConfig(Config):
    section = "objective 'seq2seq'"

    label_smoothing: float = param(0.0, "label smoothing of the target cross-entropy")
    add_eos: bool = param(True, "end source and target with the tokenizer's eos")
    add_bos: bool = param(False, "start source and target with the tokenizer's bos (BART-style framing)")
    max_source_length: int | None = param(None, "truncate sources to this many tokens")
    max_target_length: int | None = param(None, "truncate targets to this many tokens")

    def check(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            self.fail("label_smoothing", "must be in [0, 1)")


__all__ = ["EncoderDecoderConfig", "FeaturesConfig", "Seq2SeqConfig"]
