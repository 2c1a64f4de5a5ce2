"""BigNeuron -> 3D nnU-Net raw: the real sample stacks with their SWC tracings, the SWC-to-mask painting, and Vaa3D
raw files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from scipy.spatial import cKDTree

from nnunet_ext.dataset_conversion.bigneuron import (V3DRAW_MAGIC, convert_bigneuron, find_image_tracing_pairs,
                                                     read_neuron_image, read_v3draw, swc_to_mask, write_v3draw)
from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest
from nnunet_ext.io.swc import read_swc, tree_from_arrays
from test_conversion_writer import verify_in_process

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bigneuron_sample"


def _need_sample():
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} not available")


def test_real_sample_converts_with_masks_on_the_tracings(tmp_path, monkeypatch, capsys):
    _need_sample()
    folder = convert_bigneuron([SAMPLE], tmp_path / "raw", 31, "BigNeuron", voxel_size_xyz=(0.5, 0.5, 2.0),
                               test_cases=["test.small"], progress=False)
    assert "test-expected.swc" in capsys.readouterr().out  # a tracing without an image is reported
    manifest = read_manifest(folder)
    assert manifest["subject"].tolist() == ["test-small", "test.small"]
    assert manifest["split"].tolist() == ["train", "test"]
    for row, stem in zip(manifest.itertuples(), ("test-small", "test.small")):
        images, labels = ("imagesTr", "labelsTr") if row.split == "train" else ("imagesTs", "labelsTs")
        label = sitk.ReadImage(str(folder / labels / f"{row.case_id}.nii.gz"))
        image = sitk.ReadImage(str(folder / images / f"{row.case_id}_0000.nii.gz"))
        np.testing.assert_allclose(label.GetSpacing(), (0.5, 0.5, 2.0))  # ITK order x, y, z
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), tifffile.imread(SAMPLE / f"{stem}.tif"))
        mask = sitk.GetArrayFromImage(label)
        tree = read_swc(SAMPLE / f"{stem}.swc")
        zyx = np.round(tree.coordinates[:, ::-1]).astype(int)
        inside = np.all((zyx >= 0) & (zyx < mask.shape), axis=1)
        assert mask[tuple(zyx[inside].T)].all()  # every node of the tracing is in the mask
        # ... and nothing farther from it than the largest radius: sample the segments densely
        child, parent = tree.edges()
        t = np.linspace(0, 1, 41)[:, None, None]
        centreline = (child[None] + t * (parent - child)[None]).reshape(-1, 3)[:, ::-1]
        distance, _ = cKDTree(centreline).query(np.argwhere(mask))
        assert distance.max() <= max(tree.radii.max(), 1.0) + 1e-6
        assert mask.sum() >= len(np.unique(zyx[inside], axis=0))
    verify_in_process(folder, monkeypatch)


def _union_of_balls_reference(a, b, radius_a, radius_b, shape, spacing, samples=801, slack=0.0):
    """Dense sampling of the balls along a segment: the definition the painting implements exactly."""
    t = np.linspace(0, 1, samples)
    centres = (np.asarray(a)[None] + t[:, None] * (np.asarray(b) - np.asarray(a))[None]) * spacing
    radii = radius_a + t * (radius_b - radius_a) + slack
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    points = grid.reshape(-1, 3)
    inside = np.zeros(len(points), bool)
    for start in range(0, samples, 100):
        distance2 = ((points[None] - centres[start:start + 100, None]) ** 2).sum(-1)
        inside |= np.any(distance2 <= radii[start:start + 100, None] ** 2, axis=0)
    return inside.reshape(shape)


@pytest.mark.parametrize("radii, spacing", [((1.0, 4.0), (1.0, 1.0, 1.0)), ((3.0, 1.5), (2.0, 1.0, 1.0))])
def test_segment_paints_the_union_of_balls_with_interpolated_radius(radii, spacing):
    shape = (14, 20, 30)
    a_xyz, b_xyz = (4.0, 6.0, 5.0), (24.0, 12.5, 7.0)  # x, y, z voxel coordinates
    tree = tree_from_arrays([1, 2], [a_xyz, b_xyz], [-1, 1], radii=radii)
    mask = swc_to_mask(tree, shape, voxel_size_zyx=spacing, min_radius=0.0)
    a_zyx, b_zyx = a_xyz[::-1], b_xyz[::-1]
    # radii are in x voxels (spacing 1 along x here), so physical radius = radius
    inner = _union_of_balls_reference(a_zyx, b_zyx, *radii, shape, np.asarray(spacing), slack=-1e-3)
    outer = _union_of_balls_reference(a_zyx, b_zyx, *radii, shape, np.asarray(spacing), slack=+0.05)
    assert inner.sum() > 50
    assert np.all(mask[inner]) and not np.any(mask & ~outer)


def test_min_radius_isolated_root_and_anisotropic_balls():
    tree = tree_from_arrays([1, 2], [(5.0, 5.0, 4.0), (15.0, 5.0, 4.0)], [-1, -1], radii=[0.0, 2.0])
    mask = swc_to_mask(tree, (9, 11, 21), voxel_size_zyx=(2.0, 1.0, 1.0), min_radius=1.0)
    # two isolated roots: balls of radius 1 (raised from 0) and 2 x voxels; z voxels are twice as long
    assert mask[4, 5, 4:7].all() and not mask[4, 5, 3] and not mask[4, 5, 7]
    assert mask[4, 5, 13:18].all() and not mask[4, 5, 12]
    assert mask[3, 5, 15] and mask[5, 5, 15] and not mask[2, 5, 15] and not mask[6, 5, 15]
    assert mask.sum() == 5 + (sum(1 for z in range(-1, 2) for y in range(-2, 3) for x in range(-2, 3)
                                  if (2 * z) ** 2 + y ** 2 + x ** 2 <= 4))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_v3draw_round_trip(tmp_path, dtype, byte_order):
    stack = (np.random.default_rng(0).random((2, 5, 7, 9)) * 200).astype(dtype)
    path = write_v3draw(tmp_path / "stack.v3draw", stack, byte_order)
    raw = path.read_bytes()
    assert raw.startswith(V3DRAW_MAGIC) and raw[24:25] == (b"L" if byte_order == "<" else b"B")
    np.testing.assert_array_equal(read_v3draw(path), stack)
    np.testing.assert_array_equal(read_neuron_image(path, channel=1), stack[1])


def test_v3draw_old_int16_sizes_and_bad_files(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(1, 3, 4, 5)
    old = tmp_path / "old.v3draw"
    old.write_bytes(V3DRAW_MAGIC + b"L" + np.array([1], "<i2").tobytes() + np.array([5, 4, 3, 1], "<i2").tobytes()
                    + stack.tobytes())
    np.testing.assert_array_equal(read_v3draw(old), stack)
    truncated = tmp_path / "truncated.v3draw"
    truncated.write_bytes(old.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated.v3draw: file size"):
        read_v3draw(truncated)
    (tmp_path / "other.v3draw").write_bytes(b"not a vaa3d file at all")
    with pytest.raises(ValueError, match="other.v3draw: not a Vaa3D raw file"):
        read_v3draw(tmp_path / "other.v3draw")
    (tmp_path / "packed.v3dpbd").write_bytes(b"x")
    with pytest.raises(ValueError, match="packed.v3dpbd: compressed Vaa3D files .* convert it with Vaa3D"):
        read_neuron_image(tmp_path / "packed.v3dpbd")


def test_v3draw_folder_layout_pairs_the_only_tracing(tmp_path):
    _need_sample()
    neuron = tmp_path / "neuron_07"
    neuron.mkdir()
    write_v3draw(neuron / "image.v3draw", tifffile.imread(SAMPLE / "test-small.tif"))
    shutil.copy(SAMPLE / "test-small.swc", neuron / "gold_standard.swc")
    (tmp_path / "lonely").mkdir()
    tifffile.imwrite(tmp_path / "lonely" / "stack.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    pairs, orphans = find_image_tracing_pairs([tmp_path])
    assert pairs == [(tmp_path / "lonely" / "stack.tif", None), (neuron / "image.v3draw", neuron / "gold_standard.swc")]
    folder = convert_bigneuron([tmp_path], tmp_path / "raw", 32, "Vaa3D", progress=False)
    manifest = read_manifest(folder)
    assert manifest["split"].tolist() == ["test", "train"]  # the untraced stack goes to imagesTs
    from_v3draw = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "Vaa3D_001.nii.gz")))
    expected = swc_to_mask(read_swc(SAMPLE / "test-small.swc"), from_v3draw.shape)
    np.testing.assert_array_equal(from_v3draw, expected)


@pytest.mark.parametrize("breakage, match", [
    ("elsewhere", "far.swc: every node lies outside"),
    ("malformed", "far.swc:2: expected 7 fields"),
    ("unlabelled", "stack.tif: no SWC tracing"),
])
def test_bad_tracings_are_named_and_nothing_is_written(tmp_path, breakage, match):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    kwargs = {}
    if breakage == "elsewhere":
        (tmp_path / "far.swc").write_text("1 3 100 100 100 1 -1\n2 3 110 100 100 1 1\n")
        kwargs["pairs"] = [(tmp_path / "stack.tif", tmp_path / "far.swc")]
    elif breakage == "malformed":
        (tmp_path / "far.swc").write_text("# header\n1 3 1 1\n")
        kwargs["pairs"] = [(tmp_path / "stack.tif", tmp_path / "far.swc")]
    else:
        kwargs["unlabelled"] = "error"
    with pytest.raises(ValueError, match=match):
        convert_bigneuron([] if kwargs.get("pairs") else [tmp_path], tmp_path / "raw", 33, "Bad", progress=False,
                          **kwargs)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []
