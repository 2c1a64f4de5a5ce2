"""Whole-slide segmentation: block-wise prediction equals nnU-Net's one-piece prediction, on local threads and on a
``LocalCluster`` of two workers; killed runs resume and skip finished blocks; outputs carry their metadata.

Model tests reuse the session's ``smoke_trained_model`` (nnU-Net's stock ``nnUNetv2_train``, 48x48 patches) and run
torch on one thread: on a shared two-core machine that is several times faster than two.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.phantoms.generator import generate_phantom
from nnunet_ext.io.slides import SlideSource, block_grid, read_labels
from nnunet_ext.segmentation import slide_prediction
from nnunet_ext.segmentation.predictor import ModelSpec, borrowed_predictor, cached_predictor, predict_image
from nnunet_ext.segmentation.slide_normalisation import block_statistics, combine_statistics
from nnunet_ext.segmentation.slide_prediction import PARTIAL_SUFFIX, segment_slide
from nnunet_ext.segmentation.slide_tiling import axis_tiles, axis_window


# ------------------------------------------------------------------------------------------- without a model
@pytest.mark.parametrize("extent,patch,step,block", [(300, 48, 0.5, 64), (1000, 128, 0.5, 256), (47, 48, 0.5, 64),
                                                      (500, 64, 0.25, 100), (129, 128, 1.0, 64)])
def test_block_windows_carry_every_tile_of_their_core(extent, patch, step, block):
    """Each block runs exactly the global tiles touching its core, and reads at least half a patch beyond it."""
    tiles = axis_tiles(extent, patch, step)
    offset = 7  # the nonzero box starts inside the slide
    for start in range(offset, offset + extent, block):
        core = (start, min(start + block, offset + extent))
        (w0, w1), starts, (i0, i1) = axis_window(core, (offset, offset + extent), tiles, patch)
        global_starts = [w0 - offset + s for s in starts]
        local_core = (core[0] - offset, core[1] - offset)
        if extent <= patch:
            assert global_starts == [0] and (w0, w1) == (offset, offset + extent)
            continue
        assert global_starts == [s for s in tiles if s < local_core[1] and s + patch > local_core[0]]
        assert w1 - w0 == starts[-1] + patch and (i0, i1) == (core[0] - w0, core[1] - w0)
        # the margin is at least the tiles' overlap, patch * (1 - step) (half a patch at nnU-Net's default 0.5)
        if core[0] > offset:
            assert core[0] - w0 >= patch * (1 - step) - 1
        if core[1] < offset + extent:
            assert w1 - core[1] >= patch * (1 - step) - 1
    assert axis_window((0, 5), (offset, offset + extent), tiles, patch) is None


def test_statistics_from_blocks_equal_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 4000, (150, 170)).astype(np.uint16)
    image[:11] = 0
    image[:, 160:] = 0
    image[40, 3] = 0
    parts = [block_statistics(image, core) for core in block_grid(image.shape, 64)]
    statistics = combine_statistics(parts, image.shape)
    assert statistics.nonzero_box == [[11, 150], [0, 160]]
    cropped = image[11:150, :160].astype(np.float64)  # nnU-Net normalises the image cropped to that box
    assert statistics.pixels == cropped.size
    assert statistics.mean == pytest.approx(cropped.mean(), rel=1e-15)
    assert statistics.std == pytest.approx(cropped.std(), rel=1e-12)
    assert (statistics.minimum, statistics.maximum) == (0, image.max())
    image[40, 3] = 17
    statistics = combine_statistics([block_statistics(image, c) for c in block_grid(image.shape, 64)],
                                    image.shape)
    assert statistics.minimum == image[11:150, :160].min() > 0


def test_statistics_of_8_bit_and_all_zero_blocks():
    image = np.zeros((40, 50), np.uint8)
    image[30:, 20:] = 255
    image[35, 45] = 3
    empty, full = block_statistics(image, (0, 20, 0, 50)), block_statistics(image, (20, 40, 0, 50))
    assert empty == {"pixels": 1000, "zeros": 1000, "sum": 0, "squares": 0, "min_nonzero": None, "max": 0,
                     "box": None}
    values = image[20:40].astype(np.int64)
    assert full["sum"] == values.sum() and full["squares"] == (values ** 2).sum()
    assert (full["min_nonzero"], full["max"], full["box"]) == (3, 255, [30, 40, 20, 50])
    statistics = combine_statistics([empty, full], image.shape)
    assert statistics.nonzero_box == [[30, 40], [20, 50]] and statistics.minimum == 3
    assert statistics.mean == pytest.approx(image[30:, 20:].mean(), rel=1e-15)


def test_slide_sources_read_windows_like_the_whole_image(tmp_path):
    import tifffile
    import zarr

    from nnunet_ext.io.images import read_grey_image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(64, 64), photometric="rgb")
    grey = read_grey_image(tmp_path / "rgb.tif")
    window = (30, 170, 50, 250)
    source = SlideSource(tmp_path / "rgb.tif")
    assert source.shape == (200, 260)
    np.testing.assert_array_equal(source.read(*window), grey[30:170, 50:250])
    # OME-Zarr: (t, c, z, y, x) with singleton axes, full resolution found through the multiscales metadata
    group = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w")
    group.create_array("0", data=grey[None, None, None])
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": n} for n in "tczyx"],
                                                             "datasets": [{"path": "0"}]}]}
    source = SlideSource(tmp_path / "slide.ome.zarr")
    assert source.shape == (200, 260) and source.axes == "tczyx"
    np.testing.assert_array_equal(source.read(*window), grey[30:170, 50:250])
    with pytest.raises(ValueError, match="planes"):
        SlideSource(np.zeros((3, 2, 50, 50), np.uint8))
    with pytest.raises(FileNotFoundError, match="not found"):
        SlideSource(tmp_path / "missing.zarr")


# ----------------------------------------------------------------------------------------------- with a model
def phantom_slide(shape=(150, 230), seed=3) -> np.ndarray:
    """A phantom with blank (zero) margins that nnU-Net crops away and a blank band inside it."""
    image = generate_phantom(shape, contrast="TEM", seed=seed).image
    image[:13] = 0
    image[:, -21:] = 0
    image[70:80, 40:120] = image[70:80, 40:120].mean()  # featureless region inside the tissue
    return image


@pytest.fixture(scope="module")
def spec(smoke_trained_model) -> ModelSpec:
    return ModelSpec(str(Path(smoke_trained_model).parent), threads=1)


@pytest.fixture(scope="module")
def zscore_spec(smoke_trained_model, tmp_path_factory) -> ModelSpec:
    """The same network with z-score normalisation, which needs the whole slide's mean and standard deviation."""
    source = Path(smoke_trained_model).parent
    target = tmp_path_factory.mktemp("zscore") / source.name
    (target / "fold_0").mkdir(parents=True)
    shutil.copy(source / "dataset.json", target)
    shutil.copy(source / "fold_0" / "checkpoint_final.pth", target / "fold_0")
    plans = json.loads((source / "plans.json").read_text())
    plans["configurations"]["2d"]["normalization_schemes"] = ["ZScoreNormalization"]
    (target / "plans.json").write_text(json.dumps(plans))
    return ModelSpec(str(target), threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["spec", "zscore_spec"])
