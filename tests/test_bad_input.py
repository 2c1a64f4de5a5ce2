"""Bad input never gives a silent wrong result or a traceback (issue 15).

Each test feeds one kind of bad input through the command line (``nnunet_ext.cli.main``) and checks the exit code,
that the message names the file and the problem, and what is left in the output folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from test_bids_microscopy import _axonmyelin as axonmyelin_phantom

SHAPE = (40, 48)


# ----------------------------------------------------------------------------------------------------- helpers
def _axonmyelin(shape=SHAPE, seed=0) -> np.ndarray:
    """A 0/127/255 AxonDeepSeg mask: a few axons (255) in myelin rings (127)."""
    return axonmyelin_phantom(shape, seed)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _bids(root: Path, mask: np.ndarray | None = None, sidecar=None, image: np.ndarray | None = None) -> dict:
    """A one-image BIDS microscopy dataset; returns the paths of its files."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bad", "BIDSVersion": "1.9.0"}))
    stem = "sub-x_sample-1_SEM"
    image = np.random.default_rng(0).integers(0, 255, SHAPE).astype(np.uint8) if image is None else image
    paths = {"image": _png(root / "sub-x" / "micr" / f"{stem}.png", image)}
    paths["sidecar"] = root / "sub-x" / "micr" / f"{stem}.json"
    paths["sidecar"].write_text(json.dumps({"PixelSize": [0.1, 0.1], "PixelSizeUnits": "um"}
                                           if sidecar is None else sidecar))
    paths["mask"] = _png(root / "derivatives" / "labels" / "sub-x" / "micr" / f"{stem}_seg-axonmyelin-manual.png",
                         _axonmyelin() if mask is None else mask)
    return paths


def _convert(root: Path, raw: Path, *extra) -> list[str]:
    return ["convert", "bids", str(root), "--raw", str(raw), "-d", "501", "-n", "Bad", *extra]


def _nothing_in(folder: Path) -> bool:
    """The folder is absent, or holds nothing (not even hidden staging folders)."""
    return not folder.exists() or list(folder.iterdir()) == []


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


# ------------------------------------------------------------------------ 1. convert bids: axonmyelin mask values
@pytest.mark.parametrize("values, found", [((0, 85, 170), "85"), ((0, 50, 200), "50")])
def test_convert_bids_refuses_masks_coded_otherwise(tmp_path, capsys, values, found):
    nominal = _axonmyelin()
    recoded = np.select([nominal == 127, nominal == 255], [values[1], values[2]], values[0]).astype(np.uint8)
    paths = _bids(tmp_path / "bids", recoded)
    raw = tmp_path / "raw"
    assert cli_main(_convert(tmp_path / "bids", raw)) == 1
    message = _error(capsys)
    assert str(paths["mask"]) in message and f"{found} (" in message and "far from" in message
    assert _nothing_in(raw)


def test_convert_bids_accepts_values_within_the_tolerance_and_few_strays(tmp_path, capsys):
    """Myelin at 128 (as ads_sem's sub-rat2) and a few anti-aliased pixels still convert, to the nearest class."""
    mask = _axonmyelin()
    mask[mask == 127] = 128
    mask[mask == 255] = 250
    mask[0, 0] = 200  # one anti-aliased stray pixel: nearest is 255 (axon)
    _bids(tmp_path / "bids", mask)
    raw = tmp_path / "raw"
    with pytest.warns(UserWarning, match="128 \\("):
        assert cli_main(_convert(tmp_path / "bids", raw)) == 0
    label = np.array(Image.open(raw / "Dataset501_Bad" / "labelsTr" / "Bad_000.png"))
    expected = np.select([_axonmyelin() == 255, _axonmyelin() == 127], [2, 1], 0)
    expected[0, 0] = 2
    np.testing.assert_array_equal(label, expected)


def test_convert_bids_refuses_separate_masks_with_a_third_value(tmp_path, capsys):
    root = tmp_path / "bids"
    paths = _bids(root)
    paths["mask"].unlink()
    labels = paths["mask"].parent
    axon = np.where(_axonmyelin() == 255, 255, 0).astype(np.uint8)
    myelin = np.where(_axonmyelin() == 127, 100, 0).astype(np.uint8)  # 0/100/255: the 100s would vanish
    myelin[_axonmyelin() == 255] = 255
    _png(labels / "sub-x_sample-1_SEM_seg-axon-manual.png", axon)
    bad = _png(labels / "sub-x_sample-1_SEM_seg-myelin-manual.png", myelin)
    assert cli_main(_convert(root, tmp_path / "raw")) == 1
    message = _error(capsys)
    assert str(bad) in message and "neither 0 nor 255" in message and "100 (" in message
    assert _nothing_in(tmp_path / "raw")


# ------------------------------------------------------------------------------ 3. evaluate: unknown label values
def _evaluation_folders(tmp_path: Path, prediction: np.ndarray, reference: np.ndarray) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    _png(pred / "case.png", prediction)
    _png(gt / "case.png", reference)
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "myelin": 1, "axon": 2},
                                                   "file_ending": ".png", "channel_names": {"0": "SEM"}}))
    return pred, gt


@pytest.mark.parametrize("which, values", [("prediction", {1: 1, 2: 7}), ("reference", {1: 127, 2: 255})])
def test_evaluate_refuses_values_absent_from_dataset_json(tmp_path, capsys, which, values):
    good = np.select([_axonmyelin() == 127, _axonmyelin() == 255], [1, 2], 0).astype(np.uint8)
    bad = np.select([good == 1, good == 2], [values[1], values[2]], 0).astype(np.uint8)
    pred, gt = _evaluation_folders(tmp_path, bad if which == "prediction" else good,
                                   bad if which == "reference" else good)
    assert cli_main(["evaluate", str(pred), str(gt), "--pixel-size", "0.1"]) == 1
    message = _error(capsys)
    bad_file = (pred if which == "prediction" else gt) / "case.png"
    assert str(bad_file) in message and "not labels of the dataset.json" in message
    assert str(sorted(v for v in values.values() if v not in (1, 2))) in message
    assert sorted(p.name for p in pred.iterdir()) == ["case.png", "dataset.json"]  # no CSV, no PNG
    if which == "reference":
        assert "AxonDeepSeg" in message


def test_evaluate_still_scores_good_folders(tmp_path, capsys):
    good = np.select([_axonmyelin() == 127, _axonmyelin() == 255], [1, 2], 0).astype(np.uint8)
    pred, gt = _evaluation_folders(tmp_path, good, good)
    assert cli_main(["evaluate", str(pred), str(gt), "--pixel-size", "0.1", "--no-plot"]) == 0
    assert (pred / "evaluation.csv").is_file()


# ------------------------------------------------------------- 4, 5. unreadable images and sidecars (convert bids)
def _truncated_png(path: Path, array: np.ndarray) -> Path:
    _png(path, array)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, shape).astype(np.uint8)


@pytest.mark.parametrize("breakage, problem", [
    ("truncated image", "truncated"),
    ("truncated mask", "truncated"),
    ("empty image", "cannot be read"),
    ("text image", "cannot be read"),
])
def test_convert_bids_names_unreadable_pngs(tmp_path, capsys, breakage, problem):
    paths = _bids(tmp_path / "bids")
    broken = paths["mask"] if breakage == "truncated mask" else paths["image"]
    if breakage.startswith("truncated"):
        _truncated_png(broken, _axonmyelin() if broken == paths["mask"] else _noise())
    elif breakage == "empty image":
        broken.write_bytes(b"")
    else:
        broken.write_text("this is not a PNG\n")
    assert cli_main(_convert(tmp_path / "bids", tmp_path / "raw")) == 1
    message = _error(capsys)
    assert str(broken) in message and problem in message
    assert _nothing_in(tmp_path / "raw")


@pytest.mark.parametrize("sidecar, problem", [
    ({"PixelSize": None, "PixelSizeUnits": "um"}, "PixelSize must be a number"),
    ({"PixelSize": ["0.1", "0.1"], "PixelSizeUnits": "um"}, "PixelSize must be a number"),
    ({"PixelSize": "abc"}, "PixelSize must be a number"),
    ({"PixelSize": [1e-300, 1e-300]}, "implausible"),
    ({"PixelSize": 1e300}, "implausible"),
    ("{not json", "not valid JSON"),
])
def test_convert_bids_names_broken_sidecars(tmp_path, capsys, sidecar, problem):
    paths = _bids(tmp_path / "bids")
    paths["sidecar"].write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    assert cli_main(_convert(tmp_path / "bids", tmp_path / "raw")) == 1
    message = _error(capsys)
    assert str(paths["sidecar"]) in message and problem in message
    assert _nothing_in(tmp_path / "raw")


