"""Fibre detection metrics: parity with stardist's matching, the fibre assignment, speed, folders and the CLI."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from nnunet_ext.evaluation import fibre_detection as fd

ADS_DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "ads_demo"
FIELDS = ["fp", "tp", "fn", "precision", "recall", "accuracy", "f1", "n_true", "n_pred", "mean_true_score",
          "mean_matched_score", "panoptic_quality"]


def stardist_matching():
    return pytest.importorskip("stardist.matching", reason="stardist (test extra) compares our matching")


def assert_same(ours: fd.Matching, theirs) -> None:
    theirs = theirs._asdict()
    for key in FIELDS:
        assert ours.as_dict()[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key
    if "matched_pairs" in theirs and ours.thresh > 0:  # stardist lists every assigned pair; ours the TPs
        tps = set(theirs["matched_tps"])
        expected = sorted(pair for i, pair in enumerate(theirs["matched_pairs"]) if i in tps)
        assert sorted(map(tuple, ours.matched_pairs.tolist())) == expected


def disks(shape, centres, radii) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, ((y, x), r) in enumerate(zip(centres, radii), start=1):
        r0, r1 = max(0, int(y - r) - 1), min(shape[0], int(y + r) + 2)
        c0, c1 = max(0, int(x - r) - 1), min(shape[1], int(x + r) + 2)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        window = labels[r0:r1, c0:c1]
        window[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = i
    return labels


def random_instances(shape, n, seed, max_radius=9) -> np.ndarray:
    """Touching blobs: a Voronoi partition of random seeds, cut to disks around them."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    points = rng.integers(0, shape, size=(n, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, n + 1)
    distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[iy, ix]
    labels[distance > rng.integers(3, max_radius, size=n + 1)[labels]] = 0
    return labels


# ------------------------------------------------------------------------------------------------------- hand-made


def test_shifted_square_matches_stardist_docstring_example():
    sd = stardist_matching()
    y_true = np.zeros((100, 100), np.uint16)
    y_true[10:20, 10:20] = 1
    y_pred = np.roll(y_true, 5, axis=0)
    ours = fd.match_instances(y_true, y_pred)
    assert (ours.tp, ours.fp, ours.fn) == (0, 1, 1)  # IoU 1/3
    assert_same(ours, sd.matching(y_true, y_pred))
    low = fd.match_instances(y_true, y_pred, thresh=0.3)
    assert low.tp == 1 and low.mean_matched_score == pytest.approx(1 / 3, rel=1e-6)
    assert_same(low, sd.matching(y_true, y_pred, thresh=0.3))