def test_blockwise_equals_one_piece_nnunet(which, request, tmp_path):
    spec = request.getfixturevalue(which)
    image = phantom_slide()
    predictor = cached_predictor(spec)
    expected, expected_probabilities = predict_image(predictor, image, return_probabilities=True)
    assert set(np.unique(expected)) == {0, 1, 2}  # the model predicts all classes: the comparison means something
    result = segment_slide(image, tmp_path / "slide_seg.zarr", spec, block_size=64, save_probabilities=True,
                           progress=False)
    assert result.blocks == 3 * 4 and result.blocks_skipped == 0
    labels = read_labels(tmp_path / "slide_seg.zarr")
    assert labels.chunks == (64, 64)
    np.testing.assert_array_equal(labels[:], expected)
    import zarr

    probabilities = zarr.open_group(str(tmp_path / "slide_seg.zarr"), mode="r")["probabilities"][:]
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-3)  # stored as float16


@pytest.mark.slow
def test_local_cluster_of_two_workers_equals_single_process(spec, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    image = phantom_slide(seed=5)
    single = segment_slide(image, tmp_path / "single_seg.zarr", spec, block_size=64, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with get_task_stream(client) as stream:
            distributed = segment_slide(image, tmp_path / "cluster_seg.zarr", spec, block_size=64,
                                        scheduler=client, progress=False)
    blocks_by_worker = {}
    for task in stream.data:
        if "predict_block" in str(task["key"]):
            blocks_by_worker[task["worker"]] = blocks_by_worker.get(task["worker"], 0) + 1
    assert len(blocks_by_worker) == 2 and sum(blocks_by_worker.values()) == 12  # both workers predicted blocks
    assert single.blocks == distributed.blocks == 12
    np.testing.assert_array_equal(read_labels(tmp_path / "cluster_seg.zarr")[:],
                                  read_labels(tmp_path / "single_seg.zarr")[:])


@pytest.mark.slow
def test_killed_run_resumes_and_skips_finished_blocks(spec, tmp_path, monkeypatch):
    import tifffile
    import zarr

    image = phantom_slide(seed=9)
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(64, 64))
    output = tmp_path / "slide_seg.zarr"
    predicted = []
    original = slide_prediction.predict_block

    def dies_after_five(spec, source, core, plan):
        if len(predicted) == 5:
            raise KeyboardInterrupt("killed")  # as a Ctrl-C or a dying process: no clean-up code runs after it
        predicted.append(core)
        return original(spec, source, core, plan)

    monkeypatch.setattr(slide_prediction, "predict_block", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(tmp_path / "slide.tif", output, spec, block_size=64, workers=1, progress=False)
    partial = tmp_path / ("slide_seg.zarr" + PARTIAL_SUFFIX)
    assert not output.exists() and partial.is_dir()  # never a half-written output under the final name
    with pytest.raises(FileNotFoundError):
        read_labels(output)

    first_run = list(predicted)
    predicted.clear()
    monkeypatch.setattr(slide_prediction, "predict_block", lambda *args: predicted.append(args[2]) or original(*args))
    with pytest.raises(ValueError, match="other settings.*block_size"):
        segment_slide(tmp_path / "slide.tif", output, spec, block_size=128, progress=False)
    result = segment_slide(tmp_path / "slide.tif", output, spec, block_size=64, progress=False)
    assert result.blocks_skipped == 5 and len(predicted) == 12 - 5
    assert not set(first_run) & set(predicted)  # finished blocks were not predicted again
    assert not partial.exists()
    np.testing.assert_array_equal(read_labels(output)[:], predict_image(cached_predictor(spec), image))
    metadata = zarr.open_group(str(output), mode="r").attrs["nnunet_ext"]
    assert metadata["complete"] and metadata["blocks_resumed"] == 5
    assert metadata["model"]["folds"] == ["0"] and metadata["model"]["checkpoint"] == "checkpoint_final.pth"
    assert metadata["model"]["trainer"] == "nnUNetTrainerCPUSmoke" and metadata["model"]["nnunet_ext_version"]
    assert metadata["model"]["model_folder"] == str(Path(spec.model_folder).resolve())
    with pytest.raises(FileExistsError, match="overwrite"):
        segment_slide(tmp_path / "slide.tif", output, spec, block_size=64, progress=False)


@pytest.mark.slow
def test_blocks_in_flight_on_the_cpu_predict_with_their_own_model_copies(spec):
    """Threads borrowing at once get their own predictors (so all cores predict); later borrowers reuse them. Copies
    loaded at the same time leave sys.stdout as it was (loading silences nnU-Net with redirect_stdout)."""
    import sys
    import threading

    stdout_before = sys.stdout
    in_flight = 4
    all_hold_one = threading.Barrier(in_flight)
    borrowed = []

    def task():
        with borrowed_predictor(spec) as predictor:
            borrowed.append(predictor)
            all_hold_one.wait(timeout=240)

    threads = [threading.Thread(target=task) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sys.stdout is stdout_before and not sys.stdout.closed
    assert len(borrowed) == in_flight and len({id(predictor) for predictor in borrowed}) == in_flight
    assert cached_predictor(spec) in borrowed  # the loaded model is one of them: three extra loads, not four
    with borrowed_predictor(spec) as again:
        assert any(again is predictor for predictor in borrowed)
