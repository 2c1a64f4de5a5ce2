"""segment writes AxonDeepSeg 5.5's <stem>_seg-uaxon.png when the model has an 'unmyelinated axon' class."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from nnunet_ext.segmentation import segment_files


def _segment(tmp_path, monkeypatch, labels_map):
    labels = np.array([[0, 1, 2, 3], [3, 3, 0, 2]], np.uint8)
    Image.fromarray(np.full((2, 4), 50, np.uint8)).save(tmp_path / "img.png")
    monkeypatch.setattr(segment_files, "predict_image", lambda predictor, image, return_probabilities: labels)
    item = SimpleNamespace(path=tmp_path / "img.png", name="img", pixel_size_um=0.1)
    out = tmp_path / "out"
    out.mkdir()
    record = segment_files._segment_image_input(item, out, None, labels_map,
                                                segment_files.axon_myelin_values(labels_map), False)
    return out, record


def test_uaxon_mask_written_for_a_four_class_model(tmp_path, monkeypatch):
    out, record = _segment(tmp_path, monkeypatch, {"background": 0, "myelin": 1, "axon": 2,
                                                   "unmyelinated axon": 3})
    uaxon = np.array(Image.open(out / "img_seg-uaxon.png"))
    np.testing.assert_array_equal(uaxon, [[0, 0, 0, 255], [255, 255, 0, 0]])
    np.testing.assert_array_equal(np.array(Image.open(out / "img_seg-axon.png")), [[0, 0, 255, 0], [0, 0, 0, 255]])
    assert record.fractions["unmyelinated axon"] == 3 / 8
    # the pixel size beside the masks, so that 'morphometrics' on this folder needs no --pixel-size
    from nnunet_ext.io.pixel_size import find_pixel_size

    assert find_pixel_size(out / "img.png")[0] == 0.1


def test_no_uaxon_mask_for_a_three_class_model(tmp_path, monkeypatch):
    out, _ = _segment(tmp_path, monkeypatch, {"background": 0, "myelin": 1, "axon": 2})
    assert not (out / "img_seg-uaxon.png").exists() and (out / "img_seg-axon.png").exists()


def test_slide_of_a_four_class_model_gives_uaxon_overview_and_morphometrics(tmp_path, monkeypatch):
    """A slide keeps every class in its label Zarr; segment writes the unmyelinated axons' overview beside the
    axonmyelin one, and --morphometrics measures them chunk by chunk (4-connected, as ADS)."""
    import pandas as pd
    import zarr

    labels = np.zeros((120, 150), np.uint8)
    yy, xx = np.mgrid[:120, :150]
    labels[np.hypot(yy - 30, xx - 30) < 12] = 1
    labels[np.hypot(yy - 30, xx - 30) < 7] = 2
    labels[60:70, 90:100] = 3  # two unmyelinated axons, one across the 64-px chunk border
    labels[100:104, 10:14] = 3

    def fake_segment_slide(source, output, spec, **kwargs):
        group = zarr.open_group(str(output), mode="w")
        group.create_array("labels", data=labels, chunks=(64, 64))
        group.attrs["nnunet_ext"] = {"source": str(source)}  # as segment_slide records it
        return SimpleNamespace(shape=labels.shape, blocks=4, blocks_skipped=0)

    monkeypatch.setattr(segment_files, "segment_slide", fake_segment_slide)
    labels_map = {"background": 0, "myelin": 1, "axon": 2, "unmyelinated axon": 3}
    item = segment_files.SegmentationInput(tmp_path / "img.tif", "img", segment_files.Path("."), True, 0.1)
    out = tmp_path / "out"
    out.mkdir()
    record = segment_files._segment_slide_input(item, out, None, labels_map,
                                                segment_files.axon_myelin_values(labels_map), False, False, 64,
                                                None, 1, False)
    overview = np.array(Image.open(out / "img_seg-uaxon-overview.png"))
    np.testing.assert_array_equal(overview, (labels == 3) * 255)
    assert out / "img_seg-uaxon-overview.png" in record.outputs
    segment_files._run_morphometrics([item], out, segment_files.axon_myelin_values(labels_map), "circle", False,
                                     None, 1, uaxon_label=3)
    folder = out / segment_files.MORPHOMETRICS_FOLDER / "img"
    uaxon = pd.read_csv(folder / "img_uaxon_morphometrics.csv")
    np.testing.assert_allclose(uaxon["axon_area (um^2)"], [100 * 0.1 ** 2, 16 * 0.1 ** 2], rtol=1e-12)
    aggregate = pd.read_csv(folder / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["uaxon_count"] == 2 and aggregate["myelinated_fraction"] == 1 / 3
