"""One backbone, several objectives: the swap is one config line; wrong pairs fail at build time.

Also keeps docs/objectives.md's table in step with the registry.
"""

import re
from pathlib import Path

import pytest
import torch

import unimodel as um
from unimodel.data.tokenizer import Tokenizer
from unimodel.errors import IncompatibleObjectiveError
from unimodel.model import compatible_objectives
from unimodel.registry import get_registry

REG = get_registry()
TEXT = ["The cat sat on the mat. The dog ran after the cat. Birds sing in the morning."] * 30
SWAPS = {
    "gpt": ["clm", "fim"],
    "bert": ["mlm", "classify", "tag"],
    "t5": ["span_corruption", "text_infilling", "seq2seq"],
    "bart": ["span_corruption", "text_infilling", "seq2seq"],
    "xlnet": ["plm", "mlm", "classify", "tag"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def family_tokenizer(name):
    recipe = REG.get("model", name).tokenizer
    return Tokenizer.train(recipe.kind, TEXT, 400, recipe.roles)


def examples(tok, objective, n=4, length=24):
    g = torch.Generator().manual_seed(0)
    ids = tok.encode(" ".join(TEXT))
    out = []
    for i in range(n):
        block = ids[i * length : (i + 1) * length]
        ex = {
            "input_ids": block,
            "source": block[: length // 2],
            "target": block[length // 2 :],
            "label": i % 2,
            "labels": torch.randint(0, 2, (len(block),), generator=g).tolist(),
        }
        out.append(ex)
    return out


@pytest.mark.parametrize("family,objective", [(f, o) for f, objs in SWAPS.items() for o in objs])
def test_same_backbone_each_objective_trains(family, objective):
    tok = family_tokenizer(family)
    tiny = dict(REG.get("model", family).tiny)
    tiny["vocab_size"] = tok.vocab_size
    torch.manual_seed(0)
    base = um.build_model(family, tokenizer=tok, **tiny)
    torch.manual_seed(0)
    model = um.build_model(family, objective=objective, tokenizer=tok, **tiny)
    backbone = {k for k in base.state_dict() if not k.startswith("heads.")}
    assert backbone == {k for k in model.state_dict() if not k.startswith("heads.")}
    batch = model.objective.prepare(examples(tok, objective), tokenizer=tok, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model.objective(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "family,objective",
    [
        ("gpt", "mlm"),
        ("gpt", "span_corruption"),
        ("bert", "clm"),
        ("bert", "span_corruption"),
        ("t5", "mlm"),
        ("bart", "fim"),
        ("xlnet", "clm"),
        ("bert", "plm"),
    ],
)
def test_incompatible_pairs_fail_at_build_listing_the_ones_that_work(family, objective):
    tiny = dict(REG.get("model", family).tiny)
    works = REG.compatible_objectives(REG.get("model", family).provides)
    with pytest.raises(IncompatibleObjectiveError) as err:
        um.build_model(family, objective=objective, **tiny)
    assert all(name in str(err.value) for name in works)


def test_docs_table_matches_the_registry():
    doc = (Path(__file__).parents[1] / "docs" / "objectives.md").read_text()
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\|\s*`([\w-]+)`\s*\|(.*)\|\s*$", line)
        if m and m.group(1) in {c.name for c in REG.components("model") if c.base is None}:
            rows[m.group(1)] = set(re.findall(r"`([\w-]+)`", m.group(2)))
    pairing = {"name": "encoder-decoder", "encoder": {"name": "bert"}, "decoder": {"name": "gpt"}}
    for comp in REG.components("model"):
        if comp.base is None and comp.plugin in ("core", "gpt", "bert", "t5", "bart", "xlnet"):
            spec = pairing if comp.name == "encoder-decoder" else comp.name  # objectives' model options applied
            assert rows.get(comp.name) == set(compatible_objectives(spec)), comp.name
