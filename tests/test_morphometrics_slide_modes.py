"""Nerve and unmyelinated-axon modes on whole slides (chunk by chunk) equal the in-memory modes, fascicles that span
many chunks included; the chunk-joined components equal scipy.ndimage.label's."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from nnunet_ext.cli import main as cli_main
from nnunet_ext.io.slides import block_grid
from nnunet_ext.morphometrics.kernels import label_components_4
from nnunet_ext.morphometrics.slide_components import core_parts, merge_core_parts
from test_morphometrics import synthetic_fibres
from test_morphometrics_nerve import _check, _scene
from test_morphometrics_slide import assert_frames_equal

PIXEL = 0.1


@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_chunk_joined_components_equal_scipy(chunk, density):
    """Random masks around the percolation threshold (components that wind through many chunks): labels, raster
    order and pixel counts as scipy.ndimage.label's on the whole mask."""
    rng = np.random.default_rng(int(density * 100) + chunk)
    mask = rng.random((37, 45)) < density
    grid = block_grid(mask.shape, chunk)
    parts = [core_parts(*label_components_4(mask[b.y0:b.y1, b.x0:b.x1]), b, mask.shape[1]) for b in grid]
    merged = merge_core_parts(parts, grid)
    ours = np.zeros(mask.shape, np.int64)
    for b, lookup in zip(grid, merged.lookup):
        ours[b.y0:b.y1, b.x0:b.x1] = lookup[label_components_4(mask[b.y0:b.y1, b.x0:b.x1])[0]]
    expected, n = ndi.label(mask)  # 4-connected, numbered in raster order of first pixels
    assert merged.count == n
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(merged.sums["pixels"], np.bincount(expected.ravel(), minlength=n + 1) * (
        np.arange(n + 1) > 0))


def test_empty_mask_has_no_components():
    grid = block_grid((20, 20), 8)
    parts = [core_parts(*label_components_4(np.zeros(b.shape, bool)), b, 20) for b in grid]
    merged = merge_core_parts(parts, grid)
    assert merged.count == 0 and all((lookup == 0).all() for lookup in merged.lookup)


def test_hand_scene_on_a_slide_matches_values_by_hand(tmp_path):
    """The by-hand nerve scene of test_morphometrics_nerve, measured in 16-px chunks: every fascicle spans
    several chunks, and the values written out by hand are met."""
    import zarr

    nerve, label = _scene()
    zarr.create_array(str(tmp_path / "s.zarr"), data=label, chunks=(16, 16))
    Image.fromarray(nerve.astype(np.uint8) * 255).save(tmp_path / "s_seg-nerve.png")
    assert cli_main(["morphometrics", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "out"), "--pixel-size", "0.1",
                     "--nerve", "--chunk-size", "16", "--halo", "16", "--no-qc"]) == 0
    _check(tmp_path / "out", "s")