@pytest.mark.parametrize("thresh", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_splits_merges_and_ties_match_stardist(thresh):
    sd = stardist_matching()
    y_true = np.zeros((40, 60), np.int32)
    y_true[5:15, 5:25] = 1          # split into two predictions
    y_true[20:30, 5:15] = 2         # merged with 3 in one prediction
    y_true[20:30, 15:25] = 3
    y_true[5:9, 40:44] = 4          # two predictions of equal overlap (a tie)
    y_true[30:35, 40:45] = 9        # non-sequential label, missed
    y_pred = np.zeros_like(y_true)
    y_pred[5:15, 5:15] = 10
    y_pred[5:15, 15:25] = 11
    y_pred[20:30, 5:25] = 7
    y_pred[5:9, 40:42] = 3
    y_pred[5:9, 42:44] = 4
    y_pred[12:18, 50:58] = 5        # false positive
    assert_same(fd.match_instances(y_true, y_pred, thresh), sd.matching(y_true, y_pred, thresh,
                                                                          report_matches=True))


@pytest.mark.parametrize("criterion", fd.CRITERIA)
def test_criteria_match_stardist(criterion):
    sd = stardist_matching()
    y_true = random_instances((120, 140), 40, seed=1)
    y_pred = np.roll(random_instances((120, 140), 40, seed=1), (2, -1), axis=(0, 1))
    for thresh in (0.2, 0.5, 0.8):
        assert_same(fd.match_instances(y_true, y_pred, thresh, criterion),
                    sd.matching(y_true, y_pred, thresh, criterion=criterion, report_matches=True))


@pytest.mark.parametrize("seed", range(6))
def test_random_touching_instances_match_stardist_at_every_threshold(seed):
    """Low thresholds make groups of several overlapping instances: the per-group assignment must equal
    stardist's dense one."""
    sd = stardist_matching()
    y_true = random_instances((150, 150), 60, seed)
    y_pred = random_instances((150, 150), 70, seed + 100)
    thresholds = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
    ours = fd.match_sweep(y_true, y_pred, thresholds)
    theirs = sd.matching(y_true, y_pred, thresholds, report_matches=True)
    for a, b in zip(ours, theirs):
        assert_same(a, b)


def test_empty_images():
    sd = stardist_matching()
    empty = np.zeros((20, 20), np.int32)
    one = empty.copy()
    one[2:6, 2:6] = 3
    for y_true, y_pred in ((empty, empty), (one, empty), (empty, one)):
        ours = fd.match_instances(y_true, y_pred)
        assert_same(ours, sd.matching(y_true, y_pred))
        assert ours.f1 == 0 and ours.tp == 0
    assert fd.match_instances(one > 0, one).tp == 1  # a bool mask is one instance


def test_bad_inputs_are_refused():
    labels = np.zeros((5, 5), np.int32)
    with pytest.raises(ValueError, match="different shapes"):
        fd.match_instances(labels, np.zeros((5, 6), np.int32))
    with pytest.raises(ValueError, match="integer label image"):
        fd.match_instances(labels.astype(float), labels)
    with pytest.raises(ValueError, match="non-negative"):
        fd.match_instances(labels - 1, labels)
    with pytest.raises(ValueError, match="between 0 and 1"):
        fd.match_instances(labels, labels, thresh=1.5)
    with pytest.raises(ValueError, match="criterion"):
        fd.match_instances(labels, labels, criterion="dice")


def test_huge_label_values_are_relabelled():
    sd = stardist_matching()
    y_true = random_instances((60, 60), 15, seed=3).astype(np.int64)
    y_pred = np.roll(y_true, 1, axis=1)
    theirs = sd.matching(y_true, y_pred, 0.5)  # stardist allocates max label + 1 entries: compare before the shift
    y_true[y_true > 0] += 10**12
    ours = fd.match_instances(y_true, y_pred, 0.5)
    assert_same(ours, theirs)
    assert ours.matched_pairs[:, 0].min() > 10**12


# -------------------------------------------------------------------------------------------- dataset aggregation


def test_aggregation_is_astih_and_pooled_is_stardist_matching_dataset():
    sd = stardist_matching()
    pairs = [(random_instances((80, 90), 25, s), random_instances((80, 90), 25, s + 50)) for s in range(3)]
    pairs.append((pairs[0][0], np.roll(pairs[0][0], 1, axis=0)))
    thresholds = [0.1, 0.3, 0.5]
    per_image = []
    for i, (t, p) in enumerate(pairs):
        per_image.append(fd.detection_table(fd.match_sweep(t, p, thresholds), f"img{i}"))
    import pandas as pd

    table = pd.concat(per_image, ignore_index=True)
    dataset = fd.aggregate_detection(table)
    assert list(dataset["thresh"]) == thresholds
    by_image = sd.matching_dataset([t for t, _ in pairs], [p for _, p in pairs], thresholds, by_image=True,
                                   show_progress=False)
    pooled = sd.matching_dataset([t for t, _ in pairs], [p for _, p in pairs], thresholds, by_image=False,
                                 show_progress=False)
    for row, mean_stats, pooled_stats in zip(dataset.to_dict("records"), by_image, pooled):
        for key in ("tp", "fp", "fn", "n_true", "n_pred"):
            assert row[key] == getattr(pooled_stats, key)  # sums
        for key in fd.RATE_COLUMNS:
            assert row[key] == pytest.approx(getattr(mean_stats, key), rel=1e-6)  # ASTIH: averaged rates
            assert row[f"{key}_pooled"] == pytest.approx(getattr(pooled_stats, key), rel=1e-6)
        assert row["n_images"] == 4


# ---------------------------------------------------------------------------------------------------- real masks


def demo_masks():
    if not ADS_DEMO.is_dir():
        pytest.skip("../shared/data/ads_demo not available")
    from nnunet_ext.io.images import read_image_2d

    return read_image_2d(ADS_DEMO / "image_seg-axon.png") > 0, read_image_2d(ADS_DEMO / "image_seg-myelin.png") > 0


def test_fibre_instances_are_the_morphometrics_fibres():
    from nnunet_ext.morphometrics import axon_morphometrics

    axon, myelin = demo_masks()
    fibres = fd.fibre_instances(axon, myelin)
    table = axon_morphometrics(axon, myelin, 0.07)
    assert fibres.max() == len(table) == 298
    areas = np.bincount(fibres.ravel(), minlength=len(table) + 1)[1:] * 0.07**2
    np.testing.assert_allclose(areas, table["axonmyelin_area (um^2)"].to_numpy(), rtol=1e-12)
    # every axon pixel belongs to its own fibre
    axon_labels, _ = ndi.label(axon, structure=np.ones((3, 3)))
    assert np.array_equal(fibres[axon], axon_labels[axon])


def perturbed_copies(axon, myelin):
    """The ads_demo masks eroded, shifted, with fibres deleted and fibres added."""
    rng = np.random.default_rng(7)
    eroded_axon = ndi.binary_erosion(axon, iterations=2)
    yield "eroded", eroded_axon, myelin | (axon & ~eroded_axon)
    yield "shifted", np.roll(axon, (3, -2), axis=(0, 1)), np.roll(myelin, (3, -2), axis=(0, 1))
    fibres = fd.fibre_instances(axon, myelin)
    deleted = np.isin(fibres, rng.choice(np.arange(1, fibres.max() + 1), 40, replace=False))
    yield "deleted", axon & ~deleted, myelin & ~deleted
    added_axon, added_myelin = axon.copy(), myelin.copy()
    free = ndi.binary_erosion(~(axon | myelin), iterations=6)
    for y, x in np.argwhere(free)[rng.choice(np.count_nonzero(free), 30, replace=False)]:
        yy, xx = np.ogrid[-5:6, -5:6]
        ring = (yy**2 + xx**2 <= 25)
        core = (yy**2 + xx**2 <= 6)
        window = (slice(y - 5, y + 6), slice(x - 5, x + 6))
        added_myelin[window] |= ring & ~core
        added_axon[window] |= core
    added_myelin &= ~added_axon
    yield "added", added_axon, added_myelin
    mixed_axon = np.roll(eroded_axon & ~deleted, 1, axis=1)
    yield "all", mixed_axon, np.roll((myelin | (axon & ~eroded_axon)) & ~deleted, 1, axis=1) & ~mixed_axon


def test_real_masks_perturbed_match_stardist():
    sd = stardist_matching()
    axon, myelin = demo_masks()
    reference = fd.fibre_instances(axon, myelin)
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    seen = {}
    for name, p_axon, p_myelin in perturbed_copies(axon, myelin):
        prediction = fd.fibre_instances(p_axon, p_myelin)
        ours = fd.match_sweep(reference, prediction, thresholds)
        theirs = sd.matching(reference, prediction, thresholds, report_matches=True)
        for a, b in zip(ours, theirs):
            assert_same(a, b)
        seen[name] = ours[2]
    assert seen["deleted"].fn == 40 and seen["deleted"].fp == 0
    assert seen["added"].fp == 30 and seen["added"].fn == 0
    assert seen["eroded"].tp > 250


def test_linear_time_on_a_large_image():
    """2000 x 2000 pixels with 2,500 fibres: well under 0.5 s of CPU for the matching (issue 13)."""
    side, n = 2000, 2500
    grid = int(np.sqrt(n))
    step = side // grid
    centres = [(step // 2 + i * step, step // 2 + j * step) for i in range(grid) for j in range(grid)]
    rng = np.random.default_rng(0)
    radii = rng.uniform(step * 0.3, step * 0.55, len(centres))
    y_true = disks((side, side), centres, radii)
    y_pred = disks((side, side), [(y + 2, x - 1) for y, x in centres], radii * 0.95)
    assert y_true.max() == n
    fd.match_instances(y_true, y_pred)  # warm-up (imports)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    result = fd.match_instances(y_true, y_pred)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    print(f"match_instances 2000x2000, {n} fibres: {cpu:.3f} s CPU, {wall:.3f} s wall")
    assert result.tp == n
    assert cpu < 0.5


# ------------------------------------------------------------------------------------------------ folders and CLI


def _astih_folder(tmp_path: Path):
    from PIL import Image

    axon, myelin = demo_masks()
    folder = tmp_path / "astih"
    folder.mkdir()
    (folder / "demo.json").write_text(json.dumps({"PixelSize": [0.07, 0.07], "PixelSizeUnits": "um"}))
    Image.open(ADS_DEMO / "image.png").save(folder / "demo.png")
    Image.open(ADS_DEMO / "image_seg-axonmyelin.png").save(folder / "demo_seg-axonmyelin-manual.png")
    name, p_axon, p_myelin = next(perturbed_copies(axon, myelin))
    Image.fromarray(p_axon.astype(np.uint8) * 255).save(folder / "demo_seg-axon.png")
    Image.fromarray(p_myelin.astype(np.uint8) * 255).save(folder / "demo_seg-myelin.png")
    return folder, (axon, myelin), (p_axon, p_myelin)


def test_astih_folder_cli_writes_detection_sweep_and_agreement(tmp_path):
    sd = stardist_matching()
    from nnunet_ext.cli import main

    folder, (axon, myelin), (p_axon, p_myelin) = _astih_folder(tmp_path)
    out = tmp_path / "eval" / "scores.csv"
    assert main(["evaluate", str(folder), str(folder), "--fibres", "--morphometrics", "-o", str(out),
                 "--iou-thresholds", "0.3", "...", "0.95"]) == 0
    import pandas as pd

    detection = pd.read_csv(tmp_path / "eval" / "scores_fibres.csv")
    assert sorted(detection["thresh"].round(2).unique()) == [round(0.3 + 0.05 * i, 2) for i in range(14)]
    row = detection[np.isclose(detection["thresh"], 0.5)].iloc[0]
    theirs = sd.matching(fd.fibre_instances(axon, myelin), fd.fibre_instances(p_axon, p_myelin), 0.5)
    assert (row["tp"], row["fp"], row["fn"]) == (theirs.tp, theirs.fp, theirs.fn)
    assert row["f1"] == pytest.approx(theirs.f1)
    assert row["dice_axon"] < 1 and row["dice_myelin"] < 1
    for suffix in ("_fibres_dataset.csv", "_fibres_sweep.png", "_agreement_fibres.csv", "_agreement_statistics.csv",
                   "_agreement_images.csv", "_agreement_subjects.csv", "_bland_altman.png", "_scatter.png"):
        assert (tmp_path / "eval" / f"scores{suffix}").stat().st_size > 0, suffix
    images = pd.read_csv(tmp_path / "eval" / "scores_agreement_images.csv")
    assert images.loc[0, "axon_count_ref"] == 298 and images.loc[0, "pixel_size_um"] == 0.07
    # refuses to overwrite without --overwrite
    assert main(["evaluate", str(folder), str(folder), "--fibres", "-o", str(out)]) == 1  # error printed


def test_bids_and_nnunet_layouts(tmp_path):
    from PIL import Image

    from nnunet_ext.evaluation import fibre_folders as ff

    axon, myelin = demo_masks()
    # a BIDS dataset as reference, segment's BIDS output (sub-*/micr/) as prediction
    bids = tmp_path / "bids"
    micr = bids / "sub-01" / "micr"
    labels = bids / "derivatives" / "labels" / "sub-01" / "micr"
    micr.mkdir(parents=True)
    labels.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    Image.open(ADS_DEMO / "image.png").save(micr / "sub-01_sample-a_SEM.png")
    (micr / "sub-01_sample-a_SEM.json").write_text(json.dumps({"PixelSize": [0.07, 0.07], "PixelSizeUnits": "um"}))
    Image.open(ADS_DEMO / "image_seg-axonmyelin.png").save(labels / "sub-01_sample-a_SEM_seg-axonmyelin-manual.png")
    predictions = tmp_path / "pred" / "sub-01" / "micr"
    predictions.mkdir(parents=True)
    Image.fromarray(axon.astype(np.uint8) * 255).save(predictions / "sub-01_sample-a_SEM_seg-axon.png")
    Image.fromarray(myelin.astype(np.uint8) * 255).save(predictions / "sub-01_sample-a_SEM_seg-myelin.png")
    cases = ff.discover_fibre_cases(tmp_path / "pred", bids)
    assert len(cases) == 1 and cases[0].subject == "sub-01" and cases[0].pixel_size_um == 0.07
    result = ff.evaluate_fibre_cases(cases, morphometrics=True, progress=False)
    assert result.dataset.loc[0, "f1"] == 1.0 and result.dataset.loc[0, "dice_axon"] == 1.0
    stats = result.statistics[result.statistics["subject"] == "all"].set_index("metric")
    assert stats.loc["gratio", "bias"] == 0 and stats.loc["axon_diam", "icc_2_1"] == pytest.approx(1.0)

    # nnU-Net label folders (0 background, 1 myelin, 2 axon) with the conversion's manifest
    raw = tmp_path / "raw"
    (raw / "labelsTs").mkdir(parents=True)
    label = (myelin * 1 + axon * 2).astype(np.uint8)
    Image.fromarray(label).save(raw / "labelsTs" / "X_000.png")
    (raw / "manifest.csv").write_text("case_id,split,subject,pixel_size_um\nX_000,test,sub-01,0.07\n")
    (tmp_path / "nnpred").mkdir()
    shifted = np.roll(label, 2, axis=0)
    Image.fromarray(shifted).save(tmp_path / "nnpred" / "X_000.png")
    cases = ff.discover_fibre_cases(tmp_path / "nnpred", raw / "labelsTs")
    assert cases[0].reference_kind == "labels" and cases[0].pixel_size_um == 0.07
    result = ff.evaluate_fibre_cases(cases, morphometrics=True, progress=False)
    assert 0.9 < result.dataset.loc[0, "f1"] < 1.0

    # a reference without its prediction is named
    (raw / "labelsTs" / "X_001.png").write_bytes((raw / "labelsTs" / "X_000.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="X_001"):
        ff.discover_fibre_cases(tmp_path / "nnpred", raw / "labelsTs")
    assert len(ff.discover_fibre_cases(tmp_path / "nnpred", raw / "labelsTs", allow_missing=True)) == 1


def test_iou_threshold_arguments():
    from nnunet_ext.evaluation.cli import iou_thresholds

    sweep = [round(0.3 + 0.05 * i, 2) for i in range(14)]
    assert iou_thresholds(["0.3", "...", "0.95"], False) == pytest.approx(sweep)
    assert iou_thresholds(["0.3", "0.95", "0.05"], True) == pytest.approx(sweep)
    assert iou_thresholds(["0.5", "0.6", "...", "0.9"], False) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert iou_thresholds(["0.5", "0.75"], False) == [0.5, 0.75]
    for bad in (["0.3", "..."], ["x"], ["0.9", "0.3", "0.1"]):
        with pytest.raises(ValueError, match="iou"):
            iou_thresholds(bad, bad[0] == "0.9")
