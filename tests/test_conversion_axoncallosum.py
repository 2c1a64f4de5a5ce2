"""AxonCallosumEM tiling on synthetic large-image stand-ins (image.tif + imagelabel.tif with class ids 0/1/2)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from nnunet_ext.dataset_conversion import axoncallosum
from nnunet_ext.dataset_conversion.axoncallosum import convert_axoncallosum, tile_bounds
from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest
from test_conversion_writer import verify_in_process

SHAPE = (640, 900)
REGIONS = {"genu": {"y": [0, 300], "x": [0, 900]},
           "body": {"y": [300, 500], "x": [100, 700]},
           "splenium": {"y": [500, 640], "x": [0, 450]}}


def _callosum(shape=SHAPE, seed=0, empty_band=None):
    """EM-like image and its class-id map: axons (id 2) inside myelin rings (id 1) on background (0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.uint8)
    for _ in range(400):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(4, 10)
        box = (slice(max(cy - r - 4, 0), cy + r + 4), slice(max(cx - r - 4, 0), cx + r + 4))
        distance = np.hypot(yy[box] - cy, xx[box] - cx)
        label[box][distance < r + 3] = 1
        label[box][distance < r] = 2
    if empty_band is not None:
        label[empty_band] = 0
    image = (np.choose(label, [120, 40, 200]) + rng.integers(0, 20, shape)).astype(np.uint8)
    return image, label


@pytest.fixture
def callosum(tmp_path):
    image, label = _callosum(empty_band=(slice(0, 128), slice(0, 256)))
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(128, 128), compression="zlib")  # read through zarr
    tifffile.imwrite(tmp_path / "imagelabel.tif", label)  # plain strips: memory-mapped
    (tmp_path / "regions.json").write_text(json.dumps({"regions": REGIONS}))
    return tmp_path, image, label


