"""Images as data: folders of PNG/JPEG files, .npy arrays, the shapes corpus, PNG grids."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from unimodel_vqvae.images import ImageSet, load_image_folder, load_npy, save_image_grid, save_reconstruction_grid
from unimodel_vqvae.shapes import SHAPE_CLASSES, shapes

import unimodel as um
from unimodel.errors import DataError


def write_png(path, colour, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# ------------------------------------------------------------------ folders
def test_folder_is_read_recursively_with_labels_from_sub_folders(tmp_path):
    write_png(tmp_path / "dogs" / "a.png", (255, 0, 0))
    write_png(tmp_path / "cats" / "deep" / "b.PNG", (0, 255, 0))
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "cats" / "c.jpg", quality=100)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, labels=True)
    assert data.class_names == ("cats", "dogs")
    assert [s.split("/")[-1] for s in data.sources] == ["c.jpg", "b.PNG", "a.png"]
    assert data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.images[2, :, 0, 0].tolist() == [255, 0, 0]
    item = data[1]
    assert item["label"] == 0 and torch.equal(item["pixel_values"][:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    grey = load_image_folder(tmp_path / "dogs", channels=1)
    assert grey.images.shape == (1, 1, 8, 8) and grey.labels is None


def test_folder_sizes_must_agree_unless_resized(tmp_path):
    write_png(tmp_path / "a.png", (10, 20, 30), size=(8, 8))
    write_png(tmp_path / "b.png", (10, 20, 30), size=(12, 6))
    with pytest.raises(DataError, match=r"b.png' is 12x6 but the first image is 8x8; pass image_size"):
        load_image_folder(tmp_path)
    data = load_image_folder(tmp_path, image_size=4)
    assert data.images.shape == (2, 3, 4, 4)
    assert data.images[1, :, 2, 2].tolist() == [10, 20, 30]
    with pytest.raises(DataError, match="lies directly in"):
        load_image_folder(tmp_path, labels=True)


def test_unreadable_image_files_are_named(tmp_path):
    write_png(tmp_path / "good.png", (1, 2, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"image '.*broken.png' cannot be read"):
        load_image_folder(tmp_path)
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:300])
    with pytest.raises(DataError, match=r"image '.*cut.png' cannot be read"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path / "empty")


# ------------------------------------------------------------------ .npy
def test_npy_layouts_and_value_ranges(tmp_path):
    g = np.random.default_rng(0)
    nhwc = g.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", nhwc)
    np.save(tmp_path / "labels.npy", np.arange(5))
    data = load_npy(tmp_path / "nhwc.npy", labels_path=tmp_path / "labels.npy")
    assert data.images.shape == (5, 3, 6, 6) and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(data.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    np.save(tmp_path / "nchw.npy", nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert torch.equal(load_npy(tmp_path / "nchw.npy").images, data.images)
    np.save(tmp_path / "grey.npy", g.random((4, 6, 6)))
    assert load_npy(tmp_path / "grey.npy").images.shape == (4, 1, 6, 6)
    np.save(tmp_path / "range.npy", g.random((2, 6, 6, 3)) * 2)
    with pytest.raises(DataError, match=r"range.npy' holds values in \[.*\]; expected floats in \[0, 1\]"):
        load_npy(tmp_path / "range.npy")
    np.save(tmp_path / "flat.npy", np.zeros((5, 7)))
    with pytest.raises(DataError, match=r"shape \(5, 7\)"):
        load_npy(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="must be 5 integers"):
        load_npy(tmp_path / "nhwc.npy", labels_path=tmp_path / "grey.npy")


def test_pickled_arrays_are_refused(tmp_path):
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, [2]]
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    with pytest.raises(DataError, match=r"objects.npy' holds pickled Python objects.*allow_pickle=False"):
        load_npy(tmp_path / "objects.npy")
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(np.zeros((2, 4, 4, 3))))
    with pytest.raises(DataError, match=r"pickle.npy' holds pickled Python objects"):
        load_npy(tmp_path / "pickle.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npy' cannot be read as a .npy array"):
        load_npy(tmp_path / "junk.npy")


# ------------------------------------------------------------------ shapes
def test_shapes_are_deterministic_labelled_and_split():
    a = shapes("train", n_train=64, seed=3)
    b = shapes("train", n_train=64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(shapes("train", n_train=64, seed=4).images, a.images)
    val = shapes("validation", n_validation=64, seed=3)
    assert not torch.equal(val.images, a.images)
    assert a.images.shape == (64, 3, 32, 32) and a.class_names == SHAPE_CLASSES
    assert set(a.labels.tolist()) == set(range(len(SHAPE_CLASSES)))
    # a shape and its background differ: each image has both its corner colour and another one
    corners = a.images[:, :, 0, 0]
    assert all(bool((a.images[i] != corners[i, :, None, None]).any()) for i in range(64))
    big = shapes("validation", n_validation=3, image_size=64)
    assert big.images.shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="split"):
        shapes("test")


def test_shapes_is_a_registered_image_corpus():
    comp = um.get_registry().get("corpus", "shapes")
    data = comp.load()("validation", n_validation=4)
    assert isinstance(data, ImageSet) and len(data) == 4


# ------------------------------------------------------------------ grids
def test_image_grid_png_layout(tmp_path):
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(images, tmp_path / "out" / "grid.png", nrow=3, padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    # image 4 is row 1, column 1: top-left pixel at (2 + 10, 2 + 10)
    assert grid[12, 12].tolist() == (images[4, :, 0, 0] * 255).round().to(torch.uint8).tolist()
    assert grid[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(DataError, match="C 1 or 3"):
        save_image_grid(torch.rand(2, 4, 8, 8), tmp_path / "x.png")


def test_reconstruction_grid_puts_originals_above(tmp_path):
    originals, recs = torch.zeros(3, 3, 4, 4), torch.ones(3, 3, 4, 4)
    grid = np.asarray(Image.open(save_reconstruction_grid(originals, recs, tmp_path / "rec.png", padding=0)))
    assert grid.shape == (8, 12, 3)
    assert (grid[:4] == 0).all() and (grid[4:] == 255).all()
