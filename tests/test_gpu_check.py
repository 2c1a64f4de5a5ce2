"""``benchmarks/gpu_check.py`` on a machine without a GPU: its refusal without CUDA, and its dry run.

The dry run (``--dry-run``: the CPU, tiny sizes) goes through the script's own preparation (phantoms, conversion,
nnU-Net planning and preprocessing, CPU and ViT plans, a release-format SAM checkpoint), one nnU-Net run and one
EM-SAM run through the stock ``nnUNetv2_train`` with the script's timing trainers, the ``nnUNetv2_predict`` check of
both checkpoints, and the ``segment`` / ``nnUNetv2_predict`` slide timing, then its table in Markdown and JSON. On
CUDA the full-size runs are the script's job; ``test_gpu.py::test_gpu_check_tiny_on_cuda`` runs the tiny pipeline
there with torch.compile.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the script would run")
def test_without_cuda_it_stops_with_a_clear_message(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing prepared


def test_timed_trainers_module_defines_every_trainer(tmp_path):
    gpu_check = _load_script()
    folder = gpu_check.write_trainers_module(tmp_path, list(gpu_check.RUNS))
    source = (folder / gpu_check.TRAINERS_MODULE_NAME).read_text()
    compile(source, "trainers", "exec")
    for run in gpu_check.RUNS.values():
        assert f"'{run.trainer}GPUCheck': '{run.trainer}'" in source


def test_tube_dataset_is_in_nnunet_raw_format(tmp_path):
    import SimpleITK as sitk

    gpu_check = _load_script()
    folder = gpu_check.write_tube_dataset(tmp_path, (8, 20, 24), 3)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and dataset["labels"] == {"background": 0, "neurite": 1}
    assert len(list((folder / "imagesTr").glob("*_0000.nii.gz"))) == 2
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(next((folder / "labelsTr").iterdir()))))
    assert label.shape == (8, 20, 24) and set(label.ravel().tolist()) == {0, 1}


@pytest.mark.slow
def test_dry_run_prepares_trains_predicts_and_segments(tmp_path):
    out = tmp_path / "gpu_check"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--runs", "reference", "emsam512",
                             "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry run on the CPU" and not report["failures"]
    rows = {row["run"]: row for row in report["training"]}
    assert set(rows) == {"reference", "emsam512"}
    for row in rows.values():
        assert row["status"] == "ok" and row["losses_finite"] and row["predict"] == "yes"
        assert row["step_s"] > 0 and row["timed_steps"] == 6 and row["compile"] == "off"
    assert rows["reference"]["ratio_to_reference"] == 1
    raw = {r["key"]: r for r in report["training_raw"]}
    assert raw["emsam512"]["timing"]["base_trainer"] == "nnUNetTrainerEMSAM"
    assert raw["emsam512"]["timing"]["patch_size"] == [32, 32] and raw["emsam512"]["timing"]["batch_size"] == 2
    assert len(raw["reference"]["timing"]["iteration_seconds"]) == 5
    log = Path(raw["emsam512"]["log"]).read_text()
    assert "pretrained encoder from" in log and "newly initialised 0" in log  # the release-format SAM file loaded
    segment = {item["name"]: item for item in report["segment"]}
    assert segment["segment"]["ok"] and segment["nnUNetv2_predict"]["ok"]
    assert segment["segment"]["reported_seconds"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "| reference | nnUNetTrainer | 2d 64x64 x 4 | off |" in table and table in result.stdout
