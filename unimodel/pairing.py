"""Free pairing: any registered encoder with any registered decoder.

``build_model({"name": "encoder-decoder", "encoder": {"name": "bert"},
"decoder": {"name": "gpt", "n_layers": 2}})`` joins the two. A decoder that can
gain cross-attention (its config has ``memory_dim``) gains it; when the widths
differ, a learned projection maps the encoder's states to the decoder's width.
Neither side knows about the other: this module only uses the interfaces.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from unimodel.builtin_configs import EncoderDecoderConfig
from unimodel.config import Config
from unimodel.errors import ConfigError
from unimodel.interfaces import Backbone, Decoder, Encoder, EncoderOutput, ModelFamily
from unimodel.registry import Registry, get_registry


def _resolve(kind: str, spec: dict[str, Any], vocab_size: int | None, reg: Registry) -> tuple[type, Config, Any]:
    """(component class, its config, registry record) for one side of the pair.

    ``name`` may be an encoder/decoder component or a model preset whose family
    registers one of the same name (``bert-mini`` -> encoder ``bert``).
    """
    values = dict(spec)
    name = values.pop("name")
    preset: dict[str, Any] = {}
    if not reg.has(kind, name) and reg.has("model", name):
        family, preset = reg.resolve_model(name)
        name = family.name
    comp = reg.get(kind, name)
    cls = comp.load()
    shared = {}  # the pair's vocabulary wins over either side's
    if vocab_size is not None and "vocab_size" in cls.config_class.field_names():
        shared = {"vocab_size": vocab_size}
    return cls, cls.config_class.from_layers(preset, values, shared, section=f"{kind} {name!r}"), comp


class ProjectedEncoder(Encoder[Config]):
    """An encoder followed by a linear map to the decoder's width: (B, S, D_enc) -> (B, S, D_dec)."""

    forwards_inputs_to = "inner"  # the model passes what the inner encoder's forward declares

    def __init__(self, inner: Encoder, d_out: int) -> None:
        super().__init__()
        self.inner = inner
        self.proj = nn.Linear(inner.d_model, d_out)
        self.d_model, self.vocab_size, self.max_positions = d_out, inner.vocab_size, inner.max_positions
        self.provides = inner.provides

    def forward(self, input_ids: Tensor, **kwargs: Any) -> EncoderOutput:
        out = self.inner(input_ids, **kwargs)
        return EncoderOutput(self.proj(out.last_hidden_state), out.pooler_output, out.extra)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.inner.get_input_embeddings()

    def build_lm_head(self) -> nn.Module:
        return self.inner.build_lm_head()


class EncoderDecoder(ModelFamily[EncoderDecoderConfig]):
    """The ``encoder-decoder`` model: a registered encoder joined to a registered decoder."""

    config_class = EncoderDecoderConfig

    @classmethod
    def provides_for(cls, config: EncoderDecoderConfig) -> frozenset[str]:
        """Capabilities of the pair (:meth:`EncoderDecoderConfig.provides`)."""
        return config.provides()

    @classmethod
    def build_backbone(cls, config: EncoderDecoderConfig) -> Backbone:
        reg = get_registry()
        assert config.encoder is not None and config.decoder is not None  # check() refuses a pair without them
        enc_cls, enc_cfg, _ = _resolve("encoder", config.encoder, config.vocab_size, reg)
        dec_cls, dec_cfg, dec_comp = _resolve("decoder", config.decoder, config.vocab_size, reg)
        encoder: Encoder = enc_cls(enc_cfg)
        d_dec = getattr(dec_cfg, "d_model", None)
        if "memory_dim" in dec_cfg.field_names():  # a decoder that gains cross-attention on request
            dec_cfg = dec_cfg.replace(memory_dim=d_dec)
        if "causal_decoder" in dec_cfg.field_names():
            dec_cfg = dec_cfg.replace(causal_decoder=config.causal_decoder)
        elif not config.causal_decoder:
            cls.provides_for(config)  # raises: this decoder cannot run non-causally
        decoder: Decoder = dec_cls(dec_cfg)
        if not getattr(decoder, "cross_attention", False):
            raise ConfigError(
                f"decoder {dec_comp.name!r} cannot attend to an encoder memory (it has no cross-attention and no "
                f"memory_dim option), so it cannot be joined to encoder {config.encoder['name']!r}"
            )
        if encoder.vocab_size != decoder.vocab_size and not config.vocab_size:
            raise ConfigError(
                f"encoder vocabulary ({encoder.vocab_size}) and decoder vocabulary ({decoder.vocab_size}) differ; "
                "set vocab_size on the pair so both sides share one tokenizer"
            )
        if encoder.d_model != decoder.d_model:
            encoder = ProjectedEncoder(encoder, decoder.d_model)
        if config.share_embeddings:
            enc_emb, dec_emb = encoder.get_input_embeddings(), decoder.get_input_embeddings()
            if enc_emb.weight.shape != dec_emb.weight.shape:
                raise ConfigError(
                    f"share_embeddings needs equal embedding shapes; encoder {tuple(enc_emb.weight.shape)} vs "
                    f"decoder {tuple(dec_emb.weight.shape)}"
                )
            enc_emb.weight = dec_emb.weight
        start = config.decoder_start_token_id
        if start is None:
            start = config.bos_token_id if config.bos_token_id is not None else config.pad_token_id
        return Backbone(
            encoder=encoder,
            decoder=decoder,
            lm_head=decoder.build_lm_head(),
            provides=cls.provides_for(config),
            special_tokens={
                "bos": config.bos_token_id,
                "eos": config.eos_token_id,
                "pad": config.pad_token_id,
                "decoder_start": start,
            },
        )
