"""The stock nnU-Net commands find and run our trainers through ``nnUNet_extTrainer``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import nnunet_ext.trainers as our_trainers
from nnunet_ext.nnunet.environment import (TRAINER_SEARCH_PATH, EnvironmentNotReady, check_environment, export_lines,
                                   nnunet_environment)


def test_trainer_names_follow_nnunet_rules_and_do_not_clash():
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from os.path import join

    assert our_trainers.__all__, "no trainer exported"
    for name in our_trainers.__all__:
        assert name.startswith("nnUNetTrainer") and "__" not in name, name
        clash = recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                            "nnunetv2.training.nnUNetTrainer")
        assert clash is None, f"{name} clashes with nnU-Net's own trainer {clash}"


def test_search_path_holds_only_the_shim():
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules([TRAINER_SEARCH_PATH])]
    assert modules == ["nnunet_ext_trainer_registry"]


def test_nnunet_lookup_returns_our_very_class(monkeypatch):
    """nnU-Net's own lookup, through the env var, yields the object defined in nnunet_ext.trainers (pickle-safe)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", nnunet_environment()["nnUNet_extTrainer"])
    for name in our_trainers.__all__:
        found = recursive_find_trainer_class_by_name(name)
        assert found is getattr(our_trainers, name)
        assert found.__module__.startswith("nnunet_ext.trainers.")
    assert "nnunet_ext_trainer_registry" not in sys.modules  # nnU-Net cleaned up its top-level import


def test_missing_environment_gives_the_line_to_run():
    with pytest.raises(EnvironmentNotReady, match=r'eval "\$\(nnunet-ext env\)"'):
        check_environment(env={"nnUNet_extTrainer": "/somewhere/else"})
    check_environment(env=nnunet_environment(base_env={}))
    env = nnunet_environment(base_env={"nnUNet_extTrainer": "/mine"})
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [TRAINER_SEARCH_PATH, "/mine"]
    assert f"export nnUNet_extTrainer={TRAINER_SEARCH_PATH}" in export_lines()


def test_env_cli_check_fails_clearly_without_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    result = subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "env", "--check"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "nnUNet_extTrainer" in result.stderr and "nnunet-ext env" in result.stderr
    result = subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "env", "--base", str(tmp_path)], env=env,
                            capture_output=True, text=True, check=True)
    assert f"export nnUNet_raw={tmp_path / 'nnUNet_raw'}" in result.stdout


@pytest.mark.slow
def test_stock_nnunet_train_and_predict_run_our_trainer(tiny_nnunet_dataset, smoke_trained_model, tmp_path):
    from nnunet_ext.nnunet.commands import predict

    ds = tiny_nnunet_dataset
    fold = smoke_trained_model
    assert (fold / "checkpoint_final.pth").is_file()
    import torch

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerCPUSmoke"
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["num_epochs"] == "2" and debug["num_iterations_per_epoch"] == "4"  # our schedule ran
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's own final validation ran

    out = tmp_path / "predictions"
    predict(ds.raw_folder / "imagesTs", out, ds.dataset_id, ds.configuration, [0], "nnUNetTrainerCPUSmoke",
            ds.env, plans=ds.plans, log_file=ds.base / "nnunet.log")
    cases = sorted(p.name.removesuffix("_0000.png") for p in (ds.raw_folder / "imagesTs").glob("*.png"))
    assert cases, "tiny dataset has no test images"
    for case in cases:
        prediction = out / f"{case}.png"
        assert prediction.is_file(), f"nnUNetv2_predict wrote no {prediction.name}"
        label = np.array(Image.open(prediction))
        image = np.array(Image.open(ds.raw_folder / "imagesTs" / f"{case}_0000.png"))
        assert label.shape == image.shape
        assert set(np.unique(label)) <= {0, 1, 2}
    # the predictor rebuilt the network from the plans stored with the model
    assert json.loads((out / "plans.json").read_text())["plans_name"] == ds.plans