def test_convert_bids_refuses_an_implausible_target_pixel_size(tmp_path, capsys):
    _bids(tmp_path / "bids")
    assert cli_main(_convert(tmp_path / "bids", tmp_path / "raw", "--target-pixel-size", "1e-300")) == 1
    assert "target pixel size" in (message := _error(capsys)) and "1e-05 to 10000 um" in message
    assert _nothing_in(tmp_path / "raw")


# ------------------------------------------------------------------------------------- 4, 6, 7, 8. morphometrics
def _labels(shape=SHAPE) -> np.ndarray:
    return np.select([_axonmyelin(shape) == 127, _axonmyelin(shape) == 255], [1, 2], 0).astype(np.uint8)


def _morphometrics(source: Path, out: Path, *extra) -> list[str]:
    return ["morphometrics", str(source), "-o", str(out), "--no-qc", *extra]


@pytest.mark.parametrize("breakage", ["truncated", "empty", "text"])
def test_morphometrics_names_unreadable_label_images(tmp_path, capsys, breakage):
    label = tmp_path / "in" / "case.png"
    if breakage == "truncated":
        _truncated_png(label, _labels())
    else:
        label.parent.mkdir(parents=True)
        label.write_bytes(b"" if breakage == "empty" else b"not a PNG")
    out = tmp_path / "out"
    assert cli_main(_morphometrics(label, out, "--pixel-size", "0.1")) == 1
    message = _error(capsys)
    assert str(label) in message and "cannot be read" in message
    assert _nothing_in(out) and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_morphometrics_reads_images_above_pillows_limit(tmp_path, capsys, monkeypatch):
    """Pillow refuses images above 2 x MAX_IMAGE_PIXELS (a 20000^2 PNG by default) as decompression bombs;
    morphometrics lifts the limit as segment does (shown here with a lowered limit, not a 400-megapixel file)."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    label = _png(tmp_path / "in" / "case.png", _labels())
    out = tmp_path / "out"
    assert cli_main(_morphometrics(label, out, "--pixel-size", "0.1")) == 0
    assert (out / "case_axon_morphometrics.csv").is_file() or any(out.glob("*.csv"))
    assert PILImage.MAX_IMAGE_PIXELS == 100  # restored


def test_morphometrics_refuses_a_3d_npy_naming_it(tmp_path, capsys):
    volume = tmp_path / "in" / "stack.npy"
    volume.parent.mkdir()
    np.save(volume, np.stack([_labels()] * 3))
    out = tmp_path / "out"
    assert cli_main(_morphometrics(volume, out, "--pixel-size", "0.1")) == 1
    message = _error(capsys)
    assert str(volume) in message and "expected a 2D" in message and "(3, 40, 48)" in message
    assert _nothing_in(out)


@pytest.mark.parametrize("where, value", [("option", "1e-300"), ("option", "1e300"), ("file", "1e-300"),
                                          ("file", "1e300"), ("sidecar", "1e300")])
def test_morphometrics_refuses_implausible_pixel_sizes(tmp_path, capsys, where, value):
    label = _png(tmp_path / "in" / "case.png", _labels())
    extra = []
    if where == "option":
        extra = ["--pixel-size", value]
        named = "pixel size"
    elif where == "file":
        named = tmp_path / "in" / "pixel_size_in_micrometer.txt"
        named.write_text(value + "\n")
    else:
        named = tmp_path / "in" / "case.json"
        named.write_text(json.dumps({"PixelSize": float(value)}))
    out = tmp_path / "out"
    assert cli_main(_morphometrics(label, out, *extra)) == 1
    message = _error(capsys)
    assert str(named) in message and "implausible" in message and "1e-05 to 10000 um" in message
    assert _nothing_in(out)


# ------------------------------------------------------------------------------- 9. segment: broken model folders
def _fake_model(folder: Path) -> Path:
    """A model folder with valid JSON and a torch checkpoint that is no nnU-Net model (enough to get to loading)."""
    import torch

    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "myelin": 1, "axon": 2},
                                                     "channel_names": {"0": "SEM"}, "file_ending": ".png"}))
    (folder / "plans.json").write_text(json.dumps({"configurations": {}}))
    torch.save({"network_weights": {"w": torch.zeros(4096)}}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _segment(image: Path, out: Path, model: Path, *extra) -> list[str]:
    return ["segment", "-i", str(image), "-o", str(out), "-m", str(model), *extra]


def test_segment_names_a_truncated_checkpoint(tmp_path, capsys):
    model = _fake_model(tmp_path / "model")
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    image = _png(tmp_path / "img.png", _noise())
    out = tmp_path / "out"
    assert cli_main(_segment(image, out, model)) == 1
    message = _error(capsys)
    assert str(checkpoint) in message and "not a complete torch checkpoint" in message
    assert not out.exists()


@pytest.mark.parametrize("name", ["plans.json", "dataset.json"])
def test_segment_names_a_model_json_that_is_not_json(tmp_path, capsys, name):
    model = _fake_model(tmp_path / "model")
    (model / name).write_text("{this is not json")
    image = _png(tmp_path / "img.png", _noise())
    out = tmp_path / "out"
    assert cli_main(_segment(image, out, model)) == 1
    message = _error(capsys)
    assert str(model / name) in message and "not valid JSON" in message
    assert not out.exists()


# ------------------------------------------------------------------------------------- 14. segment: CPU threads
def test_segment_default_threads_do_not_oversubscribe(monkeypatch, capsys):
    from nnunet_ext.segmentation.predictor import default_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 3.0, 3.0))
    assert default_cpu_threads() == 1  # 4 cores, 3 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert default_cpu_threads() == 1  # never 0
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert default_cpu_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_cpu_threads() == 3  # as the CPU trainers honour it
    with pytest.raises(SystemExit):
        cli_main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "OMP_NUM_THREADS if set, else the cores not already busy" in help_text


# ------------------------------------------------------------------- 2, 4, 9. segment with a trained (smoke) model
@pytest.fixture(scope="module")
def smoke_model_folder(smoke_trained_model) -> Path:
    return Path(smoke_trained_model).parent


@pytest.mark.slow
def test_segment_names_a_truncated_image_and_leaves_no_output_folder(smoke_model_folder, tmp_path, capsys):
    image = _truncated_png(tmp_path / "in" / "img.png", _noise((96, 96)))
    out = tmp_path / "out"
    assert cli_main(_segment(image, out, smoke_model_folder, "--threads", "1")) == 1
    message = _error(capsys)
    assert str(image) in message and "truncated" in message
    assert not out.exists()


@pytest.mark.slow
def test_segment_names_weights_that_do_not_fit_dataset_json(smoke_model_folder, tmp_path, capsys):
    import shutil

    model = tmp_path / smoke_model_folder.name
    shutil.copytree(smoke_model_folder, model)
    dataset = json.loads((model / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "SEM", "1": "extra"}
    (model / "dataset.json").write_text(json.dumps(dataset))
    image = _png(tmp_path / "in" / "img.png", _noise((96, 96)))
    out = tmp_path / "out"
    assert cli_main(_segment(image, out, model, "--threads", "1")) == 1
    message = _error(capsys)
    assert str(model / "fold_0" / "checkpoint_final.pth") in message and "do not fit" in message
    assert "2 input channel(s)" in message
    assert not out.exists()


@pytest.mark.slow
def test_segment_refuses_to_resume_a_slide_changed_in_place(smoke_model_folder, tmp_path, capsys, monkeypatch):
    import tifffile
    import zarr

    from nnunet_ext.segmentation import slide_prediction
    from nnunet_ext.io.slides import read_labels

    rng = np.random.default_rng(4)
    slide = tmp_path / "in" / "slide.tif"
    slide.parent.mkdir()
    tifffile.imwrite(slide, rng.integers(0, 255, (150, 230)).astype(np.uint8), tile=(64, 64))
    out = tmp_path / "out"
    arguments = _segment(slide, out, smoke_model_folder, "--threads", "1", "--block-size", "64", "--workers", "1",
                         "--max-image-pixels", "100")
    original, predicted = slide_prediction.predict_block, []

    def dies_after_three(*args):
        if len(predicted) == 3:
            raise KeyboardInterrupt("killed")
        predicted.append(args[2])
        return original(*args)

    monkeypatch.setattr(slide_prediction, "predict_block", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        cli_main(arguments)
    monkeypatch.setattr(slide_prediction, "predict_block", original)
    partial = out / "slide_seg.zarr.partial"
    assert partial.is_dir()
    recorded = zarr.open_group(str(partial), mode="r").attrs["nnunet_ext"]["run"]["content"]
    assert recorded["sampled_sha256"] and recorded["size"] == slide.stat().st_size

    changed = rng.integers(0, 255, (150, 230)).astype(np.uint8)  # same shape, same name, other content
    tifffile.imwrite(slide, changed, tile=(64, 64))
    capsys.readouterr()
    assert cli_main(arguments) == 1
    message = _error(capsys)
    assert str(slide.resolve()) in message or str(slide) in message
    assert "changed since the interrupted run" in message and "--overwrite" in message
    assert partial.is_dir() and not (out / "slide_seg.zarr").exists()  # nothing mixed, nothing lost

    assert cli_main(arguments + ["--overwrite"]) == 0  # told to start over: a fresh run of the new content
    assert not partial.exists()
    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor, predict_image

    expected = predict_image(cached_predictor(ModelSpec(str(smoke_model_folder), threads=1)), changed)
    np.testing.assert_array_equal(read_labels(out / "slide_seg.zarr")[:], expected)


# -------------------------------------------------------------------------------------------- 10. nnunet-ext env
def test_env_check_without_folders_advises_base(monkeypatch, capsys):
    from nnunet_ext.nnunet.environment import nnunet_environment

    monkeypatch.setenv("nnUNet_extTrainer", nnunet_environment()["nnUNet_extTrainer"])
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["env", "--check"]) == 1
    message = capsys.readouterr().err
    assert "nnUNet_raw is not set" in message and 'eval "$(nnunet-ext env --base DIR)"' in message
    assert 'eval "$(nnunet-ext env)"\n' not in message  # the advice that would fail again


def test_env_base_creates_only_under_an_existing_parent(tmp_path, capsys):
    typo = tmp_path / "typo" / "dir"
    assert cli_main(["env", "--base", str(typo)]) == 1
    message = _error(capsys)
    assert str(typo) in message and "does not exist" in message and "nothing was created" in message
    assert not (tmp_path / "typo").exists()
    base = tmp_path / "nnunet"
    assert cli_main(["env", "--base", str(base)]) == 0
    captured = capsys.readouterr()
    assert f"export nnUNet_raw={base / 'nnUNet_raw'}" in captured.out
    assert f"created {base}\n" in captured.err and f"created {base / 'nnUNet_results'}" in captured.err
    assert sorted(p.name for p in base.iterdir()) == ["nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results"]
    assert cli_main(["env", "--base", str(base)]) == 0
    assert "created" not in capsys.readouterr().err  # nothing new the second time


# ---------------------------------------------------------------------------------------------- 11, 12. README
README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_names_the_plans_plans_vit_writes():
    from nnunet_ext.nnunet.plans_vit import vit_plans_name

    text = README.read_text()
    assert "nnUNetPlans_vit`" not in text  # plans-vit writes nnUNetPlans_<backbone>
    assert f"`{vit_plans_name('sam_vit_b')}`" in text


def test_readme_sets_n_proc_da_zero_only_after_planning():
    """nnU-Net's planner fails with nnUNet_n_proc_DA=0: a shell block exporting it plans first, never after."""
    import re

    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        lines = block.splitlines()
        exports = [i for i, line in enumerate(lines) if re.search(r"^\s*export .*nnUNet_n_proc_DA=0", line)]
        plans = [i for i, line in enumerate(lines) if re.search(r"nnUNetv2_plan_(and_preprocess|experiment)", line)]
        assert not exports or (plans and max(plans) < min(exports)), block


