"""BIDS microscopy -> nnU-Net raw: the real AxonDeepSeg SEM dataset, and small synthetic datasets for each
convention."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy, read_axon_myelin_label
from nnunet_ext.io.bids import find_bids_images
from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest
from test_conversion_writer import verify_in_process

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADS_SEM = DATA / "ads_sem"


def _need_ads_sem():
    if not ADS_SEM.is_dir():
        pytest.skip(f"{ADS_SEM} not available")


@pytest.fixture(scope="module")
def ads_sem_dataset(tmp_path_factory):
    """All of ads_sem converted once, rat3 (3 images, subject-level sidecar) held out for testing."""
    _need_ads_sem()
    raw = tmp_path_factory.mktemp("raw")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = convert_bids_microscopy(ADS_SEM, raw, 1, "ADSSEM", test_subjects=["sub-rat3"], progress=False)
    return folder, [str(w.message) for w in caught]


def test_ads_sem_converts_with_sidecars_splits_and_labels(ads_sem_dataset, monkeypatch):
    folder, messages = ads_sem_dataset
    manifest = read_manifest(folder)
    assert len(manifest) == 10
    assert sorted(manifest.loc[manifest["split"] == "test", "subject"]) == ["sub-rat3"] * 3
    assert (manifest["split"] == "train").sum() == 7
    sizes = dict(zip(manifest["sample"], manifest["pixel_size_um"]))
    assert sizes["data1"] == pytest.approx(0.18)  # image-level sidecar
    assert sizes["data9"] == sizes["data10"] == sizes["data11"] == pytest.approx(0.1)  # subject-level sidecar
    assert sizes["Maxo03img60"] == pytest.approx(0.07)
    # only the mask actually read is recorded: the axonmyelin one
    assert all(f.endswith("_seg-axonmyelin-manual.png") for f in manifest["source_files"].str.split(";").str[1])
    assert manifest["source_files"].str.split(";").str.len().eq(2).all()
    # sub-rat6's grey+alpha PNG became one grey channel of the same size
    rat6 = manifest.loc[manifest["subject"] == "sub-rat6", "case_id"].item()
    grey = np.array(Image.open(folder / "imagesTr" / f"{rat6}_0000.png"))
    assert grey.ndim == 2 and grey.shape == (744, 1154)
    source = np.array(Image.open(ADS_SEM / "sub-rat6" / "micr" / "sub-rat6_sample-data15_SEM.png"))
    np.testing.assert_array_equal(grey, source[..., 0])
    # sub-rat2's myelin is stored as 128 (not 127): still myelin, reported with the values found
    assert any("sub-rat2" in m and "128 (" in m for m in messages)
    rat2 = manifest.loc[manifest["subject"] == "sub-rat2", "case_id"].item()
    label = np.array(Image.open(folder / "labelsTr" / f"{rat2}.png"))
    masks = ADS_SEM / "derivatives" / "labels" / "sub-rat2" / "micr"
    axon = np.array(Image.open(masks / "sub-rat2_sample-data5_SEM_seg-axon-manual.png"))
    myelin = np.array(Image.open(masks / "sub-rat2_sample-data5_SEM_seg-myelin-manual.png"))
    assert set(np.unique(label)) == {0, 1, 2}
    assert np.mean((label == 2) == (axon > 127)) > 0.9999 and np.mean((label == 1) == (myelin > 127)) > 0.9999
    verify_in_process(folder, monkeypatch)


def test_ads_sem_labels_from_combined_and_separate_masks_agree():
    """The axonmyelin masks and the separate axon/myelin masks agree: both routes give the same nnU-Net labels."""
    _need_ads_sem()
    for image in find_bids_images(ADS_SEM):
        if image.subject not in ("rat1", "rat3"):
            continue
        from_combined = read_axon_myelin_label(image)
        separate = type(image)(image.path, image.subject, image.entities, image.modality, image.pixel_size_um,
                               {k: v for k, v in image.label_files.items() if k != "axonmyelin"})
        np.testing.assert_array_equal(read_axon_myelin_label(separate), from_combined)


def test_split_file_subject_selection_and_resampling(tmp_path):
    _need_ads_sem()
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"test": ["rat6"]}))
    folder = convert_bids_microscopy(ADS_SEM, tmp_path / "raw", 2, "Resampled", split_file=split_file,
                                     subjects=["rat3", "sub-rat6"], target_pixel_size_um=0.2, progress=False)
    manifest = read_manifest(folder)
    assert manifest["subject"].tolist() == ["sub-rat3"] * 3 + ["sub-rat6"]
    assert manifest["split"].tolist() == ["train"] * 3 + ["test"]
    assert np.allclose(manifest["pixel_size_um"], 0.2)
    assert np.allclose(manifest["source_pixel_size_um"], [0.1, 0.1, 0.1, 0.13])
    image = np.array(Image.open(folder / "imagesTr" / "Resampled_002_0000.png"))  # data9: 756 x 764 at 0.1 um
    label = np.array(Image.open(folder / "labelsTr" / "Resampled_002.png"))
    assert image.shape == label.shape == (378, 382)
    assert set(np.unique(label)) == {0, 1, 2}


# ------------------------------------------------------------------------------------------- synthetic datasets
def _axonmyelin(shape, seed):
    """A 0/127/255 mask: a few axons (255) in myelin rings (127)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.integers(3, 6)
        distance = np.hypot(yy - cy, xx - cx)
        mask[distance < r + 2] = 127
        mask[distance < r] = 255
    return mask