def _winding_nerve(shape):
    """Fascicles that wind through many 64-px chunks: a spiral arm, a U open at the top (its two arms meet only at
    the bottom, in a later chunk row), a ring, and small fascicles."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    nerve = np.zeros(shape, bool)
    radius, angle = np.hypot(yy - 150, xx - 170), np.arctan2(yy - 150, xx - 170)
    nerve |= (np.abs((radius - 12 * (angle + np.pi)) % 75 - 10) < 9) & (radius < 140)  # spiral band
    nerve[10:120, 10:30] = nerve[10:120, 80:100] = nerve[100:120, 10:100] = True  # U
    nerve |= np.abs(np.hypot(yy - 230, xx - 270) - 50) < 10  # ring
    nerve[270:290, 20:40] = True
    return nerve


@pytest.fixture(scope="module")
def scene():
    """300x340 label image (myelinated fibres, unmyelinated axons 3) and a winding nerve mask."""
    axon, myelin = synthetic_fibres((300, 340), 400, seed=1)
    label = np.zeros(axon.shape, np.uint8)
    label[myelin] = 1
    label[axon] = 2
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:300, :340]
    for _ in range(120):  # unmyelinated axons where there is no fibre, many across chunk borders
        cy, cx, r = rng.uniform(0, 300), rng.uniform(0, 340), rng.uniform(1, 6)
        blob = np.hypot((yy - cy) / rng.uniform(0.5, 1), xx - cx) < r
        if not (label[blob] != 0).any():
            label[blob] = 3
    return label, _winding_nerve(label.shape)


def _in_memory(tmp_path, label, *args):
    folder = tmp_path / "image"
    folder.mkdir()
    Image.fromarray(label).save(folder / "s.png")
    assert cli_main(["morphometrics", str(folder), "-o", str(tmp_path / "memory"), "--pixel-size", "0.1",
                     "--no-qc", "--no-index-maps", *args]) == 0
    return tmp_path / "memory"


def _on_slide(tmp_path, label, *args, halo=48):
    import zarr

    folder = tmp_path / "slide"
    folder.mkdir(exist_ok=True)
    zarr.create_array(str(folder / "s.zarr"), data=label, chunks=(64, 64))
    assert cli_main(["morphometrics", str(folder / "s.zarr"), "-o", str(tmp_path / "chunked"), "--pixel-size", "0.1",
                     "--chunk-size", "64", "--halo", str(halo), "--no-qc", "--workers", "2", *args]) == 0
    return tmp_path / "chunked"


def _same_outputs(memory, chunked, files):
    for name in files:
        ours, expected = pd.read_csv(chunked / name), pd.read_csv(memory / name)
        assert_frames_equal(ours, expected)


def _same_aggregates(memory, chunked):
    ours = pd.read_csv(chunked / "aggregate_morphometrics.csv").iloc[0]
    expected = pd.read_csv(memory / "aggregate_morphometrics.csv").iloc[0]
    skip = {"source", "postprocess"}
    for key in expected.index.difference(list(skip)):
        a, b = ours[key], expected[key]
        assert (pd.isna(a) and pd.isna(b)) or a == pytest.approx(b, rel=1e-12) if isinstance(b, float) else a == b, key


def test_nerve_mask_and_uaxons_on_a_slide_equal_in_memory(scene, tmp_path):
    label, nerve = scene
    Image.fromarray(nerve.astype(np.uint8) * 255).save(tmp_path / "nerve.png")
    memory = _in_memory(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    chunked = _on_slide(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    fascicles = pd.read_csv(memory / "s_fascicles.csv")
    assert len(fascicles) >= 4 and (fascicles["axon_count"] > 0).sum() >= 3  # the test means something
    per_axon = pd.read_csv(chunked / "s_axon_morphometrics.csv")
    crossing = ((per_axon["bbox_min_y"] // 64 != (per_axon["bbox_max_y"] - 1) // 64)
                | (per_axon["bbox_min_x"] // 64 != (per_axon["bbox_max_x"] - 1) // 64))
    assert crossing.sum() > 20 and (per_axon["fascicle_id"] >= 0).sum() > 30
    _same_outputs(memory, chunked, ["s_axon_morphometrics.csv", "s_fascicles.csv", "s_uaxon_morphometrics.csv"])
    _same_json(memory, chunked)
    _same_aggregates(memory, chunked)


def _same_json(memory, chunked):
    ours = json.loads((chunked / "s_nerve_morphometrics.json").read_text())
    expected = json.loads((memory / "s_nerve_morphometrics.json").read_text())
    assert ours.keys() == expected.keys() and ours["fascicle_areas"].keys() == expected["fascicle_areas"].keys()
    for key, value in expected["fascicle_areas"].items():
        for field, number in value.items():
            got = ours["fascicle_areas"][key][field]
            assert got == number or (isinstance(number, float) and got == pytest.approx(number, nan_ok=True)), \
                (key, field)
    assert ours["total_area"] == expected["total_area"]
    assert ours["total_axon_density"] == expected["total_axon_density"]


def test_nerve_label_on_a_slide_equals_in_memory(scene, tmp_path):
    """The nerve from the label slide (tissue 4 with the fibres and unmyelinated axons touching it), joined across
    chunks in two passes; fibres off the tissue are removed as in memory."""
    fibres, nerve = scene
    label = np.where(nerve & (fibres == 0), 4, fibres).astype(np.uint8)
    memory = _in_memory(tmp_path, label, "--nerve-label", "4")
    chunked = _on_slide(tmp_path, label, "--nerve-label", "4")
    _same_outputs(memory, chunked, ["s_axon_morphometrics.csv", "s_fascicles.csv", "s_uaxon_morphometrics.csv"])
    _same_json(memory, chunked)
    _same_aggregates(memory, chunked)
    (tmp_path / "all").mkdir()
    everything = pd.read_csv(_on_slide(tmp_path / "all", fibres) / "s_axon_morphometrics.csv")
    assert len(pd.read_csv(chunked / "s_axon_morphometrics.csv")) < len(everything)  # fibres off the nerve go
    assert cli_main(["morphometrics", str(tmp_path / "slide" / "s.zarr"), "-o", str(tmp_path / "x"),
                     "--pixel-size", "0.1", "--chunk-size", "64"]) != 0  # without --nerve-label, 4 is unknown
    uaxon = pd.read_csv(chunked / "s_uaxon_morphometrics.csv")
    assert len(uaxon) > 10  # unmyelinated axons inside the fascicles belong to the nerve


def test_uaxons_on_a_slide_equal_in_memory_and_cut_ones_are_noted(scene, tmp_path):
    label, _ = scene
    memory = _in_memory(tmp_path, label)
    chunked = _on_slide(tmp_path, label)
    _same_outputs(memory, chunked, ["s_uaxon_morphometrics.csv", "uaxon_morphometrics.csv"])
    _same_aggregates(memory, chunked)
    uaxon = pd.read_csv(chunked / "s_uaxon_morphometrics.csv")
    crossing = ((uaxon["bbox_min_y"] // 64 != (uaxon["bbox_max_y"] - 1) // 64)
                | (uaxon["bbox_min_x"] // 64 != (uaxon["bbox_max_x"] - 1) // 64))
    assert len(uaxon) > 40 and crossing.sum() > 5
    (tmp_path / "cut").mkdir()
    with pytest.warns(UserWarning, match="unmyelinated axon"):
        cut = _on_slide(tmp_path / "cut", label, halo=0)
    table = pd.read_csv(cut / "s_uaxon_morphometrics.csv")
    noted = table["note"].fillna("").str.contains("chunk halo")
    aggregate = pd.read_csv(cut / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["uaxon_halo_exceeded"] == noted.sum() >= crossing.sum() > 0


def test_segment_style_slide_finds_its_nerve_and_refuses_colorize(tmp_path, capsys):
    import zarr

    nerve, label = _scene()
    zarr.create_array(str(tmp_path / "x_seg.zarr"), data=label, chunks=(16, 16))
    args = ["morphometrics", str(tmp_path / "x_seg.zarr"), "-o", str(tmp_path / "out"), "--pixel-size", "0.1",
            "--chunk-size", "16", "--halo", "16", "--no-qc"]
    assert cli_main(args + ["--nerve"]) != 0
    assert "no nerve mask x_seg-nerve" in capsys.readouterr().err  # says what it looked for
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "x_seg-nerve.tif", nerve.astype(np.uint8))
    assert cli_main(args + ["--nerve"]) == 0
    assert (tmp_path / "out" / "x_seg_nerve_morphometrics.json").is_file()  # named after the file (no metadata)
    pytest.importorskip("openpyxl")
    assert cli_main(args + ["--nerve", "--format", "xlsx", "-o", str(tmp_path / "xlsx")]) == 0
    sheet = pd.read_excel(tmp_path / "xlsx" / "x_seg_axon_morphometrics.xlsx", index_col=0)
    csv = pd.read_csv(tmp_path / "out" / "x_seg_axon_morphometrics.csv")
    assert list(sheet.columns[:3]) == ["x0 (px)", "y0 (px)", "gratio"] and len(sheet) == len(csv) == 3
    assert sheet["fascicle_id"].tolist() == csv["fascicle_id"].tolist() == [0, 1, 0]
    assert cli_main(args + ["--nerve", "-c", "--overwrite"]) != 0
    assert "not available for whole slides" in capsys.readouterr().err


def test_uaxon_outputs_even_when_none_is_inside_the_nerve(tmp_path):
    """A slide with unmyelinated axons only outside the nerve writes the (empty) tables and zero counts, as an
    image does, and the myelinated fraction counts the axons of the same region."""
    nerve, label = _scene()
    label[30:34, 40:44] = 3  # outside both fascicles
    Image.fromarray(nerve.astype(np.uint8) * 255).save(tmp_path / "nerve.png")
    memory = _in_memory(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    chunked = _on_slide(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    for out in (memory, chunked):
        assert len(pd.read_csv(out / "s_uaxon_morphometrics.csv")) == 0
        aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
        assert aggregate["uaxon_count"] == 0 and aggregate["myelinated_fraction"] == 1
    _same_aggregates(memory, chunked)
    assert list(pd.read_csv(chunked / "aggregate_morphometrics.csv").columns[-3:]) == [
        "fascicle_count", "nerve_area_um2", "total_axon_density_per_um2"]  # the image path's order


def test_nerve_label_on_a_cluster_into_a_new_folder(scene, tmp_path):
    """--nerve-label through a dask.distributed scheduler: the nerve Zarr is built beside an output folder whose
    parents do not exist yet, and the result equals the threaded run."""
    from distributed import LocalCluster

    from nnunet_ext.morphometrics.measure_files import run_slide

    fibres, nerve = scene
    label = np.where(nerve & (fibres == 0), 4, fibres).astype(np.uint8)
    import zarr

    zarr.create_array(str(tmp_path / "s.zarr"), data=label, chunks=(64, 64))
    threads = run_slide(tmp_path / "s.zarr", tmp_path / "threads", 0.1, chunk_size=64, halo=48, nerve_label=4,
                        qc=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        run_slide(tmp_path / "s.zarr", tmp_path / "results" / "run1", 0.1, chunk_size=64, halo=48, nerve_label=4,
                  qc=False, scheduler=cluster.scheduler_address)
    _same_outputs(tmp_path / "threads", tmp_path / "results" / "run1", ["s_axon_morphometrics.csv",
                                                                        "s_fascicles.csv"])
    assert threads["aggregates"][0]["fascicle_count"] >= 2
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]  # scratch removed


def test_anti_aliased_nerve_png_is_read_as_for_an_image(tmp_path):
    """A nerve PNG with soft edges (values between 0 and 255): nonzero is nerve, with a warning, on a slide as in
    memory, with the same results."""
    nerve, label = _scene()
    soft = nerve.astype(np.uint8) * 255
    soft[2, 2:22] = 128  # a soft top edge of fascicle 0
    Image.fromarray(soft).save(tmp_path / "nerve.png")
    with pytest.warns(UserWarning, match="neither 0 nor 255"):
        memory = _in_memory(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    with pytest.warns(UserWarning, match="20 pixel"):
        chunked = _on_slide(tmp_path, label, "--nerve", str(tmp_path / "nerve.png"))
    _check(chunked, "s")
    _same_json(memory, chunked)
