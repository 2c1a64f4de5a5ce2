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
    mask = swc_to_mask(tree, shape, voxel_size_zyx=spacing, min_radius=0.0, painting="balls")
    a_zyx, b_zyx = a_xyz[::-1], b_xyz[::-1]
    # radii are in x voxels (spacing 1 along x here), so physical radius = radius
    inner = _union_of_balls_reference(a_zyx, b_zyx, *radii, shape, np.asarray(spacing), slack=-1e-3)
    outer = _union_of_balls_reference(a_zyx, b_zyx, *radii, shape, np.asarray(spacing), slack=+0.05)
    assert inner.sum() > 50
    assert np.all(mask[inner]) and not np.any(mask & ~outer)


def test_min_radius_isolated_root_and_anisotropic_balls():
    tree = tree_from_arrays([1, 2], [(5.0, 5.0, 4.0), (15.0, 5.0, 4.0)], [-1, -1], radii=[0.0, 2.0])
    mask = swc_to_mask(tree, (9, 11, 21), voxel_size_zyx=(2.0, 1.0, 1.0), min_radius=1.0, painting="balls")
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
    with pytest.raises(ValueError, match="packed.v3dpbd: not a Vaa3D PBD file"):
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


def _vaa3d_compute_mask_image(tree, shape):
    """A literal, scalar port of ComputemaskImage (Vaa3D's swc_to_maskimage plugin), as the reference: node balls,
    the half-length line, and the cone with the radius at the foot of the perpendicular, with Vaa3D's truncated
    boxes and its 'dist <= 1' floor. Indices are x, y, z as in Vaa3D; the result is returned as [z, y, x]."""
    import math

    sz, sy, sx = shape
    mask = np.zeros((sx, sy, sz), bool)
    rows = {int(i): k for k, i in enumerate(tree.ids)}
    for k in range(len(tree)):
        xs, ys, zs = tree.coordinates[k]
        rs = tree.radii[k]
        bounds = [(min(max(c - rs, 0), n - 1), min(max(c + rs, 0), n - 1)) for c, n in ((xs, sx), (ys, sy), (zs, sz))]
        for i in range(int(bounds[0][0]), math.floor(bounds[0][1]) + 1):
            for j in range(int(bounds[1][0]), math.floor(bounds[1][1]) + 1):
                for kk in range(int(bounds[2][0]), math.floor(bounds[2][1]) + 1):
                    dt = math.sqrt((xs - i) ** 2 + (ys - j) ** 2 + (zs - kk) ** 2)
                    if dt <= rs or dt <= 1:
                        mask[i, j, kk] = True
        if tree.parent_ids[k] < 0:
            continue
        xe, ye, ze = tree.coordinates[rows[int(tree.parent_ids[k])]]
        re = tree.radii[rows[int(tree.parent_ids[k])]]
        if (xe, ye, ze) == (xs, ys, zs):
            continue
        length = math.sqrt((xe - xs) ** 2 + (ye - ys) ** 2 + (ze - zs) ** 2)
        steps = int(math.floor(length + 0.5))
        for d in (xe - xs, ye - ys, ze - zs):
            steps = int(abs(d)) if steps < abs(d) else steps
        steps = max(steps, 1)
        x, y, z = xs, ys, zs
        mask[int(math.floor(x + 0.5)), int(math.floor(y + 0.5)), int(math.floor(z + 0.5))] = True
        for _ in range(steps + 1):
            x, y, z = x + (xe - xs) / (steps * 2), y + (ye - ys) / (steps * 2), z + (ze - zs) / (steps * 2)
            x, y, z = min(x, sx), min(y, sy), min(z, sz)
            mask[int(math.floor(x + 0.5)), int(math.floor(y + 0.5)), int(math.floor(z + 0.5))] = True
        rbox = max(rs, re)
        box = []
        for a, b, n in ((xs, xe, sx), (ys, ye, sy), (zs, ze, sz)):
            low, high = float(int(min(a, b) - rbox)), float(int(max(a, b) + rbox))
            box.append((int(min(max(low, 0), n - 1)), int(min(max(high, 0), n - 1))))
        norms21 = (xe - xs) ** 2 + (ye - ys) ** 2 + (ze - zs) ** 2
        for i in range(box[0][0], box[0][1] + 1):
            for j in range(box[1][0], box[1][1] + 1):
                for kk in range(box[2][0], box[2][1] + 1):
                    norms10 = (xs - i) ** 2 + (ys - j) ** 2 + (zs - kk) ** 2
                    dots = (xs - i) * (xe - xs) + (ys - j) * (ye - ys) + (zs - kk) * (ze - zs)
                    dist = math.sqrt(max(norms10 - dots * dots / norms21, 0.0))
                    t1 = -dots / norms21
                    if t1 < 0:
                        dist = math.sqrt(norms10)
                    elif t1 > 1:
                        dist = math.sqrt((xe - i) ** 2 + (ye - j) ** 2 + (ze - kk) ** 2)
                    if rs == re:
                        rr = rs
                    else:
                        t = ((i - xs) * (xe - xs) + (j - ys) * (ye - ys) + (kk - zs) * (ze - zs)) / norms21
                        xc, yc, zc = xs + (xe - xs) * t, ys + (ye - ys) * t, zs + (ze - zs) * t
                        normssc = math.sqrt((xs - xc) ** 2 + (ys - yc) ** 2 + (zs - zc) ** 2)
                        normsce = math.sqrt((xe - xc) ** 2 + (ye - yc) ** 2 + (ze - zc) ** 2)
                        rr = (rs - (rs - re) / math.sqrt(norms21) * normssc if rs >= re
                              else re - (re - rs) / math.sqrt(norms21) * normsce)
                    if dist <= rr or dist <= 1:
                        mask[i, j, kk] = True
    return mask.transpose(2, 1, 0)