# ----------------------------------------------------------------- 13. stale staging folders, output = input
def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _stale_and_live(parent: Path, name: str) -> tuple[Path, Path]:
    """A staging folder left by a killed run (dead pid), and one of a run still going (this process)."""
    stale = parent / f".{name}.incomplete-{_dead_pid()}-abc123"
    live = parent / f".{name}.incomplete-{os.getpid()}-def456"
    for folder in (stale, live):
        (folder / "half").mkdir(parents=True)
        (folder / "half" / "written.png").write_bytes(b"x" * 1000)
    return stale, live


def test_convert_removes_stale_staging_of_killed_runs(tmp_path, capsys):
    _bids(tmp_path / "bids")
    raw = tmp_path / "raw"
    stale, live = _stale_and_live(raw, "Dataset501_Bad")
    assert cli_main(_convert(tmp_path / "bids", raw)) == 0
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in raw.iterdir()) == sorted(["Dataset501_Bad", live.name])


def test_morphometrics_removes_stale_staging_and_refuses_its_input_as_output(tmp_path, capsys):
    folder = tmp_path / "labels"
    _png(folder / "case.png", _labels())
    out = tmp_path / "out"
    stale, live = _stale_and_live(tmp_path, "out")
    assert cli_main(_morphometrics(folder, out, "--pixel-size", "0.1")) == 0
    assert not stale.exists() and live.exists()
    capsys.readouterr()
    before = sorted(p.name for p in folder.iterdir())
    assert cli_main(["morphometrics", str(folder), "-o", str(folder), "--pixel-size", "0.1"]) == 1
    message = _error(capsys)
    assert str(folder) in message and "output folder is the input folder" in message
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the input


