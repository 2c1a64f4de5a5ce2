"""The io layer: atomic writes and staging folders, file stems, pixel-size lookup and units, slides and blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_ext.io import atomic
from nnunet_ext.io.bids import ads_masks_from_labels, is_bids_dataset, labels_from_axonmyelin
from nnunet_ext.io.images import is_zarr, read_grey_image, strip_extension, write_png
from nnunet_ext.io.pixel_size import PixelSizeNotFoundError, find_pixel_size, length_unit_in_um, pixel_size_from_sidecar
from nnunet_ext.io.slides import Block, LabelSlide, block_grid, open_label_slide, open_slide_array


# ------------------------------------------------------------------------------------------------------ atomic
def test_staging_folder_swaps_in_whole_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "out"
    with atomic.staging_folder(out) as staging:
        (staging / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic.staging_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic.staging_folder(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("second")
            raise RuntimeError("killed half way")
    assert (out / "a.txt").read_text() == "first"  # the failed run changed nothing
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and left no hidden folder behind


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out{atomic.STAGING_MARK}{dead}-abc"
    alive = tmp_path / f".out{atomic.STAGING_MARK}{os.getpid()}-xyz"
    unrelated = tmp_path / f".other{atomic.STAGING_MARK}{dead}-abc"
    for folder in (stale, alive, unrelated):
        folder.mkdir()
    assert atomic.remove_stale_staging(out) == [stale]
    assert not stale.exists() and alive.exists() and unrelated.exists()


def test_atomic_files_never_appear_half_written(tmp_path):
    import pandas as pd

    target = tmp_path / "table.csv"
    atomic.write_csv_atomically(pd.DataFrame({"a": [1, 2]}), target)
    assert target.read_text() == "a\n1\n2\n"
    with pytest.raises(FileExistsError):
        atomic.write_csv_atomically(pd.DataFrame({"a": [3]}), target)
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_output_path(tmp_path / "x.json") as temporary:
            temporary.write_text("{")
            1 / 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    atomic.write_json_atomically({"k": 1}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"k": 1}


def test_scratch_folder_publishes_files_into_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with atomic.scratch_folder(out) as scratch:
        (scratch / "new.csv").write_text("x")
        written = atomic.publish_files(scratch, out)
    assert written == [out / "new.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "new.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("name,stem", [("a.png", "a"), ("a.ome.tif", "a"), ("sub-1_SEM.ome.zarr", "sub-1_SEM"),
                                       ("case_0000.nii.gz", "case_0000"), ("b.JPEG", "b"), ("c.json", "c"),
                                       ("d.npy", "d"), ("no_ending", "no_ending"), ("e.tiff", "e")])
def test_strip_extension(name, stem):
    assert strip_extension(name) == stem


def test_png_round_trip_and_zarr_detection(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(6, 10)
    write_png(tmp_path / "a.png", array)
    assert np.array_equal(read_grey_image(tmp_path / "a.png"), array)
    write_png(tmp_path / "mask.png", array > 30)
    assert set(np.unique(read_grey_image(tmp_path / "mask.png")).tolist()) == {0, 255}
    (tmp_path / "store.zarr").mkdir()
    (tmp_path / "plain").mkdir()
    assert is_zarr(tmp_path / "store.zarr") and not is_zarr(tmp_path / "plain") and not is_zarr(tmp_path / "a.png")


def test_ads_mask_values_round_trip():
    axon = np.array([[1, 0, 0]], bool)
    myelin = np.array([[0, 1, 0]], bool)
    masks = ads_masks_from_labels(axon, myelin)
    assert masks["_seg-axonmyelin"].tolist() == [[255, 127, 0]]
    assert masks["_seg-axon"].tolist() == [[255, 0, 0]] and masks["_seg-myelin"].tolist() == [[0, 255, 0]]
    assert labels_from_axonmyelin(masks["_seg-axonmyelin"]).tolist() == [[2, 1, 0]]


def test_bids_detection(tmp_path):
    assert not is_bids_dataset(tmp_path)
    (tmp_path / "dataset_description.json").write_text("{}")
    assert not is_bids_dataset(tmp_path)
    (tmp_path / "sub-01").mkdir()
    assert is_bids_dataset(tmp_path)


# -------------------------------------------------------------------------------------------------- pixel size
def test_one_unit_table_for_bids_and_ome():
    assert length_unit_in_um("nm") == 1e-3 and length_unit_in_um("micrometer") == 1.0
    assert length_unit_in_um("Millimeter") == 1e3 and length_unit_in_um("furlong") is None


def test_pixel_size_lookup_order(tmp_path):
    image = tmp_path / "img.png"
    write_png(image, np.zeros((4, 4), np.uint8))
    with pytest.raises(PixelSizeNotFoundError, match="img.png"):
        find_pixel_size(image)
    (tmp_path / "pixel_size_in_micrometer.txt").write_text("0.5\n")
    assert find_pixel_size(image)[0] == 0.5
    (tmp_path / "img.json").write_text(json.dumps({"PixelSize": [20, 20], "PixelSizeUnits": "nm"}))
    size, source = find_pixel_size(image)
    assert size == pytest.approx(0.02) and source.endswith("img.json")  # the sidecar wins over the text file
    assert find_pixel_size(image, 0.1) == (0.1, "option")  # and the option over both


def test_sidecar_errors_name_the_file(tmp_path):
    sidecar = tmp_path / "a.json"
    sidecar.write_text(json.dumps({"PixelSize": [0.1, 0.2]}))
    with pytest.raises(ValueError, match="a.json.*anisotropic"):
        pixel_size_from_sidecar(sidecar)
    sidecar.write_text(json.dumps({"PixelSize": 1, "PixelSizeUnits": "inch"}))
    with pytest.raises(ValueError, match="a.json.*PixelSizeUnits 'inch'"):  # BIDS allows um, nm, mm only
        pixel_size_from_sidecar(sidecar)
    sidecar.write_text(json.dumps({"spacing": [1.0, 0.25, 0.25]}))
    assert pixel_size_from_sidecar(sidecar) == 0.25  # nnU-Net's spacing, taken as um


# ------------------------------------------------------------------------------------------------------ slides
def test_blocks_tile_the_slide():
    grid = block_grid((10, 7), 4)
    assert grid[0] == Block(0, 4, 0, 4) and grid[-1] == Block(8, 10, 4, 7)
    covered = np.zeros((10, 7), int)
    for block in grid:
        covered[block.y0:block.y1, block.x0:block.x1] += 1
    assert (covered == 1).all()
    assert Block(2, 4, 2, 4).grown(3, (10, 7)) == Block(0, 7, 0, 7)
    assert Block(0, 4, 4, 7).shape == (4, 3)


def test_one_opener_for_label_and_image_slides(tmp_path):
    import tifffile
    import zarr

    labels = np.random.default_rng(0).integers(0, 3, (1, 1, 40, 30), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w")
    group.create_array("0", data=labels, chunks=(1, 1, 16, 16))
    group.attrs["multiscales"] = [{"axes": [{"name": a} for a in "tcyx"], "datasets": [{"path": "0"}]}]
    slide = open_label_slide(tmp_path / "labels.zarr")
    assert isinstance(slide, LabelSlide) and slide.shape == (40, 30)
    assert np.array_equal(slide[5:20, 3:9], labels[0, 0, 5:20, 3:9])
    tifffile.imwrite(tmp_path / "labels.tif", labels[0, 0], tile=(16, 16))
    array, axes = open_slide_array(tmp_path / "labels.tif")
    assert axes == "yx" and np.array_equal(np.asarray(array), labels[0, 0])
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        open_label_slide(tmp_path / "missing.zarr")


def test_outputs_get_the_permissions_of_ordinary_files(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 entries; what the user receives is as readable as any file they write."""
    old = os.umask(0o022)
    try:
        atomic.write_text_atomically(tmp_path / "a.txt", "x")
        with atomic.staging_folder(tmp_path / "out") as staging:
            (staging / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
