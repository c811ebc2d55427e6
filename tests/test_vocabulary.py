"""One config vocabulary across families: renamed fields, their deprecated old names, and the table in the docs."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import build_tiny, tiny_config
from unimodel_bart.model import BartConfig
from unimodel_gpt.model import GPTConfig
from unimodel_t5.model import T5Config

import unimodel as um
from unimodel.errors import ConfigError
from unimodel.testing.vocabulary import SYNONYMS, VOCABULARY, synonym_fields

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"

# every field renamed to the vocabulary, with the name it had before
RENAMED = [
    (GPTConfig, "n_positions", "max_positions", 48),
    (T5Config, "d_kv", "head_dim", 16),
    (BartConfig, "encoder_layers", "n_layers", 3),
    (BartConfig, "decoder_layers", "n_decoder_layers", 1),
    (BartConfig, "encoder_heads", "n_heads", 8),
    (BartConfig, "decoder_heads", "n_decoder_heads", 2),
    (BartConfig, "encoder_ffn_dim", "d_ff", 40),
    (BartConfig, "decoder_ffn_dim", "d_decoder_ff", 24),
    (BartConfig, "encoder_layerdrop", "layerdrop", 0.25),
    (BartConfig, "tie_word_embeddings", "tie_embeddings", False),
]


@pytest.mark.parametrize(("cls", "old", "new", "value"), RENAMED, ids=[f"{c.__name__}.{o}" for c, o, _, _ in RENAMED])
def test_an_old_name_is_read_as_the_new_field_with_a_warning(cls, old, new, value):
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated; it is now called '{new}'"):
        config = cls.from_dict({old: value})
    assert getattr(config, new) == value and config == cls.from_dict({new: value})
    assert old not in config.to_dict()  # written back under the new name only
    with pytest.raises(ConfigError, match=rf"both '{old}' and '{new}' are given"):
        cls.from_dict({old: value, new: value})
    with pytest.warns(DeprecationWarning, match=new):
        assert cls.from_dict({}).replace(**{old: value}) == config  # replace() takes the old name too


def test_every_renamed_field_is_in_the_vocabulary():
    for cls, old, new, _ in RENAMED:
        assert cls.renamed[old] == new and SYNONYMS[old] == new
    assert {(cls, old) for cls, old, _, _ in RENAMED} == {
        (cls, old) for cls in (GPTConfig, T5Config, BartConfig) for old in cls.renamed
    }


def test_old_names_through_build_model_override_a_presets_new_names():
    # bart-tiny sets n_layers = 2; the old name given by the user wins, and the decoder follows it
    with pytest.warns(DeprecationWarning) as record:
        model = um.build_model("bart-tiny", vocab_size=60, encoder_layers=1, tie_word_embeddings=False)
    assert sorted(str(w.message).split("'")[3] for w in record) == ["encoder_layers", "tie_word_embeddings"]
    assert (model.config.n_layers, model.config.dec_layers, model.config.tie_embeddings) == (1, 1, False)
    assert len(model.encoder.blocks) == len(model.decoder.blocks) == 1


def test_old_names_in_a_run_file(tmp_path):
    run = tmp_path / "run.toml"
    run.write_text('[model]\nname = "gpt2-tiny"\nvocab_size = 77\nn_positions = 32\n\n[objective]\nname = "fim"\n')
    with pytest.warns(DeprecationWarning, match="'max_positions'"):
        model = um.build_model(run)
    assert (model.config.max_positions, model.decoder.max_positions, model.objective_name) == (32, 32, "fim")


def test_the_warning_reaches_users_outside_tests():
    """Python hides DeprecationWarning outside __main__; this one names the user's own config, so it shows."""
    code = textwrap.dedent("""
        import dataclasses
        from typing import ClassVar
        from unimodel.config import Config, param

        @dataclasses.dataclass(frozen=True)
        class C(Config):
            renamed: ClassVar[dict[str, str]] = {"n_positions": "max_positions"}
            max_positions: int = param(8, "")

        assert C.from_dict({"n_positions": 4}).max_positions == 4
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "RenamedFieldWarning: config: 'n_positions' is deprecated; it is now called 'max_positions'" in proc.stderr


def test_a_near_miss_of_an_old_name_suggests_the_new_one():
    with pytest.raises(ConfigError, match=r"unknown key 'encoder_layer'\. Did you mean 'n_layers'"):
        BartConfig.from_dict({"encoder_layer": 3})


def test_info_shows_the_former_name():
    rows = {name: doc for name, _, _, doc in T5Config.describe()}
    assert rows["head_dim"].endswith("(formerly d_kv)")


# The "model" section of config.json as unimodel wrote it before the fields were renamed.
OLD_CHECKPOINTS = {
    "gpt": {
        "name": "gpt", "vocab_size": 99, "n_positions": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": None,
        "activation": "gelu_tanh", "layer_norm_eps": 1e-05, "dropout": 0.0, "attn_dropout": 0.0,
        "tie_embeddings": True, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "memory_dim": None, "init_std": 0.02, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    },
    "t5": {
        "name": "t5", "vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "n_layers": 2,
        "n_decoder_layers": None, "n_heads": 4, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "dropout": 0.0, "layer_norm_eps": 1e-06, "feed_forward": "relu",
        "tie_embeddings": True, "scale_decoder_outputs": None, "init_factor": 1.0, "memory_dim": None,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": None,
    },
    "bart": {
        "name": "bart", "vocab_size": 99, "max_positions": 64, "d_model": 32, "encoder_layers": 2,
        "decoder_layers": 2, "encoder_heads": 4, "decoder_heads": 4, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37,
        "activation": "gelu", "dropout": 0.0, "attn_dropout": 0.0, "act_dropout": 0.0, "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0, "scale_embedding": False, "tie_word_embeddings": True, "causal_decoder": True,
        "memory_dim": None, "init_std": 0.02, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2,
    },
}  # fmt: skip


@pytest.mark.parametrize("family", list(OLD_CHECKPOINTS))
def test_a_checkpoint_written_before_the_renaming_still_loads(family, tmp_path):
    model = build_tiny(family)
    model.save(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"] = OLD_CHECKPOINTS[family]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.warns(DeprecationWarning, match="is deprecated; it is now called"):
        again = um.load(tmp_path)
    renamed = type(again.config).renamed
    for key, value in OLD_CHECKPOINTS[family].items():
        if key != "name":
            assert getattr(again.config, renamed.get(key, key)) == value, key
    ids = torch.randint(3, 99, (2, 7))
    batch = {"input_ids": ids, "decoder_input_ids": ids[:, :5]} if model.is_encoder_decoder else {"input_ids": ids}
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)


def test_registered_tiny_configs_and_presets_use_the_vocabulary():
    reg = um.get_registry()
    for comp in reg.components():
        values = {**comp.tiny, **comp.defaults}
        assert not set(values) & set(SYNONYMS), (comp.kind, comp.name, set(values) & set(SYNONYMS))
    for family in ("gpt", "bert", "t5", "bart"):
        assert not synonym_fields(reg.load("model", family).config_class), family
        assert tiny_config(family)["d_model"] == 32


def test_the_docs_table_is_the_vocabulary():
    """docs/plugins.md's naming table lists every name of the vocabulary and the old names still accepted."""
    text = DOCS.read_text()
    section = text[text.index("### One vocabulary") :]
    section = section[: section.index("\n## ", 1) if "\n## " in section[1:] else len(section)]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row[2])}
    assert set(VOCABULARY) <= documented, set(VOCABULARY) - documented
    for _, old, _, _ in RENAMED:
        assert f"`{old}`" in section, old