TAPERED = dict(ids=[1, 2, 3, 4],
               coordinates=[(6.0, 14.0, 9.0), (30.0, 17.5, 11.0), (44.0, 8.0, 7.5), (33.3, 25.2, 10.4)],
               parent_ids=[-1, 1, 2, 2], radii=[2.0, 5.0, 1.5, 0.4])


def test_vaa3d_painting_matches_swc_to_maskimage_and_balls_paint_more_on_tapered_segments():
    """Default painting = a scalar port of Vaa3D's ComputemaskImage, voxel for voxel, on tapered segments (radius
    2 -> 5 -> 1.5) and a thin branch (radius 0.4 < 1); the ball union holds it and paints more."""
    shape = (20, 34, 52)
    tree = tree_from_arrays(**TAPERED)
    vaa3d = swc_to_mask(tree, shape)
    np.testing.assert_array_equal(vaa3d, _vaa3d_compute_mask_image(tree, shape))
    balls = swc_to_mask(tree, shape, painting="balls")
    assert np.all(balls[vaa3d])  # at the default minimum radius (1) the ball union holds Vaa3D's painting
    assert balls.sum() > vaa3d.sum()
    # one tapered segment alone (radius 1.5 -> 4.5, 16 voxels long): the balls slide outward where the radius grows
    # (689 voxels painted as Vaa3D, 700 as balls: +1.6 %)
    one = tree_from_arrays([1, 2], [(10.0, 20.0, 12.0), (25.36, 23.84, 14.24)], [-1, 1], radii=[1.5, 4.5])
    tapered_vaa3d, tapered_balls = swc_to_mask(one, (24, 40, 60)), swc_to_mask(one, (24, 40, 60), painting="balls")
    np.testing.assert_array_equal(tapered_vaa3d, _vaa3d_compute_mask_image(one, (24, 40, 60)))
    assert np.all(tapered_balls[tapered_vaa3d])
    assert 1.01 < tapered_balls.sum() / tapered_vaa3d.sum() < 1.03


def test_vaa3d_minimum_radius_acts_inside_the_boxes_only():
    """A thin segment (radius 0.3): Vaa3D's floor of 1 voxel reaches only as far as the box of half-width 0.3, so it
    paints fewer voxels than the ball union, whose radius is raised to 1 everywhere."""
    shape = (9, 9, 30)
    thin = tree_from_arrays([1, 2], [(4.0, 4.0, 4.0), (24.0, 4.0, 4.0)], [-1, 1], radii=[0.3, 0.3])
    vaa3d, balls = swc_to_mask(thin, shape), swc_to_mask(thin, shape, painting="balls")
    np.testing.assert_array_equal(vaa3d, _vaa3d_compute_mask_image(thin, shape))
    # Vaa3D's box spans y, z in {floor(4 - 0.3), floor(4 + 0.3)} = {3, 4} and x 3..24: within distance 1, the
    # axis row x 3..24 (22) and the rows y = 3 and z = 3 for x 4..24 (21 each); the rows y = 5, z = 5 lie outside
    assert vaa3d.sum() == 22 + 21 + 21
    assert vaa3d[4, 3, 10] and vaa3d[3, 4, 10] and not vaa3d[4, 5, 10] and not vaa3d[5, 4, 10]
    assert balls.sum() == 5 * 21 + 2  # a radius-1 capsule: 5 voxels a cross-section for x 4..24, one per end cap


def test_v3dpbd_stacks_convert_with_the_documented_command(tmp_path):
    """docs/conversion.md's 'nnunet-ext convert bigneuron /data/bigneuron_gold166 ...' on a Gold166-like folder
    of .v3dpbd stacks (written by the independent encoder of test_v3dpbd)."""
    from nnunet_ext.cli import main
    from test_v3dpbd import write_v3dpbd

    rng = np.random.default_rng(3)
    stacks = {}
    for index, byte_order in enumerate(("<", ">")):
        neuron = tmp_path / "bigneuron_gold166" / f"{index + 1}"
        neuron.mkdir(parents=True)
        stack = np.clip(np.cumsum(rng.integers(-1, 3, (6, 16, 20)), axis=2) + 40, 0, 255).astype(np.uint8)
        stack[:, :4] = 0
        write_v3dpbd(neuron / f"image{index + 1}.v3dpbd", stack[None], byte_order)
        (neuron / "gold.swc").write_text("1 2 3 8 2 1.5 -1\n2 2 15 9 3 1.0 1\n")
        stacks[f"image{index + 1}"] = stack
    assert main(["convert", "bigneuron", str(tmp_path / "bigneuron_gold166"), "--raw", str(tmp_path / "raw"),
                 "-d", "4", "-n", "BigNeuron", "--voxel-size", "0.2", "0.2", "1.0"]) == 0
    folder = tmp_path / "raw" / "Dataset004_BigNeuron"
    manifest = read_manifest(folder)
    assert sorted(manifest["subject"]) == ["image1", "image2"] and set(manifest["split"]) == {"train"}
    for row in manifest.itertuples():
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{row.case_id}_0000.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stacks[row.subject])
        np.testing.assert_allclose(image.GetSpacing(), (0.2, 0.2, 1.0))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{row.case_id}.nii.gz")))
        assert label[2, 8, 3] == 1 and label[3, 9, 15] == 1
