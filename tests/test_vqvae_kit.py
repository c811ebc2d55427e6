"""The conformance kit on models of continuous inputs: what it runs on the VQ-VAE, and what it catches."""

from __future__ import annotations

import importlib
import sys

import pytest

from unimodel.registry import Registry
from unimodel.testing import ConformanceError, check_model, checks

# A VQ-VAE whose encoder mixes the rows of a batch (it centres on the batch mean) and one that
# reads integer pixel values without complaint: each breaks one check the kit runs on images.
BROKEN = """
import torch
from unimodel import PLUGIN_API_VERSION, hookimpl
from unimodel.interfaces import Backbone
from unimodel.registry import Component
from unimodel_vqvae.model import PROVIDES, VQVAE, VQVAEFamily


class RowMixing(VQVAE):
    def forward(self, input_ids=None, *, attention_mask=None, token_type_ids=None, position_ids=None,
                pixel_values=None):
        return super().forward(pixel_values=(pixel_values - pixel_values.mean(0) + 0.5).clamp(0, 1))


class Lenient(VQVAE):
    def check_pixels(self, x):
        return super().check_pixels(x if x.is_floating_point() else x.float())


class RowMixingFamily(VQVAEFamily):
    @classmethod
    def build_backbone(cls, config):
        return Backbone(encoder=RowMixing(config), decoder=None, lm_head=None, provides=PROVIDES)


class LenientFamily(VQVAEFamily):
    @classmethod
    def build_backbone(cls, config):
        return Backbone(encoder=Lenient(config), decoder=None, lm_head=None, provides=PROVIDES)


@hookimpl
def unimodel_api_version():
    return PLUGIN_API_VERSION


@hookimpl
def unimodel_components():
    tiny = {"image_size": 16, "hidden_channels": 16, "res_channels": 8, "num_res_blocks": 1, "latent_dim": 8,
            "codebook_size": 32, "kmeans_iters": 2}
    return [
        Component(kind="model", name=name, target=f"um_broken_vq:{cls}", summary="broken", provides=PROVIDES,
                  default_objective="vq_reconstruction", tiny=tiny)
        for name, cls in (("rowmixing", "RowMixingFamily"), ("lenient", "LenientFamily"))
    ]
"""


@pytest.fixture(scope="module")
def broken_registry(tmp_path_factory) -> Registry:
    folder = tmp_path_factory.mktemp("broken_vq")
    (folder / "um_broken_vq.py").write_text(BROKEN)
    sys.path.insert(0, str(folder))
    try:
        import unimodel_vqvae

        reg = Registry(discover=False)
        assert reg.add_plugin(unimodel_vqvae, "vqvae").ok
        rec = reg.add_plugin(importlib.import_module("um_broken_vq"), "broken")
        assert rec.ok, rec.error
        yield reg
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("um_broken_vq", None)


def test_kit_runs_its_input_checks_on_the_vqvae_with_example_images(broken_registry, one_thread):
    report = check_model("vqvae", registry=broken_registry, raise_on_failure=False)
    outcomes = {f"{o.check}[{o.case}]": o.status for o in report.outcomes}
    for test in ("forward", "roundtrip", "determinism", "input_errors", "config_names"):
        assert outcomes[f"{test}[model:vqvae]"] == "passed", report
    # vq_reconstruction has no LM head and still trains; features reads token ids
    assert outcomes["gradients[model:vqvae/objective:vq_reconstruction]"] == "passed", report


def test_kit_fails_an_encoder_whose_rows_depend_on_each_other(broken_registry, one_thread):
    with pytest.raises(ConformanceError, match="depend on the other rows"):
        checks.check_forward("rowmixing", registry=broken_registry)


def test_kit_fails_an_encoder_that_accepts_integer_pixels(broken_registry, one_thread):
    checks.check_forward("lenient", registry=broken_registry)  # a valid batch cannot show it
    with pytest.raises(ConformanceError, match="integer pixel_values was accepted"):
        checks.check_input_errors("lenient", registry=broken_registry)