# ----------------------------------------------------------- the same fault elsewhere: plans that are not JSON
@pytest.mark.parametrize("command", [["plans-cpu"], ["plans-vit", "--backbone", "vit_b"]])
def test_plans_commands_name_source_plans_that_are_not_json(tmp_path, capsys, monkeypatch, command):
    from nnunet_ext.nnunet import plans_cpu, plans_vit

    folder = tmp_path / "Dataset903_Bad"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text("{truncated")
    monkeypatch.setattr(plans_cpu, "preprocessed_dataset_folder", lambda dataset: folder)
    if hasattr(plans_vit, "preprocessed_dataset_folder"):
        monkeypatch.setattr(plans_vit, "preprocessed_dataset_folder", lambda dataset: folder)
    assert cli_main([*command, "-d", "903"]) == 1
    message = _error(capsys)
    assert str(folder / "nnUNetPlans.json") in message and "not valid JSON" in message
    assert sorted(p.name for p in folder.iterdir()) == ["nnUNetPlans.json"]


@pytest.mark.parametrize("how", ["option", "table"])
def test_evaluate_refuses_implausible_pixel_sizes(tmp_path, capsys, how):
    good = np.select([_axonmyelin() == 127, _axonmyelin() == 255], [1, 2], 0).astype(np.uint8)
    pred, gt = _evaluation_folders(tmp_path, good, good)
    if how == "option":
        extra, named = ["--pixel-size", "1e300"], "--pixel-size"
    else:
        table = tmp_path / "sizes.csv"
        table.write_text("case,pixel_size_um\ncase,1e-300\n")
        extra, named = ["--pixel-size-table", str(table)], str(table)
    assert cli_main(["evaluate", str(pred), str(gt), *extra]) == 1
    message = _error(capsys)
    assert named in message and "1e-05 to 10000 um" in message
    assert sorted(p.name for p in pred.iterdir()) == ["case.png", "dataset.json"]


