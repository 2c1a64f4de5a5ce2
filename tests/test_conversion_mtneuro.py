"""MTNeuro -> nnU-Net raw from synthetic ZYX cutouts, from files in MTNeuro's own formats, and the BossDB path
through a stand-in ``intern`` module with BossDB's half-open cutouts (no test touches the network)."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import tifffile
from PIL import Image

from nnunet_ext.dataset_conversion.mtneuro import MTNEURO_IMAGE_URI, MTNEURO_LABEL_URI, MTNEURO_REGIONS, \
    MTNEURO_Z_SPLITS, convert_mtneuro
from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest
from test_conversion_writer import verify_in_process

SMALL_REGIONS = {"cortex": ((0, 24), (0, 20)), "striatum": ((0, 24), (40, 60)), "vp": ((30, 54), (0, 20)),
                 "zi": ((30, 54), (40, 60))}
Z_SPLITS = {"train": (10, 34), "validation": (34, 42), "test": (44, 61)}  # half-open, as the benchmark's
Z_START = 10


def _volume(region_index: int, shape):
    rng = np.random.default_rng(region_index)
    labels = rng.integers(0, 4, shape).astype(np.uint64)  # BossDB serves uint64 labels
    image = (labels * 50 + rng.integers(0, 40, shape)).astype(np.uint8)
    return image, labels


@pytest.fixture
def cutouts(tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    volumes = {}
    for index, region in enumerate(SMALL_REGIONS):
        image, labels = _volume(index, (61 - Z_START, 24, 20))
        volumes[region] = (image, labels)
        if index % 2:  # both file types the converter accepts
            np.save(folder / f"{region}_image.npy", image)
            np.save(folder / f"{region}_labels.npy", labels)
        else:
            tifffile.imwrite(folder / f"{region}_image.tif", image)
            tifffile.imwrite(folder / f"{region}_labels.tif", labels.astype(np.uint8))
    return folder, volumes


def test_2d_four_classes_leave_zi_out_and_fix_the_validation_fold(cutouts, tmp_path, monkeypatch):
    folder_in, volumes = cutouts
    folder = convert_mtneuro(tmp_path / "raw", 21, "MTNeuro4", n_classes=4, dimensions=2, cutout_dir=folder_in,
                             regions=SMALL_REGIONS, z_splits=Z_SPLITS, download=False, progress=False)
    manifest = read_manifest(folder)
    assert sorted(manifest["region"].unique()) == ["cortex", "striatum", "vp"]
    counts = manifest.groupby("split").size().to_dict()
    assert counts == {"train": 3 * 24, "validation": 3 * 8, "test": 3 * 17}
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "blood_vessel": 1,
                                                                           "cell": 2, "axon": 3}
    row = manifest[(manifest["region"] == "striatum") & (manifest["z_first"] == 35)].iloc[0]
    assert row.split == "validation" and row.pixel_size_um == pytest.approx(1.17)
    image, labels = volumes["striatum"]
    np.testing.assert_array_equal(np.array(Image.open(folder / "imagesTr" / f"{row.case_id}_0000.png")),
                                  image[35 - Z_START])
    np.testing.assert_array_equal(np.array(Image.open(folder / "labelsTr" / f"{row.case_id}.png")),
                                  labels[35 - Z_START])
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 1
    assert set(splits[0]["val"]) == set(manifest.loc[manifest["split"] == "validation", "case_id"])
    verify_in_process(folder, monkeypatch)


def test_3d_three_classes_merge_axons_into_background(cutouts, tmp_path, monkeypatch):
    import SimpleITK as sitk

    folder_in, volumes = cutouts
    folder = convert_mtneuro(tmp_path / "raw", 22, "MTNeuro3", n_classes=3, dimensions=3, cutout_dir=folder_in,
                             regions=SMALL_REGIONS, z_splits=Z_SPLITS, download=False, progress=False)
    manifest = read_manifest(folder)
    assert sorted(manifest["region"].unique()) == ["cortex", "striatum", "vp", "zi"]
    # 8-slice sub-volumes without overlap; the remainder of the 17 test slices (one slice) is left out
    assert manifest.groupby("split").size().to_dict() == {"train": 4 * 3, "validation": 4 * 1, "test": 4 * 2}
    assert sorted(manifest.loc[(manifest["region"] == "zi") & (manifest["split"] == "test"), "z_first"]) == [44, 52]
    row = manifest[(manifest["region"] == "zi") & (manifest["z_first"] == 18)].iloc[0]
    label = sitk.ReadImage(str(folder / "labelsTr" / f"{row.case_id}.nii.gz"))
    np.testing.assert_allclose(label.GetSpacing(), (1.17, 1.17, 1.17))
    expected = volumes["zi"][1][18 - Z_START: 26 - Z_START]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), np.where(expected == 3, 0, expected))
    verify_in_process(folder, monkeypatch)


class _FakeBossArray:
    """What ``intern.array(uri)`` returns, serving deterministic data for any cutout; records every request.

    As BossDB: ``[z0:z1, y0:y1, x0:x1]`` is half-open ([inclusive, exclusive), MTNeuro's access notebook), within the
    channel's extent z [0, 720), y [0, 1420), x [0, 5805); anything else is refused."""

    requests: list = []
    extent = (720, 1420, 5805)

    def __init__(self, uri):
        self.uri = uri

    def __getitem__(self, index):
        assert isinstance(index, tuple) and len(index) == 3 and all(isinstance(s, slice) for s in index), index
        for s, size in zip(index, self.extent):
            assert s.step is None and 0 <= s.start < s.stop <= size, f"bad BossDB cutout {index}"
        type(self).requests.append((self.uri, tuple((s.start, s.stop) for s in index)))
        z, y, x = np.meshgrid(*[np.arange(s.start, s.stop) for s in index], indexing="ij")
        if self.uri == MTNEURO_LABEL_URI:
            return ((z + y // 16 + x // 16) % 4).astype(np.uint64)
        return ((z * 7 + y * 3 + x) % 251).astype(np.uint8)


def test_downloads_benchmark_cutouts_with_intern_once_then_reads_the_cache(tmp_path, monkeypatch):
    fake = types.ModuleType("intern")
    fake.array = _FakeBossArray
    monkeypatch.setitem(sys.modules, "intern", fake)
    _FakeBossArray.requests = []
    z_splits = {"train": (110, 114), "validation": (114, 116), "test": (120, 122)}  # half-open
    cache = tmp_path / "cache"
    folder = convert_mtneuro(tmp_path / "raw", 23, "Boss", cutout_dir=cache, z_splits=z_splits, progress=False)
    assert sorted(_FakeBossArray.requests) == sorted(
        (uri, ((110, 122), MTNEURO_REGIONS[region][0], MTNEURO_REGIONS[region][1]))
        for region in ("cortex", "striatum", "vp") for uri in (MTNEURO_IMAGE_URI, MTNEURO_LABEL_URI))
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{r}_{k}.npy" for r in ("cortex", "striatum", "vp")
                                                             for k in ("image", "labels"))
    assert np.load(cache / "cortex_labels.npy").dtype == np.uint8
    manifest = read_manifest(folder)
    row = manifest[(manifest["region"] == "vp") & (manifest["z_first"] == 114)].iloc[0]
    tile = np.array(Image.open(folder / "imagesTr" / f"{row.case_id}_0000.png"))
    (y0, y1), (x0, x1) = MTNEURO_REGIONS["vp"]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    np.testing.assert_array_equal(tile, (114 * 7 + yy * 3 + xx) % 251)
    _FakeBossArray.requests = []
    convert_mtneuro(tmp_path / "raw", 23, "Boss", cutout_dir=cache, z_splits=z_splits, overwrite=True,
                    download=False, progress=False)
    assert _FakeBossArray.requests == []  # served from the cache


def test_missing_cutouts_explain_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "intern", None)  # as if intern were not installed
    with pytest.raises(FileNotFoundError, match="cortex_image.npy: cutout not found.*pip install intern"):
        convert_mtneuro(tmp_path / "raw", 24, "Missing", cutout_dir=tmp_path / "empty", progress=False)
    with pytest.raises(FileNotFoundError, match="download is off"):
        convert_mtneuro(tmp_path / "raw", 24, "Missing", cutout_dir=tmp_path / "empty", download=False,
                        progress=False)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("breakage, match", [
    ("value", "vp_labels.npy: label values \\[7\\]"),
    ("shape", "cortex_image.tif: expected a ZYX cutout of y/x size \\(24, 20\\)"),
    ("short", "striatum_image.npy: has 40 slices from z=10, needs up to z=60"),
])
def test_bad_cutouts_are_named_and_nothing_is_written(cutouts, tmp_path, breakage, match):
    folder_in, volumes = cutouts
    if breakage == "value":
        labels = volumes["vp"][1].copy()
        labels[3, 4, 5] = 7
        (folder_in / "vp_labels.tif").unlink(missing_ok=True)
        np.save(folder_in / "vp_labels.npy", labels)
    elif breakage == "shape":
        tifffile.imwrite(folder_in / "cortex_image.tif", volumes["cortex"][0][:, :20])
    else:
        np.save(folder_in / "striatum_image.npy", volumes["striatum"][0][:40])
    with pytest.raises(ValueError, match=match):
        convert_mtneuro(tmp_path / "raw", 25, "Broken", cutout_dir=folder_in, regions=SMALL_REGIONS,
                        z_splits=Z_SPLITS, download=False, progress=False)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def _install_fake_intern(monkeypatch):
    fake = types.ModuleType("intern")
    fake.array = _FakeBossArray
    monkeypatch.setitem(sys.modules, "intern", fake)
    _FakeBossArray.requests = []


def test_benchmark_z_ranges_are_half_open_50_test_slices_per_region(tmp_path, monkeypatch):
    """The benchmark's own ranges [110, 379), [380, 409), [420, 470): 269/29/50 slices per region, one BossDB
    cutout [110:470) per region and channel (the inclusive reading gave 270/30/51 and asked for [110:471))."""
    _install_fake_intern(monkeypatch)
    boxes = {region: ((y0, y0 + 4), (x0, x0 + 4)) for region, ((y0, _), (x0, _)) in MTNEURO_REGIONS.items()}
    folder = convert_mtneuro(tmp_path / "raw", 26, "Bench", cutout_dir=tmp_path / "cache", regions=boxes,
                             progress=False)
    manifest = read_manifest(folder)
    per_region = manifest.groupby(["region", "split"]).size().unstack()
    assert per_region.to_dict("index") == {r: {"train": 269, "validation": 29, "test": 50}
                                           for r in ("cortex", "striatum", "vp")}
    for split, (start, stop) in MTNEURO_Z_SPLITS.items():
        z = sorted(manifest.loc[(manifest["region"] == "vp") & (manifest["split"] == split), "z_first"])
        assert z == list(range(start, stop))
    assert {request[1][0] for request in _FakeBossArray.requests} == {(110, 470)}
    assert len(_FakeBossArray.requests) == 6
    # a test slice holds exactly what BossDB serves for z = 469, the last slice of [420, 470)
    row = manifest[(manifest["region"] == "vp") & (manifest["z_first"] == 469)].iloc[0]
    (y0, y1), (x0, x1) = boxes["vp"]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    np.testing.assert_array_equal(np.array(Image.open(folder / "imagesTs" / f"{row.case_id}_0000.png")),
                                  (469 * 7 + yy * 3 + xx) % 251)
    assert not (manifest["z_first"] == 379).any() and not (manifest["z_first"] == 470).any()


def _mtneuro_task_config(name, volume_z, combine_ax_and_bg, no_zi, boxes, z_ranges):
    """A task configuration as MTNeuro's taskconfig/task2_*.json, with other (small) boxes and ranges."""
    config = {"name": name, "image_chan": MTNEURO_IMAGE_URI, "annotation_chan": MTNEURO_LABEL_URI}
    for region, key in (("cortex", "cor"), ("striatum", "stri"), ("vp", "vp"), ("zi", "zi")):
        (y0, y1), (x0, x1) = boxes[region]
        config[f"xrange_{key}"], config[f"yrange_{key}"] = [x0, x1], [y0, y1]
    config.update({"z_train": list(z_ranges["train"]), "z_val": list(z_ranges["validation"]),
                   "z_test": list(z_ranges["test"]), "volume_z": volume_z, "tile_size": [24, 20],
                   "task_type": "noZI" if no_zi else "3class", "combine_ax_and_bg": combine_ax_and_bg,
                   "noZI": no_zi})
    return config


def _save_as_mtneuro_dataloader(folder, name, volumes, z_ranges):
    """What MTNeuro's BossDBDataset(download=True) saves: per split, the four regions' cutouts
    [z0:z1, y, x] concatenated along z (cortex, striatum, vp, zi), as <name><mode>images.npy / labels.npy."""
    for split, mode in (("train", "train"), ("validation", "val"), ("test", "test")):
        z0, z1 = z_ranges[split]
        images = np.concatenate([volumes[r][0][z0 - Z_START: z1 - Z_START] for r in ("cortex", "striatum", "vp", "zi")])
        labels = np.concatenate([volumes[r][1][z0 - Z_START: z1 - Z_START] for r in ("cortex", "striatum", "vp", "zi")])
        np.save(folder / f"{name}{mode}images.npy", images)
        np.save(folder / f"{name}{mode}labels.npy", labels)


@pytest.mark.parametrize("name, volume_z, combine, no_zi", [("task2_2D_4class", 1, 0, 1),
                                                             ("task2_3D_3class", 8, 1, 0)])
def test_mtneuro_own_files_and_task_config_convert_from_the_cli(tmp_path, name, volume_z, combine, no_zi):
    from nnunet_ext.cli import main
    import SimpleITK as sitk

    volumes = {region: _volume(index, (61 - Z_START, 24, 20)) for index, region in enumerate(SMALL_REGIONS)}
    files = tmp_path / "mtneuro"
    files.mkdir()
    _save_as_mtneuro_dataloader(files, name, volumes, Z_SPLITS)
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(_mtneuro_task_config(name, volume_z, combine, no_zi, SMALL_REGIONS, Z_SPLITS)))
    assert main(["convert", "mtneuro", "--config", str(config), "--cutouts", str(files), "--no-download",
                 "--raw", str(tmp_path / "raw"), "-d", "27", "-n", "Own"]) == 0
    folder = tmp_path / "raw" / "Dataset027_Own"
    manifest = read_manifest(folder)
    regions = ["cortex", "striatum", "vp"] + ([] if no_zi else ["zi"])
    assert sorted(manifest["region"].unique()) == sorted(regions)
    depth = 1 if volume_z == 1 else 8
    expected = {s: len(regions) * ((stop - start) // depth) for s, (start, stop) in Z_SPLITS.items()}
    assert manifest.groupby("split").size().to_dict() == expected
    lookup = np.array([0, 1, 2, 3] if not combine else [0, 1, 2, 0])
    for region in regions:  # every region's cases hold that region's slices, not a neighbour's in the stack
        image, labels = volumes[region]
        if depth == 1:
            row = manifest[(manifest["region"] == region) & (manifest["z_first"] == 36)].iloc[0]  # validation
            case_image = np.array(Image.open(folder / "imagesTr" / f"{row.case_id}_0000.png"))
            case_label = np.array(Image.open(folder / "labelsTr" / f"{row.case_id}.png"))
            np.testing.assert_array_equal(case_image, image[36 - Z_START])
            np.testing.assert_array_equal(case_label, lookup[labels[36 - Z_START]])
        else:
            row = manifest[(manifest["region"] == region) & (manifest["z_first"] == 52)].iloc[0]  # test
            path = folder / "labelsTs" / f"{row.case_id}.nii.gz"
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))),
                                          lookup[labels[52 - Z_START: 60 - Z_START]])
    assert json.loads((folder / "dataset.json").read_text())["mtneuro_setting"] == \
        f"{4 if not combine else 3}-class {2 if depth == 1 else 3}D"


def test_mtneuro_files_whose_ranges_do_not_match_are_refused(tmp_path):
    volumes = {region: _volume(index, (61 - Z_START, 24, 20)) for index, region in enumerate(SMALL_REGIONS)}
    _save_as_mtneuro_dataloader(tmp_path, "task2_2D_4class", volumes, Z_SPLITS)
    wrong = dict(Z_SPLITS, test=(44, 60))
    with pytest.raises(ValueError, match=r"task2_2D_4classtestimages.npy: expected the 4 regions .* \[44, 60\)"):
        convert_mtneuro(tmp_path / "raw", 28, "Wrong", cutout_dir=tmp_path, regions=SMALL_REGIONS, z_splits=wrong,
                        download=False, progress=False)
    (tmp_path / "task2_2D_4classvallabels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="task2_2D_4classvallabels.npy: not found"):
        convert_mtneuro(tmp_path / "raw", 28, "Wrong", cutout_dir=tmp_path, regions=SMALL_REGIONS,
                        z_splits=Z_SPLITS, download=False, progress=False)
