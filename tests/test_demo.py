"""The demo pipeline end to end, at toy size (the full demo's figures are in the README/closing note)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from nnunet_ext.demo import DEMO_MARKER, DemoSettings, run_demo


@pytest.mark.slow
def test_demo_pipeline_writes_every_output(tmp_path, capsys):
    settings = DemoSettings(n_subjects=4, samples_per_subject=1, image_size=96, patch_size=48, batch_size=4,
                            features_per_stage=(8, 16, 32), trainer="nnUNetTrainerCPUSmoke", seed=3)
    out = tmp_path / "demo"
    summary = run_demo(out, settings=settings)

    printed = capsys.readouterr().out
    assert "nnunet-ext demo finished" in printed and "Dice on held-out" in printed
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary["dice"]) == {"myelin", "axon"}
    assert all(0.0 <= d <= 1.0 for d in summary["dice"].values())
    assert summary["test_images"] == 2 and summary["train_images"] == 6
    for name, path in summary["outputs"].items():
        assert (out / path).exists() or __import__("pathlib").Path(path).exists(), f"{name}: {path} missing"

    per_axon = pd.read_csv(summary["outputs"]["per_axon_morphometrics"])
    assert {"axon_diam (um)", "myelin_thickness (um)", "gratio", "image"} <= set(per_axon.columns)
    aggregate = pd.read_csv(summary["outputs"]["aggregate_morphometrics"])
    assert {"avf", "mvf", "gratio_aggregate", "axon_density (per mm^2)"} <= set(aggregate.columns)
    assert set(aggregate["source"]) == {"prediction", "ground truth"}
    truth_rows = aggregate[aggregate.source == "ground truth"]
    assert (truth_rows["axon_count"] > 0).all() and (truth_rows["avf"] > 0).all()
    # the mean g-ratio measured on the ground-truth masks agrees with the phantoms' analytic truth
    assert summary["mean_gratio_ground_truth_masks"] == pytest.approx(summary["mean_gratio_phantom_truth"], abs=0.03)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a previous demo output"):
        run_demo(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "user data"
    assert not (tmp_path / DEMO_MARKER).exists()