def test_convert_bids_reads_another_coding_with_mask_values(tmp_path, capsys):
    nominal = _axonmyelin()
    recoded = np.select([nominal == 127, nominal == 255], [85, 170], 0).astype(np.uint8)
    _bids(tmp_path / "bids", recoded)
    raw = tmp_path / "raw"
    assert cli_main(_convert(tmp_path / "bids", raw, "--mask-values", "0", "85", "170")) == 0
    label = np.array(Image.open(raw / "Dataset501_Bad" / "labelsTr" / "Bad_000.png"))
    np.testing.assert_array_equal(label, np.select([nominal == 255, nominal == 127], [2, 1], 0))
    assert cli_main(_convert(tmp_path / "bids", tmp_path / "raw2", "--mask-values", "0", "85", "85")) == 1
    assert "three different 8-bit values" in _error(capsys)
    assert _nothing_in(tmp_path / "raw2")


def test_slide_content_fingerprint_sees_changes_in_place(tmp_path):
    """The fingerprint segment's resume checks: sampled windows plus the store's or file's modification metadata."""
    import time

    import tifffile
    import zarr

    from nnunet_ext.io.slides import SlideSource
    from nnunet_ext.segmentation.slide_prediction import content_fingerprint

    image = np.random.default_rng(0).integers(0, 255, (600, 700)).astype(np.uint8)
    store = tmp_path / "slide.zarr"
    zarr.open_array(str(store), mode="w", shape=image.shape, chunks=(128, 128), dtype=np.uint8)[:] = image
    first = content_fingerprint(SlideSource(store), store)
    assert first == content_fingerprint(SlideSource(store), store)  # stable
    changed = image.copy()
    changed[:64, :64] = 255 - changed[:64, :64]  # a corner window, as a rewrite of the slide would touch
    zarr.open_array(str(store), mode="r+")[:] = changed
    assert content_fingerprint(SlideSource(store), store)["sampled_sha256"] != first["sampled_sha256"]

    tiff = tmp_path / "slide.tif"
    tifffile.imwrite(tiff, image, tile=(128, 128))
    before = content_fingerprint(SlideSource(tiff), tiff)
    time.sleep(0.01)
    tifffile.imwrite(tiff, image, tile=(128, 128))  # same pixels, rewritten: modification time differs
    after = content_fingerprint(SlideSource(tiff), tiff)
    assert after["sampled_sha256"] == before["sampled_sha256"] and after["mtime_ns"] != before["mtime_ns"]
    in_memory = content_fingerprint(SlideSource(image))
    assert "mtime_ns" not in in_memory and in_memory["windows"] == 16


