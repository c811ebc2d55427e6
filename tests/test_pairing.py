"""Free pairing of a registered encoder with a registered decoder, trained with seq2seq."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import unimodel as um
import unimodel.interfaces
from unimodel.config import Config, param
from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Encoder, EncoderOutput
from unimodel.nn import Block
from unimodel.registry import Component, Registry, set_registry


@dataclass(frozen=True)
class BagConfig(Config):
    vocab_size: int = param(40, "vocabulary")
    d_model: int = param(24, "width")


class BagEncoder(Encoder):
    """A one-block bidirectional encoder, defined here as an outside plugin would."""

    config_class = BagConfig

    def __init__(self, config):
        super().__init__()
        self.d_model, self.vocab_size, self.max_positions = config.d_model, config.vocab_size, None
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(64, config.d_model)
        self.block = Block(d_model=config.d_model, n_heads=2, d_ff=48)

    def forward(self, input_ids, *, attention_mask=None, token_type_ids=None, position_ids=None):
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        x = self.emb(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        return EncoderOutput(self.block(x, mask=mask))

    def get_input_embeddings(self):
        return self.emb

    def build_lm_head(self):
        return nn.Linear(self.d_model, self.vocab_size)


class BagPlugin:
    @um.hookimpl
    def unimodel_components(self):
        return [Component(kind="encoder", name="bag", target=f"{__name__}:BagEncoder")]


@pytest.fixture
def registry():
    reg = Registry()
    reg.add_plugin(BagPlugin(), "bag")
    old = set_registry(reg)
    yield reg
    set_registry(old)


SPEC = {
    "name": "encoder-decoder",
    "encoder": {"name": "bag"},
    "decoder": {
        "name": "gpt",
        "n_layers": 1,
        "d_model": 32,
        "n_heads": 4,
        "max_positions": 32,
        "dropout": 0.0,
        "attn_dropout": 0.0,
    },
    "vocab_size": 40,
    "pad_token_id": 0,
    "decoder_start_token_id": 1,
}


def test_pair_builds_with_projection_and_cross_attention(registry):
    model = um.build_model(SPEC)
    assert model.is_encoder_decoder and model.objective_name == "seq2seq"
    assert model.decoder.cross_attention and model.encoder.proj.weight.shape == (32, 24)
    src = torch.randint(2, 40, (2, 7))
    out = model(input_ids=src, decoder_input_ids=torch.randint(2, 40, (2, 5)))
    assert out.logits.shape == (2, 5, 40) and out.encoder_last_hidden_state.shape == (2, 7, 32)


def test_pair_learns_to_copy_and_generates(registry):
    torch.manual_seed(0)
    model = um.build_model(SPEC)
    obj = model.objective
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        seqs = torch.randint(3, 40, (16, 4), generator=g).tolist()
        batch = obj.prepare([{"source": s, "target": s} for s in seqs])
        loss = obj(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    model.eval()
    src = torch.tensor([[5, 9, 13, 7]])
    out = model.generate(src, max_new_tokens=4)
    assert out[0, 0].item() == 1 and out[0, 1:].tolist() == [5, 9, 13, 7]


def test_seq2seq_batch_without_targets(registry):
    model = um.build_model(SPEC)
    with pytest.raises(DataError, match="no 'target'"):
        model.objective.prepare([{"source": [1, 2]}])
    with pytest.raises(DataError, match="needs 'labels'"):
        model.objective(model, {"input_ids": torch.tensor([[3, 4]])})


class PlainDecoder(um.Decoder):
    """A decoder with no way to read an encoder memory."""

    config_class = BagConfig
    is_causal = True
    cross_attention = False

    def __init__(self, config):
        super().__init__()
        self.d_model, self.vocab_size, self.max_positions = config.d_model, config.vocab_size, None
        self.emb = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, input_ids, **kwargs):
        return um.interfaces.DecoderOutput(self.emb(input_ids))

    def get_input_embeddings(self):
        return self.emb

    def build_lm_head(self):
        return nn.Linear(self.d_model, self.vocab_size)

    def new_cache(self, batch, capacity, *, dtype, device):
        raise um.UnimodelError("no cache")


class PlainPlugin:
    @um.hookimpl
    def unimodel_components(self):
        return [
            Component(kind="decoder", name="plain", target=f"{__name__}:PlainDecoder", provides=("causal", "lm_head"))
        ]


def test_a_decoder_that_cannot_cross_attend_is_refused(registry):
    registry.add_plugin(PlainPlugin(), "plain")
    with pytest.raises(ConfigError, match="decoder 'plain' cannot attend to an encoder memory"):
        um.build_model({**SPEC, "decoder": {"name": "plain"}})


def test_a_side_without_a_name_is_refused(registry):
    with pytest.raises(ConfigError, match="encoder.*table with a name"):
        um.build_model({**SPEC, "encoder": {"layers": 2}})


def test_unknown_side_names_the_kind(registry):
    with pytest.raises(um.UnimodelError, match="no encoder named 'bret'"):
        um.build_model({**SPEC, "encoder": {"name": "bret"}})
