"""Whole-slide (chunked, Dask) morphometrics equal the in-memory ones; cut fibres are reported."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnunet_ext.morphometrics import aggregate_morphometrics, axon_morphometrics
from nnunet_ext.morphometrics.maps import tile_morphometrics
from nnunet_ext.morphometrics.slide_chunks import NOTE_HALO, slide_morphometrics
from test_morphometrics import synthetic_fibres


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


def _ellipse_roi(shape, factor=1):
    """An elliptic ROI at 1/factor of ``shape`` (ceil), and the same ROI at full resolution."""
    small_shape = (-(-shape[0] // factor), -(-shape[1] // factor))
    yy, xx = np.mgrid[:small_shape[0], :small_shape[1]]
    small = ((yy - 0.45 * small_shape[0]) / (0.4 * small_shape[0])) ** 2 + \
            ((xx - 0.55 * small_shape[1]) / (0.35 * small_shape[1])) ** 2 < 1
    full = np.repeat(np.repeat(small, factor, 0), factor, 1)[:shape[0], :shape[1]]
    return small, full


@pytest.mark.parametrize("factor", [1, 8])
def test_slide_roi_equals_in_memory(slide, tmp_path, factor):
    import zarr
    from PIL import Image

    label, axon, myelin = slide
    small, full = _ellipse_roi(label.shape, factor)
    assert 0.2 < full.mean() < 0.6
    expected = axon_morphometrics(axon, myelin, 0.1, image_name="slide")
    aggregate = aggregate_morphometrics(axon, myelin, 0.1, per_axon=expected, roi_mask=full)
    tiles = tile_morphometrics(axon, myelin, 0.1, tile_size_px=32, per_axon=expected, roi_mask=full)
    png = tmp_path / "roi.png"
    Image.fromarray(small.astype(np.uint8) * 255).save(png)
    store = zarr.open(str(tmp_path / "roi.zarr"), mode="w", shape=small.shape, chunks=(40, 40), dtype=np.uint8)
    store[:] = small
    for roi in (small, png, tmp_path / "roi.zarr"):
        result = slide_morphometrics(label, 0.1, chunk_size=64, halo=48, tile_size_px=32, image_name="slide",
                                     progress=False, roi=roi)
        assert_frames_equal(result.per_axon, expected)  # every axon is still measured
        rows = np.floor(expected["y0 (px)"]).astype(int), np.floor(expected["x0 (px)"]).astype(int)
        np.testing.assert_array_equal(result.in_roi, full[rows])
        assert 0 < result.in_roi.sum() < len(expected)
        assert result.aggregate.keys() == aggregate.keys()
        for key, value in aggregate.items():
            if isinstance(value, float):
                assert result.aggregate[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
            else:
                assert result.aggregate[key] == value, key
        assert_frames_equal(result.tiles, tiles)


def test_slide_roi_errors(slide, tmp_path):
    from nnunet_ext.morphometrics.slide_chunks import roi_factor

    label, _, _ = slide
    assert roi_factor((300, 340), (300, 340)) == 1 and roi_factor((38, 43), (300, 340)) == 8
    with pytest.raises(ValueError, match="downsampling"):
        slide_morphometrics(label, 0.1, chunk_size=64, roi=np.ones((100, 100), bool), progress=False)
    with pytest.raises(ValueError, match="binary"):
        slide_morphometrics(label, 0.1, chunk_size=64, roi=np.arange(300 * 340).reshape(300, 340) % 3,
                            progress=False)
    with pytest.raises(FileNotFoundError, match="ROI"):
        slide_morphometrics(label, 0.1, roi=tmp_path / "missing.png", progress=False)


def _ome_zarr(path, label, axes, scale, global_scale=None):
    import zarr

    group = zarr.open_group(str(path), mode="w")
    multiscale = {"name": "labels", "axes": axes,
                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}
    if global_scale is not None:
        multiscale["coordinateTransformations"] = [{"type": "scale", "scale": global_scale}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    level = group.create_array("0", shape=(1,) * (len(axes) - 2) + label.shape, chunks=(1,) * (len(axes) - 2) +
                               (128, 128), dtype=label.dtype)
    level[:] = label.reshape(level.shape)
    return path


def test_pixel_size_from_ome_zarr_metadata(slide, tmp_path):
    from nnunet_ext.io.pixel_size import find_pixel_size, pixel_size_from_ome_zarr

    label, _, _ = slide
    yx = [{"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    assert pixel_size_from_ome_zarr(_ome_zarr(tmp_path / "nm.zarr", label, yx, [50, 50])) == pytest.approx(0.05)
    czyx = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    path = _ome_zarr(tmp_path / "um.zarr", label, czyx, [1, 2.0, 0.25, 0.25], global_scale=[1, 1, 2, 2])
    assert find_pixel_size(path) == (pytest.approx(0.5), f"{path} (OME-Zarr metadata)")
    assert find_pixel_size(path, 0.1)[0] == 0.1  # the option wins
    mm = [dict(a, unit="millimeter") for a in yx]
    assert pixel_size_from_ome_zarr(_ome_zarr(tmp_path / "mm.zarr", label, mm, [1e-4, 1e-4])) == pytest.approx(0.1)
    # no unit: a scale is not a length; anisotropic pixels; unknown units; no metadata at all
    no_unit = _ome_zarr(tmp_path / "no_unit.zarr", label, [{"name": "y"}, {"name": "x"}], [1.0, 1.0])
    with pytest.raises(ValueError, match="no unit"):
        pixel_size_from_ome_zarr(no_unit)
    with pytest.raises(ValueError, match="pixel size unknown: OME-Zarr axis 'y' has a scale"):
        find_pixel_size(no_unit)
    (tmp_path / "pixel_size_in_micrometer.txt").write_text("0.2")  # a file beside it still serves
    assert find_pixel_size(no_unit)[0] == 0.2
    (tmp_path / "pixel_size_in_micrometer.txt").unlink()
    with pytest.raises(ValueError, match="anisotropic"):
        pixel_size_from_ome_zarr(_ome_zarr(tmp_path / "aniso.zarr", label, yx, [50, 60]))
    with pytest.raises(ValueError, match="unit 'parsecs'"):
        pixel_size_from_ome_zarr(_ome_zarr(tmp_path / "odd.zarr", label, [dict(a, unit="parsecs") for a in yx],
                                           [1, 1]))
    import zarr

    plain = zarr.open(str(tmp_path / "plain.zarr"), mode="w", shape=label.shape, chunks=(64, 64), dtype=label.dtype)
    plain[:] = label
    assert pixel_size_from_ome_zarr(tmp_path / "plain.zarr") is None
    with pytest.raises(ValueError, match="OME-Zarr metadata gives no scale; give --pixel-size"):
        find_pixel_size(tmp_path / "plain.zarr")


def test_run_slide_names_and_pixel_size_from_metadata(slide, tmp_path):
    import zarr

    from nnunet_ext.cli import main

    label, axon, myelin = slide
    yx = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    path = _ome_zarr(tmp_path / "big_seg.zarr", label, yx, [0.1, 0.1])
    zarr.open_group(str(path), mode="r+").attrs["nnunet_ext"] = {"source": "/data/sub-01_sample-A.ome.tif"}
    out = tmp_path / "out"
    assert main(["morphometrics", str(path), "-o", str(out), "--chunk-size", "128", "--halo", "48", "--no-qc"]) == 0
    per_axon = pd.read_csv(out / "sub-01_sample-A_axon_morphometrics.csv")
    assert (per_axon["image"] == "sub-01_sample-A").all() and len(per_axon) == len(axon_morphometrics(axon, myelin,
                                                                                                         0.1))
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["pixel_size_um"] == 0.1 and "OME-Zarr metadata" in aggregate["pixel_size_source"]
    assert aggregate["image"] == "sub-01_sample-A"
    small, full = _ellipse_roi(label.shape, 4)
    roi = tmp_path / "roi.zarr"
    store = zarr.open(str(roi), mode="w", shape=small.shape, chunks=(32, 32), dtype=bool)
    store[:] = small
    assert main(["morphometrics", str(path), "-o", str(tmp_path / "named"), "--chunk-size", "128", "--halo", "48",
                 "--no-qc", "--image-name", "slide A", "--roi", str(roi)]) == 0
    aggregate = pd.read_csv(tmp_path / "named" / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["image"] == "slide A" and aggregate["roi"] == str(roi)
    expected = aggregate_morphometrics(axon, myelin, 0.1, roi_mask=full)
    assert aggregate["axon_count"] == expected["axon_count"]
    assert aggregate["avf"] == pytest.approx(expected["avf"], rel=1e-12)
    assert aggregate["gratio_aggregate"] == pytest.approx(expected["gratio_aggregate"], rel=1e-12)


def test_slide_image_name(tmp_path):
    import zarr

    from nnunet_ext.morphometrics.measure_files import slide_image_name

    plain = zarr.open_group(str(tmp_path / "large_seg.zarr"), mode="w")
    assert slide_image_name(tmp_path / "large_seg.zarr") == "large_seg"  # not written by nnunet-ext segment
    plain.attrs["nnunet_ext"] = {"source": "array"}
    assert slide_image_name(tmp_path / "large_seg.zarr") == "large"
    plain.attrs["nnunet_ext"] = {"source": "/data/sub-01_sample-B.ome.tiff"}
    assert slide_image_name(tmp_path / "large_seg.zarr") == "sub-01_sample-B"
    assert slide_image_name(tmp_path / "slide.tif") == "slide"


@pytest.mark.parametrize("roi_kind", [None, "png", "array"])
def test_run_slide_filters_equal_in_memory(slide, tmp_path, roi_kind):
    """Filtered slide aggregates (every key, ADS estimates and note included) equal the in-memory ones."""
    import zarr
    from PIL import Image

    from nnunet_ext.morphometrics.aggregate_metrics import AGGREGATE_KEYS
    from nnunet_ext.morphometrics.measure_files import apply_filters, run_slide

    label, axon, myelin = slide
    path = tmp_path / "slide.zarr"
    zarr.open(str(path), mode="w", shape=label.shape, chunks=(64, 64), dtype=label.dtype)[:] = label
    small, full = _ellipse_roi(label.shape, 4)
    roi = {None: None, "array": small}.get(roi_kind, tmp_path / "roi.png")
    if roi_kind == "png":
        Image.fromarray(small.astype(np.uint8) * 255).save(roi)
    filters = {"min_axon_area_um2": 1.0, "drop_border": True}
    per_axon = axon_morphometrics(axon, myelin, 0.1, image_name="slide")
    kept = apply_filters(per_axon, **filters)
    assert 0 < len(kept) < len(per_axon)
    roi_mask = None if roi is None else full
    expected = aggregate_morphometrics(axon, myelin, 0.1, per_axon=kept, roi_mask=roi_mask)
    unfiltered = aggregate_morphometrics(axon, myelin, 0.1, per_axon=per_axon, roi_mask=roi_mask)
    # the test means something: the filters move the ADS estimates the slide path used to leave unfiltered
    assert expected["mean_myelin_diam_est (um)"] != pytest.approx(unfiltered["mean_myelin_diam_est (um)"])
    summary = run_slide(path, tmp_path / "out", 0.1, chunk_size=64, halo=48, qc=False, roi=roi, **filters)
    ours = summary["aggregates"][0]
    written = pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv", keep_default_na=False).iloc[0]
    for key in AGGREGATE_KEYS:
        value = expected[key]
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
            assert float(written[key]) == pytest.approx(value, rel=1e-9, nan_ok=True), key
        else:
            assert ours[key] == value, key
    assert ours["roi"] == {None: "", "array": "array"}.get(roi_kind, str(roi))
    assert ours["axons_filtered_out"] == len(per_axon) - len(kept)


def test_slide_roi_errors_name_the_file(slide, tmp_path):
    from PIL import Image

    label, _, _ = slide
    import tifffile

    three_values = tmp_path / "three_values.tif"  # read by chunk: each chunk must be binary
    tifffile.imwrite(three_values, (np.arange(300 * 340).reshape(300, 340) % 3).astype(np.uint8))
    with pytest.raises(ValueError, match="binary") as error:
        slide_morphometrics(label, 0.1, chunk_size=64, roi=three_values, progress=False)
    assert str(three_values) in str(error.value)
    # a PNG is read whole, as the image path reads it: nonzero inside, soft edges with a warning naming the file
    soft = tmp_path / "soft.png"
    Image.fromarray(np.where(np.arange(300 * 340).reshape(300, 340) % 7 == 0, 128, 255).astype(np.uint8)).save(soft)
    with pytest.warns(UserWarning, match="soft.png: ROI mask: 14572 pixel"):
        result = slide_morphometrics(label, 0.1, chunk_size=64, roi=soft, progress=False)
    assert result.in_roi.all()
    wrong_shape = tmp_path / "wrong_shape.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(wrong_shape)
    with pytest.raises(ValueError, match="downsampling") as error:
        slide_morphometrics(label, 0.1, chunk_size=64, roi=wrong_shape, progress=False)
    assert str(wrong_shape) in str(error.value)