def _write(path: Path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


def _bids_image(root, subject, stem_entities, suffix, image, mask=None, separate=False, ext=".png",
                sidecar=None):
    stem = f"sub-{subject}_{stem_entities}_{suffix}" if stem_entities else f"sub-{subject}_{suffix}"
    _write(root / f"sub-{subject}" / "micr" / f"{stem}{ext}", image)
    if sidecar is not None:
        (root / f"sub-{subject}" / "micr" / f"{stem}.json").write_text(json.dumps(sidecar))
    labels = root / "derivatives" / "labels" / f"sub-{subject}" / "micr"
    if mask is not None and not separate:
        _write(labels / f"{stem}_seg-axonmyelin-manual.png", mask)
    elif mask is not None:
        _write(labels / f"{stem}_seg-axon-manual.png", np.where(mask == 255, 255, 0).astype(np.uint8))
        _write(labels / f"{stem}_seg-myelin-manual.png", np.where(mask > 0, 255, 0).astype(np.uint8))  # overlaps
    return stem


@pytest.fixture
def mixed_bids(tmp_path):
    """A dataset of every convention: acq- entities, subject-level sidecar in nm, RGB bright field, 16-bit TIFF,
    separate masks, an unlabelled image and an extra seg-uaxon derivative."""
    root = tmp_path / "bids"
    rng = np.random.default_rng(0)
    shape = (40, 48)
    (root / "sub-a" / "micr").mkdir(parents=True)
    (root / "sub-a" / "micr" / "sub-a_BF.json").write_text(json.dumps({"PixelSize": [250, 250],
                                                                       "PixelSizeUnits": "nm"}))
    rgb = rng.integers(0, 255, (*shape, 3)).astype(np.uint8)
    stem_rgb = _bids_image(root, "a", "sample-1_acq-roi1", "BF", rgb, _axonmyelin(shape, 1))
    _write(root / "derivatives" / "labels" / "sub-a" / "micr" / f"{stem_rgb}_seg-uaxon-manual.png",
           np.zeros(shape, np.uint8))
    _bids_image(root, "a", "sample-1_acq-roi2", "BF", rgb[::-1].copy(), _axonmyelin(shape, 2), separate=True)
    grey16 = rng.integers(0, 60000, shape).astype(np.uint16)
    _bids_image(root, "b", "sample-2", "TEM", grey16, _axonmyelin(shape, 3), ext=".tif",
                sidecar={"PixelSize": [0.005, 0.005], "PixelSizeUnits": "mm"})
    _bids_image(root, "c", "sample-3", "TEM", rng.integers(0, 255, shape).astype(np.uint8), None,
                sidecar={"PixelSize": 0.01, "PixelSizeUnits": "um"})
    return root


def test_mixed_conventions(mixed_bids, tmp_path, monkeypatch):
    folder = convert_bids_microscopy(mixed_bids, tmp_path / "raw", 3, "Mixed", progress=False)
    manifest = read_manifest(folder).set_index("sample", drop=False)
    assert manifest["split"].tolist() == ["train", "train", "train", "test"]  # the unlabelled one is held out
    assert manifest["modality"].tolist() == ["BF", "BF", "TEM", "TEM"]
    assert np.allclose(manifest["pixel_size_um"], [0.25, 0.25, 5.0, 0.01])  # nm, subject-level; mm; um
    cases = manifest["case_id"].tolist()
    # RGB bright field -> luminance
    from skimage.color import rgb2gray

    rgb = np.array(Image.open(mixed_bids / "sub-a/micr/sub-a_sample-1_acq-roi1_BF.png"))
    grey = np.array(Image.open(folder / "imagesTr" / f"{cases[0]}_0000.png"))
    assert grey.dtype == np.uint8 and np.abs(grey.astype(int) - np.round(rgb2gray(rgb) * 255)).max() <= 1
    # 16-bit TIFF stays 16-bit
    assert np.array(Image.open(folder / "imagesTr" / f"{cases[2]}_0000.png")).dtype == np.uint16
    # separate masks: axon wins where the myelin mask overlaps it
    label = np.array(Image.open(folder / "labelsTr" / f"{cases[1]}.png"))
    expected = np.select([_axonmyelin((40, 48), 2) == 255, _axonmyelin((40, 48), 2) == 127], [2, 1], 0)
    np.testing.assert_array_equal(label, expected)
    # the seg-uaxon derivative is not a source of anything
    assert "uaxon" not in "".join(manifest["source_files"])
    assert not (folder / "labelsTs").exists()  # the unlabelled test image has no label file
    verify_in_process(folder, monkeypatch)


def test_unlabelled_policies_and_modality_filter(mixed_bids, tmp_path):
    with pytest.raises(ValueError, match="sub-c_sample-3_TEM.png: no manual label"):
        convert_bids_microscopy(mixed_bids, tmp_path / "raw", 4, "Strict", unlabelled="error", progress=False)
    folder = convert_bids_microscopy(mixed_bids, tmp_path / "raw", 4, "Tem", unlabelled="skip", modalities=["TEM"],
                                     progress=False)
    assert read_manifest(folder)["sample"].tolist() == ["2"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset004_Tem"]


@pytest.mark.parametrize("breakage, match", [
    ("half_mask", "seg-axon-manual.png: found without its _seg-myelin-manual.png"),
    ("shape", "image is \\(40, 48\\) but its label is \\(20, 48\\)"),
    ("label_map", "values \\[0, 1, 2\\] but an axonmyelin mask holds"),
    ("bad_unit", "PixelSizeUnits 'inch' not understood"),
    ("not_bids", "'junk' is not a BIDS key-value entity"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, breakage, match):
    root = tmp_path / "bids"
    mask = _axonmyelin((40, 48), 0)
    image = np.zeros((40, 48), np.uint8)
    stem = _bids_image(root, "x", "sample-1", "SEM", image, mask, sidecar={"PixelSize": 0.1,
                                                                          "PixelSizeUnits": "um"})
    labels = root / "derivatives/labels/sub-x/micr"
    if breakage == "half_mask":
        (labels / f"{stem}_seg-axonmyelin-manual.png").unlink()
        _write(labels / f"{stem}_seg-axon-manual.png", mask)
    elif breakage == "shape":
        _write(labels / f"{stem}_seg-axonmyelin-manual.png", mask[:20])
    elif breakage == "label_map":
        _write(labels / f"{stem}_seg-axonmyelin-manual.png", (mask // 127).astype(np.uint8))
    elif breakage == "bad_unit":
        (root / "sub-x/micr" / f"{stem}.json").write_text(json.dumps({"PixelSize": 1, "PixelSizeUnits": "inch"}))
    else:
        _write(root / "sub-x/micr/sub-x_junk_SEM.png", image)
    with pytest.raises(ValueError, match=match):
        convert_bids_microscopy(root, tmp_path / "raw", 5, "Broken", progress=False)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_several_roots_and_their_subject_clash(mixed_bids, tmp_path):
    other = tmp_path / "other"
    _bids_image(other, "z", "sample-9", "SEM", np.zeros((40, 48), np.uint8), _axonmyelin((40, 48), 5))
    folder = convert_bids_microscopy([mixed_bids, other], tmp_path / "raw", 6, "Two", progress=False)
    assert "sub-z" in read_manifest(folder)["subject"].tolist()
    shutil.copytree(mixed_bids / "sub-a", other / "sub-a")
    with pytest.raises(ValueError, match="sub-a appears in several datasets"):
        convert_bids_microscopy([mixed_bids, other], tmp_path / "raw", 7, "Clash", progress=False)


def test_cli_errors_are_clean_and_overwrite_is_explicit(mixed_bids, tmp_path, capsys):
    raw = tmp_path / "raw"
    arguments = ["convert", "bids", str(mixed_bids), "--raw", str(raw), "-d", "8", "-n", "Cli"]
    assert cli_main(arguments) == 0
    first = (raw / "Dataset008_Cli" / "manifest.csv").read_text()
    assert cli_main(arguments) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main(arguments + ["--test-subjects", "nobody"]) == 1
    assert "test subjects/images not found" in capsys.readouterr().err
    assert (raw / "Dataset008_Cli" / "manifest.csv").read_text() == first
    assert cli_main(arguments + ["--overwrite", "--test-subjects", "b"]) == 0
    assert read_manifest(raw / "Dataset008_Cli")["split"].tolist() == ["train", "train", "test", "test"]
