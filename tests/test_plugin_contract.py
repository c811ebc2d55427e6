"""The plugin contract as the core keeps it: what the model passes to encoders and decoders, generation for a
decoder without a KV cache, qualified names that keep built-ins working beside clashing plugins, and checkpoints
that say which package provided their components.
"""

from __future__ import annotations

import json

import pytest
import torch
import unimodel_gpt
from unimodel_gpt.model import GPT, GPTDecoder
from unimodel_gpt.objectives import CausalLM

import unimodel as um
import unimodel.builtin
from unimodel import hookimpl
from unimodel.errors import CheckpointError, DuplicateComponentError, InputError
from unimodel.generation import recompute_prefix
from unimodel.hookspecs import PLUGIN_API_VERSION
from unimodel.interfaces import Backbone, Decoder
from unimodel.registry import Component, Registry, set_registry
from unimodel.routing import _SIGNATURES
from unimodel.testing.reference import ReferenceEncoder

HERE = __name__
GPT_TINY = {"vocab_size": 64, "max_positions": 32, "d_model": 32, "n_layers": 2, "n_heads": 4}


class MasklessEncoder(ReferenceEncoder):
    """Declares neither a mask nor token types nor positions."""

    def forward(self, input_ids):  # type: ignore[override]
        return super().forward(input_ids)


class CachelessDecoder(GPTDecoder):
    """GPT's decoder without a cache: no new_cache, no `cache` argument."""

    new_cache = Decoder.new_cache

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, memory=None, memory_mask=None):
        return super().forward(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, memory=memory, memory_mask=memory_mask
        )


class PositionlessDecoder(GPTDecoder):
    """Declares no position_ids: it numbers the new tokens itself."""

    def forward(self, input_ids, *, attention_mask=None, memory=None, memory_mask=None, cache=None):
        return super().forward(
            input_ids, attention_mask=attention_mask, memory=memory, memory_mask=memory_mask, cache=cache
        )


class Positionless(GPT):
    @classmethod
    def build_backbone(cls, config):
        backbone = super().build_backbone(config)
        decoder = PositionlessDecoder(config)
        decoder.load_state_dict(backbone.decoder.state_dict())
        return Backbone(encoder=None, decoder=decoder, lm_head=decoder.build_lm_head(), provides=backbone.provides)


class Cacheless(GPT):
    @classmethod
    def build_backbone(cls, config):
        decoder = CachelessDecoder(config)
        provides = frozenset({"decoder_only", "causal", "lm_head"})
        return Backbone(encoder=None, decoder=decoder, lm_head=decoder.build_lm_head(), provides=provides)


class OtherCLM(CausalLM):
    """A third party's objective that happens to be called `clm`."""


def never_greedy(model, inputs, settings):
    raise AssertionError("a third party's strategy ran where the core's greedy was meant")


class _Plugin:
    def __init__(self, *components: Component) -> None:
        self.components = list(components)

    @hookimpl
    def unimodel_api_version(self) -> int:
        return PLUGIN_API_VERSION

    @hookimpl
    def unimodel_components(self) -> list[Component]:
        return self.components


@pytest.fixture
def registry(one_thread):
    """The core and GPT plugins plus a plugin of this module's components, installed process-wide."""
    reg = Registry(discover=False)
    assert reg.add_plugin(unimodel.builtin, "core", source="unimodel", version=um.__version__).ok
    assert reg.add_plugin(unimodel_gpt, "gpt", source="unimodel", version=um.__version__).ok
    plugin = _Plugin(
        Component(kind="encoder", name="maskless", target=f"{HERE}:MasklessEncoder", summary="no mask"),
        Component(
            kind="model",
            name="positionless",
            target=f"{HERE}:Positionless",
            summary="no position ids",
            provides=("decoder_only", "causal", "lm_head", "kv_cache"),
            default_objective="gpt:clm",
        ),
        Component(
            kind="model",
            name="cacheless",
            target=f"{HERE}:Cacheless",
            summary="no cache",
            provides=("decoder_only", "causal", "lm_head"),
            default_objective="gpt:clm",
        ),
    )
    assert reg.add_plugin(plugin, "local", source="unimodel-local", version="0.3.1").ok
    old = set_registry(reg)
    yield reg
    set_registry(old)