def test_tile_bounds_cover_without_overlap_or_slivers():
    assert tile_bounds(0, 1024, 512) == [(0, 512), (512, 1024)]
    assert tile_bounds(0, 1200, 512) == [(0, 512), (512, 1200)]  # 176 px remainder merged
    assert tile_bounds(100, 1400, 512) == [(100, 612), (612, 1124), (1124, 1400)]  # 276 >= 256 kept
    assert tile_bounds(0, 200, 512) == [(0, 200)]
    for start, stop, tile in ((0, 5000, 1024), (7, 999, 100), (0, 1, 16)):
        bounds = tile_bounds(start, stop, tile)
        assert bounds[0][0] == start and bounds[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(tile / 2 <= b - a < 1.5 * tile for a, b in bounds) or len(bounds) == 1


def test_tiles_reassemble_the_regions_with_fixed_validation_fold(callosum, monkeypatch):
    folder_in, image, label = callosum
    windows = []
    read = axoncallosum.LazyTiff.read
    monkeypatch.setattr(axoncallosum.LazyTiff, "read",
                        lambda self, y0, y1, x0, x1: windows.append((y1 - y0) * (x1 - x0)) or read(self, y0, y1,
                                                                                                     x0, x1))
    raw, preprocessed = folder_in / "raw", folder_in / "pre"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default mapping is the right one here: no inverted-mapping warning
        folder = convert_axoncallosum(raw, 11, "Callosum", image_file=folder_in / "image.tif",
                                      label_file=folder_in / "imagelabel.tif", regions_json=folder_in / "regions.json",
                                      tile_size=128, preprocessed_root=preprocessed, progress=False)
    assert max(windows) <= (1.5 * 128) ** 2  # never more than one tile read at a time
    manifest = read_manifest(folder)
    assert manifest.groupby("region")["split"].first().to_dict() == {"genu": "train", "body": "validation",
                                                                     "splenium": "test"}
    expected_label = np.array([0, 1, 2])[label]  # default: id 1 myelin, id 2 axon, as our labels
    for region, box in REGIONS.items():
        rows = manifest[manifest["region"] == region]
        canvas = np.full(SHAPE, -1, np.int16)
        label_canvas = np.full(SHAPE, -1, np.int16)
        for row in rows.itertuples():
            images, labels = ("imagesTs", "labelsTs") if row.split == "test" else ("imagesTr", "labelsTr")
            tile = np.array(Image.open(folder / images / f"{row.case_id}_0000.png"))
            assert tile.shape == (row.y1 - row.y0, row.x1 - row.x0)
            assert (canvas[row.y0:row.y1, row.x0:row.x1] == -1).all()  # no overlap
            canvas[row.y0:row.y1, row.x0:row.x1] = tile
            label_canvas[row.y0:row.y1, row.x0:row.x1] = np.array(Image.open(folder / labels / f"{row.case_id}.png"))
        (y0, y1), (x0, x1) = box["y"], box["x"]
        np.testing.assert_array_equal(canvas[y0:y1, x0:x1], image[y0:y1, x0:x1])
        np.testing.assert_array_equal(label_canvas[y0:y1, x0:x1], expected_label[y0:y1, x0:x1])
        assert (canvas == -1).sum() == SHAPE[0] * SHAPE[1] - (y1 - y0) * (x1 - x0)
    splits = json.loads((folder / "splits_final.json").read_text())
    body = sorted(manifest.loc[manifest["region"] == "body", "case_id"])
    genu = sorted(manifest.loc[manifest["region"] == "genu", "case_id"])
    assert splits == [{"train": genu, "val": body}]
    assert json.loads((preprocessed / "Dataset011_Callosum" / "splits_final.json").read_text()) == splits
    assert manifest["pixel_size_um"].eq(0.004).all()
    verify_in_process(folder, monkeypatch)


def test_class_mapping_option_warns_when_inverted_and_empty_tiles_are_skipped(callosum):
    folder_in, image, label = callosum
    kwargs = dict(image_file=folder_in / "image.tif", label_file=folder_in / "imagelabel.tif",
                  regions_json=folder_in / "regions.json", tile_size=128, progress=False)
    with pytest.warns(UserWarning, match="--axon-class-id 2"):
        folder = convert_axoncallosum(folder_in / "raw", 12, "Swapped", axon_class_id=1, **kwargs)
    first = read_manifest(folder).iloc[0]
    tile_label = np.array(Image.open(folder / "labelsTr" / f"{first.case_id}.png"))
    source = label[first.y0:first.y1, first.x0:first.x1]
    np.testing.assert_array_equal(tile_label, np.array([0, 2, 1])[source])

    full = read_manifest(convert_axoncallosum(folder_in / "raw", 13, "All", **kwargs))
    skipped = read_manifest(convert_axoncallosum(folder_in / "raw", 14, "NoEmpty", skip_empty_tiles=True, **kwargs))
    assert len(full) - len(skipped) == 2  # the two tiles of the empty band at the top left
    assert (0, 0) in set(zip(full["y0"], full["x0"])) and (0, 0) not in set(zip(skipped["y0"], skipped["x0"]))


def test_pixel_size_option_downsamples_with_majority_labels(callosum):
    folder_in, image, label = callosum
    folder = convert_axoncallosum(folder_in / "raw", 15, "Eight", region_files={
        "genu": (folder_in / "image.tif", folder_in / "imagelabel.tif")}, tile_size=128, pixel_size_nm=8,
        progress=False)
    manifest = read_manifest(folder)
    assert manifest["pixel_size_um"].eq(0.008).all() and set(manifest["split"]) == {"train"}
    row = manifest.iloc[0]
    assert (row.y1 - row.y0, row.x1 - row.x0) == (256, 256)
    tile = np.array(Image.open(folder / "imagesTr" / f"{row.case_id}_0000.png"))
    tile_label = np.array(Image.open(folder / "labelsTr" / f"{row.case_id}.png"))
    assert tile.shape == tile_label.shape == (128, 128)
    block = image[:256, :256].reshape(128, 2, 128, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(tile, np.round(block).astype(np.uint8))
    source = np.array([0, 1, 2])[label[:256, :256]].reshape(128, 2, 128, 2).transpose(0, 2, 1, 3).reshape(128, 128, 4)
    counts = np.stack([(source == c).sum(-1) for c in range(3)])
    assert np.all(counts[tile_label, np.arange(128)[:, None], np.arange(128)] == counts.max(0))  # a majority class
    assert not (folder / "splits_final.json").exists()  # no validation region, no fixed fold


@pytest.mark.parametrize("breakage, match", [
    ("class_3", "imagelabel.tif: class ids \\[3\\]"),
    ("outside", "region 'splenium' .* exceeds"),
    ("overlap", "regions 'genu' and 'body' overlap"),
    ("no_split", "region 'isthmus': no split"),
    ("shape", "image.tif is \\(640, 900\\) but .*imagelabel.tif is \\(600, 900\\)"),
    ("bad_size", "integer multiple"),
])
def test_bad_input_is_named_and_nothing_is_written(callosum, breakage, match):
    folder_in, image, label = callosum
    regions = json.loads(json.dumps(REGIONS))
    kwargs = {}
    if breakage == "class_3":
        label = label.copy()
        label[600, 10] = 3
        tifffile.imwrite(folder_in / "imagelabel.tif", label)
    elif breakage == "outside":
        regions["splenium"]["x"] = [0, 1000]
    elif breakage == "overlap":
        regions["body"]["y"] = [250, 500]
    elif breakage == "no_split":
        regions["isthmus"] = {"y": [0, 10], "x": [0, 10]}
        regions["genu"]["y"] = [10, 300]
    elif breakage == "shape":
        tifffile.imwrite(folder_in / "imagelabel.tif", label[:600])
    else:
        kwargs["pixel_size_nm"] = 6
    (folder_in / "regions.json").write_text(json.dumps({"regions": regions}))
    with pytest.raises(ValueError, match=match):
        convert_axoncallosum(folder_in / "raw", 16, "Broken", image_file=folder_in / "image.tif",
                             label_file=folder_in / "imagelabel.tif", regions_json=folder_in / "regions.json",
                             tile_size=128, progress=False, **kwargs)
    assert not (folder_in / "raw").exists() or list((folder_in / "raw").iterdir()) == []


def test_cli_with_region_files_and_split_override(callosum, capsys):
    from nnunet_ext.cli import main

    folder_in, image, label = callosum
    for name, rows in (("a", slice(0, 320)), ("b", slice(320, 640))):
        tifffile.imwrite(folder_in / f"{name}.tif", image[rows])
        tifffile.imwrite(folder_in / f"{name}_label.tif", label[rows])
    arguments = ["convert", "axoncallosum", "--raw", str(folder_in / "raw"), "-d", "17", "-n", "Parts",
                 "--region", "left", str(folder_in / "a.tif"), str(folder_in / "a_label.tif"),
                 "--region", "right", str(folder_in / "b.tif"), str(folder_in / "b_label.tif"),
                 "--tile-size", "160"]
    assert main(arguments) == 1
    assert "region 'left': no split" in capsys.readouterr().err
    assert main(arguments + ["--split", "left=train", "--split", "right=val"]) == 0
    manifest = read_manifest(folder_in / "raw" / "Dataset017_Parts")
    assert manifest.groupby("region")["split"].first().to_dict() == {"left": "train", "right": "validation"}
    assert len(manifest) == 2 * (2 * 6)  # 320 x 900 in 160-px tiles: 2 rows, 6 columns (the last 100 >= 80 wide)


@pytest.mark.parametrize("options, access", [({}, "memmap"), ({"byteorder": ">"}, "memmap"),
                                             ({"tile": (64, 64), "compression": "zlib"}, "zarr"),
                                             ({"compression": "zlib", "rowsperstrip": 32}, "zarr")])
def test_lazy_tiff_reads_windows_of_every_layout(tmp_path, options, access):
    data = np.random.default_rng(0).integers(0, 60000, (300, 500)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", data, **options)
    lazy = axoncallosum.LazyTiff(tmp_path / "big.tif")
    lazy.RELEASE_BYTES = 1  # release mapped pages after every window: reading must still be right
    try:
        assert lazy.access == access and lazy.shape == (300, 500)
        for y0, y1, x0, x1 in ((0, 64, 0, 64), (100, 300, 450, 500), (17, 18, 3, 499)):
            window = lazy.read(y0, y1, x0, x1)
            assert window.dtype == np.uint16 and window.dtype.isnative
            np.testing.assert_array_equal(window, data[y0:y1, x0:x1])
    finally:
        lazy.close()


def test_label_downsampling_ties_go_to_the_higher_label():
    """2 x 2 blocks with two pixels each of two classes: the higher label wins (axon over myelin, myelin over
    background), as the docstring and docs/conversion.md say (the old comment promised thin myelin would survive
    a myelin/axon tie, which it never did)."""
    background, myelin, axon = 0, 1, 2
    blocks = [[[myelin, myelin], [axon, axon]],  # myelin / axon tie
              [[background, myelin], [background, myelin]],  # background / myelin tie
              [[axon, background], [background, axon]],  # axon / background tie
              [[myelin, myelin], [myelin, axon]]]  # a plain majority
    window = np.concatenate([np.array(b, np.uint8) for b in blocks], axis=1)
    result = axoncallosum._downsample_label(window, 2, 3)
    np.testing.assert_array_equal(result, [[axon, myelin, axon, myelin]])
    # a three-way tie (3 x 3 block, three pixels of each class) goes to the axon too
    three = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2]], np.uint8)
    assert axoncallosum._downsample_label(three, 3, 3).tolist() == [[axon]]
