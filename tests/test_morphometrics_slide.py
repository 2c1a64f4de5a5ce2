"""Whole-slide (chunked, Dask) morphometrics equal the in-memory ones; cut fibres are reported."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnunet_ext.morphometrics import COLUMNS, aggregate_morphometrics, axon_morphometrics
from nnunet_ext.morphometrics.maps import tile_morphometrics
from nnunet_ext.morphometrics.slide import NOTE_HALO, slide_morphometrics
from tests.test_morphometrics import synthetic_fibres


@pytest.fixture(scope="module")
def slide():
    axon, myelin = synthetic_fibres((300, 340), 400, seed=1)
    label = np.zeros(axon.shape, np.uint8)
    label[myelin] = 1
    label[axon] = 2
    return label, axon, myelin


def assert_frames_equal(ours: pd.DataFrame, expected: pd.DataFrame):
    assert list(ours.columns) == list(expected.columns) and len(ours) == len(expected)
    for column in expected.columns:
        a, b = ours[column].to_numpy(), expected[column].to_numpy()
        if a.dtype == object or b.dtype == object:
            assert list(a) == list(b), column
        else:
            same = np.isclose(a.astype(float), b.astype(float), rtol=1e-12, atol=1e-12) | (pd.isna(a) & pd.isna(b))
            assert same.all(), f"{column}: rows {np.flatnonzero(~same)[:5]}"


def test_chunked_equals_in_memory(slide):
    label, axon, myelin = slide
    expected = axon_morphometrics(axon, myelin, 0.1, image_name="slide")
    result = slide_morphometrics(label, 0.1, chunk_size=64, halo=48, tile_size_px=32, image_name="slide",
                                 progress=False)
    assert result.chunks == 5 * 6 and result.halo_exceeded == 0
    # the test means something: many fibres cross chunk borders
    crossing = ((expected["bbox_min_y"] // 64 != (expected["bbox_max_y"] - 1) // 64)
                | (expected["bbox_min_x"] // 64 != (expected["bbox_max_x"] - 1) // 64))
    assert crossing.sum() > 50
    assert_frames_equal(result.per_axon, expected)
    aggregate = aggregate_morphometrics(axon, myelin, 0.1, per_axon=expected)
    for key, value in aggregate.items():
        assert result.aggregate[key] == pytest.approx(value, nan_ok=True) if isinstance(value, float) else \
            result.aggregate[key] == value, key
    tiles = tile_morphometrics(axon, myelin, 0.1, tile_size_px=32, per_axon=expected)
    assert_frames_equal(result.tiles, tiles)
    np.testing.assert_array_equal(result.overview, label[:: result.overview_step, :: result.overview_step])


def test_small_halo_reports_cut_fibres(slide):
    label, _, _ = slide
    result = slide_morphometrics(label, 0.1, chunk_size=64, halo=4, progress=False)
    flagged = result.per_axon["note"].str.contains(NOTE_HALO)
    assert result.halo_exceeded == flagged.sum() > 10


def test_zarr_and_tiff_sources(slide, tmp_path):
    import tifffile
    import zarr

    label, axon, myelin = slide
    expected = axon_morphometrics(axon, myelin, 0.1)
    tiff = tmp_path / "slide.tif"
    tifffile.imwrite(tiff, label, tile=(64, 64), compression="zlib")
    store = zarr.open(str(tmp_path / "slide.zarr"), mode="w", shape=label.shape, chunks=(50, 50), dtype=label.dtype)
    store[:] = label
    ome = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    ome.attrs["multiscales"] = [{"datasets": [{"path": "0"}]}]
    level = ome.create_array("0", shape=(1, 1) + label.shape, chunks=(1, 1, 64, 64), dtype=label.dtype)
    level[:] = label[None, None]
    for source in (tiff, tmp_path / "slide.zarr", tmp_path / "ome.zarr"):
        result = slide_morphometrics(source, 0.1, chunk_size=128, halo=48, num_workers=2, progress=False)
        assert_frames_equal(result.per_axon.drop(columns="image"), expected.drop(columns="image"))


def test_bad_slide_arguments(slide, tmp_path):
    label, _, _ = slide
    with pytest.raises(ValueError, match="chunk size"):
        slide_morphometrics(label, 0.1, chunk_size=4)
    with pytest.raises(ValueError, match="halo"):
        slide_morphometrics(label, 0.1, halo=-1)
    with pytest.raises(ValueError, match="pixel size"):
        slide_morphometrics(label, 0)
    with pytest.raises(FileNotFoundError):
        slide_morphometrics(tmp_path / "missing.zarr", 0.1)


def test_cli_on_a_zarr_slide(slide, tmp_path):
    import zarr

    from nnunet_ext.cli import main

    label, axon, myelin = slide
    store = zarr.open(str(tmp_path / "slide.zarr"), mode="w", shape=label.shape, chunks=(64, 64), dtype=label.dtype)
    store[:] = label
    out = tmp_path / "out"
    assert main(["morphometrics", str(tmp_path / "slide.zarr"), "-o", str(out), "--pixel-size", "0.1",
                 "--chunk-size", "64", "--halo", "48", "--maps", "--tile-size", "64", "--workers", "2"]) == 0
    per_axon = pd.read_csv(out / "slide_axon_morphometrics.csv")
    expected = axon_morphometrics(axon, myelin, 0.1)
    np.testing.assert_allclose(per_axon["gratio"], expected["gratio"], rtol=1e-12)
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["halo_exceeded"] == 0 and aggregate["axon_count"] == len(expected)
    assert aggregate["avf"] == pytest.approx(axon.mean())
    assert (out / "slide_qc.png").is_file() and (out / "slide_map-avf.png").is_file()
    tiles = pd.read_csv(out / "slide_tiles.csv")
    assert tiles["axon_count"].sum() == len(expected)