def pair(encoder: str, **decoder: object) -> um.Model:
    return um.build_model(
        {
            "name": "encoder-decoder",
            "vocab_size": 64,
            "encoder": {"name": encoder, "max_positions": 32, "d_model": 32, "n_heads": 4},
            "decoder": {"name": "gpt", **{**GPT_TINY, **decoder}},
        }
    ).eval()


# ------------------------------------------------------------------ what encoders and decoders receive
def test_an_encoder_gets_only_what_its_forward_declares(registry):
    src, tgt = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (2, 5))
    for d_model in (32, 48):  # equal widths, and a projection between them
        model = pair("reference", d_model=d_model)  # the reference encoder declares no token_type_ids
        assert model(input_ids=src, decoder_input_ids=tgt).logits.shape == (2, 5, 64)
        with pytest.raises(InputError) as err:
            model(input_ids=src, decoder_input_ids=tgt, token_type_ids=torch.zeros_like(src))
        # the model's own capability check names the problem before the encoder is called
        assert str(err.value) == (
            "model 'encoder-decoder' has no token types (segment embeddings), so token_type_ids would be ignored; "
            "do not pass them"
        )


def test_a_mask_is_left_out_only_when_it_masks_nothing(registry):
    model = pair("maskless")
    src, tgt = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (2, 5))
    plain = model(input_ids=src, decoder_input_ids=tgt).logits
    ones = model(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=tgt).logits
    assert torch.equal(plain, ones)
    padded = torch.ones_like(src)
    padded[1, -2:] = 0
    with pytest.raises(InputError, match=r"does not take attention_mask, so it cannot run a padded batch"):
        model(input_ids=src, attention_mask=padded, decoder_input_ids=tgt)
    with pytest.raises(InputError, match=r"does not take attention_mask, so it cannot run a padded batch"):
        model.generate(src, attention_mask=padded, max_new_tokens=2)  # generation encodes through the same call
    assert model.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=2).shape == (2, 3)


def test_position_ids_are_a_hint_generation_leaves_out_for_a_decoder_that_numbers_tokens_itself(registry):
    model = um.build_model("positionless", **GPT_TINY).eval()
    prompt = torch.randint(0, 64, (2, 5))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    assert model.generate(prompt, attention_mask=mask, max_new_tokens=3).shape == (2, 8)
    with pytest.raises(InputError, match=r"its decoder \(PositionlessDecoder\) does not take position_ids"):
        model(input_ids=prompt, position_ids=torch.arange(5).expand(2, 5))


def test_the_signature_is_inspected_once_per_class(registry, monkeypatch):
    model = pair("reference")
    src, tgt = torch.randint(0, 64, (1, 4)), torch.randint(0, 64, (1, 3))
    model(input_ids=src, decoder_input_ids=tgt)
    assert {ReferenceEncoder, GPTDecoder} <= set(_SIGNATURES)

    def no_more(*args, **kwargs):
        raise AssertionError("forward signatures are inspected again")

    monkeypatch.setattr(unimodel.routing.inspect, "signature", no_more)
    for _ in range(3):
        model(input_ids=src, decoder_input_ids=tgt)
    pair("reference")(input_ids=src, decoder_input_ids=tgt)  # another instance of the same classes