def test_morphometrics_measures_a_large_label_tiff_chunk_by_chunk(tmp_path, capsys):
    """Above --max-image-pixels a single label TIFF goes the chunked way (default 2^25 px): the same CSV values."""
    import pandas as pd
    import tifffile

    labels = _labels((150, 170))
    tiff = tmp_path / "in" / "big.tif"
    tiff.parent.mkdir()
    tifffile.imwrite(tiff, labels)
    assert cli_main(_morphometrics(tiff, tmp_path / "whole", "--pixel-size", "0.1")) == 0
    assert "chunk by chunk" not in capsys.readouterr().out
    assert cli_main(_morphometrics(tiff, tmp_path / "chunked", "--pixel-size", "0.1", "--max-image-pixels", "1000",
                                   "--halo", "64")) == 0
    assert "measured chunk by chunk" in capsys.readouterr().out
    whole = pd.read_csv(tmp_path / "whole" / "big_axon_morphometrics.csv")
    chunked = pd.read_csv(tmp_path / "chunked" / "big_axon_morphometrics.csv")
    assert len(whole) == len(chunked) > 0
    for column in ("gratio", "axon_area (um^2)", "myelin_area (um^2)"):
        np.testing.assert_allclose(np.sort(chunked[column]), np.sort(whole[column]))
    # an AxonDeepSeg-coded TIFF is read as such, and unknown values are refused naming the file
    ads = np.select([labels == 1, labels == 2], [127, 255], 0).astype(np.uint8)
    tifffile.imwrite(tiff, ads)
    assert cli_main(_morphometrics(tiff, tmp_path / "ads", "--pixel-size", "0.1", "--max-image-pixels", "1000",
                                   "--halo", "64")) == 0
    assert len(pd.read_csv(tmp_path / "ads" / "big_axon_morphometrics.csv")) == len(whole)
    capsys.readouterr()
    tifffile.imwrite(tiff, np.where(labels == 2, 7, labels).astype(np.uint8))
    assert cli_main(_morphometrics(tiff, tmp_path / "seven", "--pixel-size", "0.1", "--max-image-pixels",
                                   "1000")) == 1
    message = _error(capsys)
    assert str(tiff) in message and "unexpected label values [7]" in message
    assert _nothing_in(tmp_path / "seven")