# ------------------------------------------------------------------ generation without a KV cache
def test_a_decoder_without_a_cache_generates_what_the_cached_decoder_does(registry):
    torch.manual_seed(0)
    cached = um.build_model("gpt", **GPT_TINY, init_std=0.3)  # larger weights: tokens depend on the context
    cacheless = um.build_model("cacheless", **GPT_TINY)
    cacheless.load_state_dict(cached.state_dict())
    prompt = torch.randint(0, 64, (2, 6))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # left padding
    for options in (
        {"max_new_tokens": 8},
        {"max_new_tokens": 8, "attention_mask": mask},
        {"max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2},
        {"max_new_tokens": 6, "do_sample": True, "seed": 3, "num_return_sequences": 2},
    ):
        expected = cached.generate(prompt, **options)
        assert torch.equal(cacheless.generate(prompt, **options), expected), options
        with recompute_prefix():  # the same path for the cached model, ignoring its cache
            assert torch.equal(cached.generate(prompt, **options), expected), options
    assert len(set(expected[:, 6:].flatten().tolist())) > 2  # the continuation is not one repeated token
    with pytest.raises(InputError, match="keeps no cache for incremental decoding"):
        cacheless(input_ids=prompt, use_cache=True)


# ------------------------------------------------------------------ name clashes
@pytest.fixture
def clash(registry):
    registry.add_plugin(
        _Plugin(
            Component(kind="objective", name="clm", target=f"{HERE}:OtherCLM", summary="another clm", requires=()),
            Component(kind="decoding", name="greedy", target=f"{HERE}:never_greedy", summary="not the core's"),
        ),
        "third",
        source="unimodel-third",
    )
    return registry


def test_a_plugin_objective_named_clm_does_not_break_gpt2_tiny(clash, tmp_path):
    small = {"vocab_size": 64, "max_positions": 32}
    model = um.build_model("gpt2-tiny", **small)
    assert type(model.objective) is CausalLM and model.objective_name == "gpt:clm"
    with pytest.raises(DuplicateComponentError, match=r"name the one you mean: 'gpt:clm' or 'third:clm'"):
        um.build_model("gpt2-tiny", objective="clm", **small)
    other = um.build_model("gpt2-tiny", objective="third:clm", **small)
    assert type(other.objective) is OtherCLM and other.objective_name == "third:clm"
    for built in (model, other):
        built.save(tmp_path / built.objective_name.replace(":", "-"))
        loaded = um.load(tmp_path / built.objective_name.replace(":", "-"))
        assert type(loaded.objective) is type(built.objective)
    # generation picks the core's strategies; a plain name that clashes is an error; a qualified one runs
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2).shape == (1, 5)
    with pytest.raises(DuplicateComponentError, match="'core:greedy' or 'third:greedy'"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, strategy="greedy")
    with pytest.raises(AssertionError, match="a third party's strategy ran"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, strategy="third:greedy")


# ------------------------------------------------------------------ provenance in checkpoints
def test_a_checkpoint_records_where_its_components_come_from(registry, tmp_path):
    um.build_model("cacheless", **GPT_TINY).save(tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["provenance"] == {
        "model": {"component": "local:cacheless", "distribution": "unimodel-local", "version": "0.3.1"},
        "objective": {"component": "gpt:clm", "distribution": "unimodel", "version": um.__version__},
    }
    assert config["model"]["name"] == "cacheless" and config["objective"]["name"] == "clm"


def test_loading_without_the_plugin_says_which_package_to_install(registry, tmp_path):
    um.build_model("cacheless", **GPT_TINY).save(tmp_path / "ck")
    without = Registry(discover=False)
    without.add_plugin(unimodel.builtin, "core")
    without.add_plugin(unimodel_gpt, "gpt")
    set_registry(without)
    with pytest.raises(CheckpointError) as err:
        um.load(tmp_path / "ck")
    assert str(err.value) == (
        f"checkpoint {str(tmp_path / 'ck')!r} needs model 'cacheless' from plugin 'local' (unimodel-local 0.3.1), "
        "which is not installed: pip install 'unimodel-local==0.3.1' (the version the checkpoint was saved with)"
    )
    failed = type("Failed", (), {"unimodel_components": hookimpl(lambda self: 1 / 0)})()
    without.add_plugin(failed, "local")
    with pytest.raises(CheckpointError, match=r"from plugin 'local' \(unimodel-local 0.3.1\), which failed to load"):
        um.load(tmp_path / "ck")


def test_a_checkpoint_without_provenance_still_loads(registry, tmp_path):
    model = um.build_model("gpt", **GPT_TINY)
    model.save(tmp_path / "ck")
    path = tmp_path / "ck" / "config.json"
    config = json.loads(path.read_text())
    del config["provenance"]
    path.write_text(json.dumps(config))
    loaded = um.load(tmp_path / "ck")
    assert loaded.name == "gpt" and loaded.objective_name == "clm"
    assert torch.equal(loaded.decoder.wte.weight, model.decoder.wte.weight)
