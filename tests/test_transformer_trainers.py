"""Transformer trainers: schedule, plans checks, and every trainer through the stock ``nnUNetv2_train`` +
``nnUNetv2_predict`` on tiny phantoms (2D) and tubes (3D), with tiny checkpoints in each release's format, nnU-Net's
``--c`` resume and ``-pretrained_weights``."""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_ext.trainers.transformers import (WarmupCosineLRScheduler, nnUNetTrainerEMSAM, nnUNetTrainerViT,
                                              nnUNetTrainerViT3DInflated, nnUNetTrainerViTBEiT)

TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 2, "global_attn_indexes": [1]}


def test_warmup_then_cosine_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = WarmupCosineLRScheduler(optimizer, 0.1, warmup_steps=4, max_steps=24)
    rates = []
    for epoch in range(24):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear warm-up reaches the peak at step 4
    assert rates[14] == pytest.approx(0.05)  # half-way through the cosine
    assert rates[23] == pytest.approx(0.05 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


class _Configuration:
    """Just what the trainers' checks read from nnU-Net's ConfigurationManager."""

    def __init__(self, architecture: dict, patch_size):
        self.configuration = {"architecture": architecture}
        self.patch_size = list(patch_size)
        self.network_arch_class_name = architecture["network_class_name"]
        self.network_arch_init_kwargs = architecture["arch_kwargs"]
        self.network_arch_init_kwargs_req_import = architecture["_kw_requires_import"]


def test_trainers_build_the_plans_network_and_refuse_unfit_plans():
    from nnunet_ext.networks.unetr import ViTUNETR
    from nnunet_ext.nnunet.plans_vit import vit_architecture

    sam = _Configuration(vit_architecture([32, 32], "sam_vit_b", backbone_kwargs=TINY_SAM), [32, 32])
    network = nnUNetTrainerEMSAM.build_network_architecture(None, sam, 1, 3, True)
    assert isinstance(network, ViTUNETR) and network.encoder.family == "sam"
    assert len(network(torch.zeros(1, 1, 32, 32))) == 4
    with pytest.raises(ValueError, match="needs a beit backbone.*plans-vit .*--backbone beit_b"):
        nnUNetTrainerViTBEiT.build_network_architecture(None, sam, 1, 3, True)
    with pytest.raises(ValueError, match="3D trainer"):
        nnUNetTrainerViT3DInflated.build_network_architecture(
            None, _Configuration(vit_architecture([32, 32], "vit_b", backbone_kwargs={"embed_dim": 16, "depth": 1,
                                                                                          "num_heads": 1}),
                                 [32, 32]), 1, 3, True)
    inflated = _Configuration(vit_architecture([5, 32, 32], "vit_b", [5, 16, 16], backbone_kwargs={
        "embed_dim": 16, "depth": 1, "num_heads": 1}), [5, 32, 32])
    network = nnUNetTrainerViT3DInflated.build_network_architecture(None, inflated, 1, 3, True)
    assert network.strides[-1] == [5, 2, 2] and network(torch.zeros(1, 1, 5, 32, 32))[0].shape == (1, 3, 5, 32, 32)
    unet = _Configuration({"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                           "arch_kwargs": {}, "_kw_requires_import": []}, [64, 64])
    with pytest.raises(ValueError, match="nnunet-ext plans-vit"):
        nnUNetTrainerViT.build_network_architecture(None, unet, 1, 3, True)


def test_missing_checkpoint_variable_names_the_variable(monkeypatch, tmp_path):
    from nnunet_ext.networks.pretrained import checkpoint_path_from_env

    monkeypatch.delenv("NNUNET_EXT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(FileNotFoundError, match="NNUNET_EXT_SAM_CHECKPOINT is not set"):
        checkpoint_path_from_env(nnUNetTrainerEMSAM.checkpoint_variable)
    monkeypatch.setenv("NNUNET_EXT_SAM_CHECKPOINT", str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="NNUNET_EXT_SAM_CHECKPOINT=.*nope.pth: no such file"):
        checkpoint_path_from_env("NNUNET_EXT_SAM_CHECKPOINT")


# ------------------------------------------------------------------------------------- stock nnUNetv2_train/predict
#
# Every transformer trainer is trained through the stock ``nnUNetv2_train`` console script (a test-only subclass that
# only shortens the schedule to 2 iterations per epoch and skips the final validation), then ``nnUNetv2_predict``
# rebuilds the network from the plans alone and segments the test images. Pretrained trainers read a tiny checkpoint
# written here in their release's own key format, named by the trainer's environment variable. One chain also checks
# nnU-Net's ``--c`` resume and one nnU-Net's ``-pretrained_weights``. The 2D runs share the phantoms' preprocessed data
# and the 3D runs the tubes' (``plans-vit --reuse-preprocessed``); two chains of commands run at a time.

SHORT = "TestShort"  # suffix of the test-only short-schedule trainers
SHORT_TRAINERS_MODULE = '''
"""Test-only: each nnunet-ext transformer trainer with a short schedule (NNUNET_EXT_TEST_EPOCHS epochs of two
iterations) and no final validation (nnUNetv2_predict exercises the same sliding-window inference afterwards)."""
import os

import torch

from nnunet_ext.trainers import transformers


class _ShortSchedule:
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_EXT_TEST_EPOCHS", "1"))
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # nnUNetv2_train -device cpu takes every core
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("final validation skipped by the test trainer")


for _name in {names!r}:
    globals()[_name + {short!r}] = type(_name + {short!r}, (_ShortSchedule, getattr(transformers, _name)), {{}})
'''

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
# plans name -> (dimension, plans-vit options); derived from the CPU plans, reusing their preprocessed data
VIT_PLANS = {
    "nnUNetPlans_samtiny": ("2d", ["--backbone", "sam_vit_b", "--patch-size", "48", "48",
                                   "--backbone-kwargs", json.dumps(TINY_SAM)]),
    "nnUNetPlans_vittiny": ("2d", ["--backbone", "vit_b", "--patch-size", "48", "48",
                                   "--backbone-kwargs", json.dumps(TINY_VIT)]),
    "nnUNetPlans_vittinysum": ("2d", ["--backbone", "vit_b", "--patch-size", "48", "48", "--input-channels", "sum",
                                      "--backbone-kwargs", json.dumps(TINY_VIT)]),
    "nnUNetPlans_beittiny": ("2d", ["--backbone", "beit_b", "--patch-size", "64", "64",
                                    "--backbone-kwargs", json.dumps(TINY_VIT)]),
    # anisotropic 4 x 16 x 16 tokens on 32^3 patches: an 8 x 2 x 2 token grid
    "nnUNetPlans_vit3dtiny": ("3d", ["--backbone", "vit_b", "--patch-size", "32", "32", "32",
                                     "--patch-embed-size", "4", "16", "16", "--backbone-kwargs", json.dumps(TINY_VIT)]),
}
# trainer -> (plans, checkpoint file written in its release's format, or None)
TRAINER_RUNS = {
    "nnUNetTrainerEMSAM": ("nnUNetPlans_samtiny", "sam_vit_b_tiny.pth"),
    "nnUNetTrainerEMSAM_VCVRL": ("nnUNetPlans_samtiny", "sam_vit_b_tiny.pth"),
    "nnUNetTrainerViT": ("nnUNetPlans_vittiny", None),
    "nnUNetTrainerViTPretrained": ("nnUNetPlans_vittinysum", "vit_tiny.safetensors"),
    "nnUNetTrainerViTMAE": ("nnUNetPlans_vittiny", "mae_pretrain_vit_tiny.pth"),
    "nnUNetTrainerViTDINO": ("nnUNetPlans_vittiny", "dino_vit_tiny_checkpoint.pth"),
    "nnUNetTrainerViTBEiT": ("nnUNetPlans_beittiny", "beit_tiny_pt22k.pth"),
    "nnUNetTrainerViT3DInflated": ("nnUNetPlans_vit3dtiny", "dino_vit_tiny_checkpoint.pth"),
    "nnUNetTrainerViT3DInflatedAverage": ("nnUNetPlans_vit3dtiny", "vit_tiny.pth"),
}
RESUMED = "nnUNetTrainerViT3DInflatedAverage"  # trained 1 epoch, then continued to 2 with --c
FINE_TUNED = "nnUNetTrainerEMSAM"  # fold 1 starts from fold 0's nnU-Net checkpoint with -pretrained_weights


def _write_release_checkpoints(folder):
    """One tiny checkpoint per release format (different seeds: loaded weights tell where they came from)."""
    from test_networks import (write_beit_checkpoint, write_dino_checkpoint, write_mae_checkpoint,
                               write_original_sam_checkpoint, write_timm_checkpoint)

    folder.mkdir()
    write_original_sam_checkpoint(folder / "sam_vit_b_tiny.pth", TINY_SAM, image_size=64, seed=0)
    write_original_sam_checkpoint(folder / "sam_vit_b_tiny_other.pth", TINY_SAM, image_size=64, seed=9)
    write_timm_checkpoint(folder / "vit_tiny.safetensors", TINY_VIT, image_size=64, seed=1)
    write_mae_checkpoint(folder / "mae_pretrain_vit_tiny.pth", TINY_VIT, seed=2)
    write_dino_checkpoint(folder / "dino_vit_tiny_checkpoint.pth", TINY_VIT, seed=3)
    write_beit_checkpoint(folder / "beit_tiny_pt22k.pth", TINY_VIT, seed=4)
    write_timm_checkpoint(folder / "vit_tiny.pth", TINY_VIT, image_size=224, seed=5)
    return folder


@dataclass
class StockRun:
    """One trainer's commands and what they produced."""

    trainer: str
    dataset: object  # conftest.TinyNnUNetDataset
    plans: str
    checkpoint: Path | None
    log: Path
    predictions: Path
    seconds: dict = field(default_factory=dict)  # command -> wall seconds
    error: BaseException | None = None

    @property
    def configuration(self) -> str:
        return self.dataset.configuration

    @property
    def model_folder(self) -> Path:
        return self.dataset.results_folder / f"{self.trainer}{SHORT}__{self.plans}__{self.configuration}"

    @property
    def variable(self) -> str | None:
        from nnunet_ext.trainers import transformers

        return getattr(transformers, self.trainer).checkpoint_variable

    def environment(self, **extra) -> dict:
        env = {**self.dataset.env, "nnUNet_extTrainer": self.dataset.env["nnUNet_extTrainer"] + os.pathsep
               + str(self.log.parent / "trainers"), "OMP_NUM_THREADS": "1"}
        if self.variable and self.checkpoint:
            env[self.variable] = str(self.checkpoint)
        return {**env, **extra}

    def command(self, name: str, args: list, env: dict) -> None:
        from nnunet_ext.nnunet.commands import run_nnunet_command

        start = time.perf_counter()
        run_nnunet_command(args, env, self.log)
        self.seconds[name] = time.perf_counter() - start

    def train(self, name: str = "train", fold: int = 0, extra_args=(), **env) -> None:
        ds = self.dataset
        self.command(name, ["nnUNetv2_train", ds.dataset_id, self.configuration, fold, "-p", self.plans,
                            "-tr", self.trainer + SHORT, "-device", "cpu", *extra_args],
                     {**self.environment(**env), "nnUNet_n_proc_DA": "0"})

    def predict(self) -> None:
        # -npp 0 -nps 0: nnU-Net's sequential path, no worker processes to start on a small machine
        ds = self.dataset
        environment = self.environment()
        environment.pop(self.variable or "", None)  # prediction must not need the pretrained file
        self.command("predict", ["nnUNetv2_predict", "-i", ds.raw_folder / "imagesTs", "-o", self.predictions,
                                 "-d", ds.dataset_id, "-c", self.configuration, "-f", "0", "-tr",
                                 self.trainer + SHORT, "-p", self.plans, "-chk", "checkpoint_final.pth",
                                 "-device", "cpu", "-npp", "0", "-nps", "0"], environment)


def _run_chain(run: StockRun, base) -> StockRun:
    """Train, predict, then (for two trainers) continue with --c or fine-tune fold 1 with -pretrained_weights."""
    try:
        run.train()
        run.predict()
        if run.trainer == RESUMED:  # the variable is not needed (nor read) when continuing
            run.train("resume", extra_args=["--c"], NNUNET_EXT_TEST_EPOCHS="2",
                      **{run.variable: str(base / "checkpoints" / "does_not_exist.pth")})
        if run.trainer == FINE_TUNED:  # the variable names another SAM file: nnU-Net's weights must win
            run.train("pretrained_weights", fold=1,
                      extra_args=["-pretrained_weights", run.model_folder / "fold_0" / "checkpoint_final.pth"],
                      **{run.variable: str(base / "checkpoints" / "sam_vit_b_tiny_other.pth")})
    except BaseException as error:  # noqa: BLE001 - reported by the test of this trainer
        run.error = error
    return run


@pytest.fixture(scope="module")
def stock_runs(tiny_nnunet_dataset, tiny_tubes_dataset, tmp_path_factory):
    """Plans, checkpoints and the commands of every trainer (about 20 nnU-Net processes, two at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from nnunet_ext.cli import main
    from nnunet_ext.nnunet.commands import applied_environment

    base = tmp_path_factory.mktemp("transformer_runs")
    datasets = {"2d": tiny_nnunet_dataset, "3d": tiny_tubes_dataset}
    for plans, (dims, options) in VIT_PLANS.items():
        ds = datasets[dims]
        with applied_environment(ds.env):  # the CLI in-process: spares a torch start-up per plans file
            assert main(["plans-vit", "-d", str(ds.dataset_id), "-c", ds.configuration, "--decoder-features", "8",
                         "--source-plans", ds.plans, "--reuse-preprocessed", "--plans-name", plans, "--overwrite",
                         *options]) == 0
    _write_release_checkpoints(base / "checkpoints")
    (base / "trainers").mkdir()
    (base / "trainers" / "nnunet_ext_test_short_transformers.py").write_text(
        SHORT_TRAINERS_MODULE.format(names=tuple(TRAINER_RUNS), short=SHORT))
    runs = [StockRun(trainer, datasets[VIT_PLANS[plans][0]], plans,
                     base / "checkpoints" / checkpoint if checkpoint else None, base / f"{trainer}.log",
                     base / f"{trainer}_predictions")
            for trainer, (plans, checkpoint) in TRAINER_RUNS.items()]
    runs.sort(key=lambda r: r.trainer not in (RESUMED, FINE_TUNED))  # the longer chains first
    with ThreadPoolExecutor(max_workers=2) as pool:  # each command is one mostly single-threaded process
        done = list(pool.map(lambda r: _run_chain(r, base), runs))
    return {run.trainer: run for run in done}


@pytest.mark.slow
def test_plans_vit_writes_fitting_plans_that_can_share_preprocessed_data(tiny_nnunet_dataset, monkeypatch):
    from nnunet_ext.nnunet.plans_vit import write_vit_plans

    ds = tiny_nnunet_dataset
    monkeypatch.setenv("nnUNet_preprocessed", ds.env["nnUNet_preprocessed"])
    folder = ds.base / "nnUNet_preprocessed" / ds.dataset_name
    source = json.loads((folder / f"{ds.plans}.json").read_text())["configurations"]["2d"]
    shared = write_vit_plans(ds.dataset_id, "2d", "sam_vit_b", patch_size=[48, 48], backbone_kwargs=TINY_SAM,
                             source_plans=ds.plans, target_plans="nnUNetPlans_checkshared", reuse_preprocessed=True)
    own = write_vit_plans(ds.dataset_id, "2d", "vit_b", patch_size=[64, 32], backbone_kwargs=TINY_VIT,
                          source_plans=ds.plans, target_plans="nnUNetPlans_checkown")
    shared, own = (json.loads(p.read_text())["configurations"]["2d"] for p in (shared, own))
    assert shared["data_identifier"] == source["data_identifier"] == "nnUNetPlans_cpu_2d"
    assert own["data_identifier"] == "nnUNetPlans_checkown_2d"  # default: preprocess for these plans
    for key in ("spacing", "normalization_schemes", "resampling_fn_data"):  # what makes the preprocessed data
        assert shared[key] == own[key] == source[key]
    assert (shared["patch_size"], own["patch_size"], shared["batch_size"]) == ([48, 48], [64, 32], 2)
    assert shared["architecture"]["network_class_name"] == "nnunet_ext.networks.unetr.ViTUNETR"
    assert shared["architecture"]["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    with pytest.raises(ValueError, match=r"multiple of the token size, e\.g\. \[32, 32\]"):
        write_vit_plans(ds.dataset_id, "2d", "vit_b", patch_size=[40, 40], target_plans="nnUNetPlans_unfit")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_vit_plans(ds.dataset_id, "2d", "vit_b", patch_size=[48, 48], target_plans="nnUNetPlans_checkown")
    with pytest.raises(FileNotFoundError, match=r"(?s)nnUNetPlans_checkown_2d: no preprocessed data.*"
                                                r"nnUNetv2_preprocess -d \d+ -plans_name nnUNetPlans_checkown -c 2d"):
        write_vit_plans(ds.dataset_id, "2d", "vit_b", patch_size=[48, 48], backbone_kwargs=TINY_VIT,
                        source_plans="nnUNetPlans_checkown", target_plans="nnUNetPlans_unprocessed",
                        reuse_preprocessed=True)
    assert not (folder / "nnUNetPlans_unprocessed.json").exists()


def _training_logs(fold_folder) -> list[str]:
    return [p.read_text() for p in sorted(fold_folder.glob("training_log_*.txt"))]


def _plans_network(run: StockRun):
    """The network that the trained model's own plans.json describes (what nnUNetv2_predict builds)."""
    from nnunet_ext.networks.unetr import ViTUNETR

    plans = json.loads((run.model_folder / "plans.json").read_text())
    dataset = json.loads((run.model_folder / "dataset.json").read_text())
    architecture = plans["configurations"][run.configuration]["architecture"]
    assert architecture["network_class_name"] == "nnunet_ext.networks.unetr.ViTUNETR"
    return ViTUNETR(1, len(dataset["labels"]), **architecture["arch_kwargs"])


def _read_image(path):
    if path.suffix == ".png":
        from PIL import Image
        return np.asarray(Image.open(path))
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TRAINER_RUNS))
def test_trainer_runs_through_stock_train_and_predict(stock_runs, trainer):
    from nnunet_ext.networks.pretrained import load_pretrained_encoder

    run = stock_runs[trainer]
    if run.error is not None:
        raise run.error
    fold = run.model_folder / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer + SHORT
    network = _plans_network(run)
    network.load_state_dict(checkpoint["network_weights"])  # strict: the plans alone rebuild the trained network
    assert (fold / "progress.png").is_file()

    first_log = _training_logs(fold)[0]
    if run.variable is None:
        assert "pretrained encoder from" not in first_log
    else:
        # the log's report is what loading the same file into the plans' network gives: every encoder tensor loaded
        from nnunet_ext.trainers import transformers

        trainer_class = getattr(transformers, trainer)
        report = load_pretrained_encoder(_plans_network(run), run.checkpoint, trainer_class.checkpoint_source,
                                         trainer_class.inflation, verbose=False)
        assert str(report) in first_log
        assert len(report.loaded) == len(network.encoder.vit.state_dict()) and report.initialised == []
        assert re.search(rf"loaded {len(report.loaded)} tensors.*skipped {len(report.skipped)}.*newly initialised 0",
                         first_log)

    images = sorted((run.dataset.raw_folder / "imagesTs").glob("*_0000.*"))
    labels = set(json.loads((run.model_folder / "dataset.json").read_text())["labels"].values())
    assert images
    for image in images:
        ending = "".join(image.suffixes)
        prediction = run.predictions / image.name.replace("_0000" + ending, ending)
        predicted = _read_image(prediction)
        assert predicted.shape == _read_image(image).shape[:predicted.ndim]
        assert set(np.unique(predicted).tolist()) <= labels
    print(f"{trainer}: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.seconds.items()))


@pytest.mark.slow
def test_emsam_vcvrl_adds_the_similarity_loss_on_sams_last_block(stock_runs):
    """EM-SAM + VCV-RL through the stock commands: the similarity loss is logged and plotted, the heads take the
    transformer's width and are saved beside (not in) the network, which nnUNetv2_predict rebuilt from the plans."""
    run = stock_runs["nnUNetTrainerEMSAM_VCVRL"]
    if run.error is not None:
        raise run.error
    fold = run.model_folder / "fold_0"
    log = "".join(_training_logs(fold))
    similarity = [float(v) for v in re.findall(r"train_similarity_loss ([-0-9.e+na]+)", log)]
    assert len(similarity) == 1 and math.isfinite(similarity[0]) and similarity[0] > 0
    assert (fold / "progress_vcvrl.png").stat().st_size > 0
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    state = checkpoint["vcvrl"]["state_dict"]
    assert int(state["iteration"]) == 2  # one epoch of two iterations
    assert state["heads.projector.0.weight"].shape[1] == TINY_SAM["embed_dim"]  # SAM's last tapped block
    assert not any(k.startswith(("heads", "descriptors", "vcvrl")) for k in checkpoint["network_weights"])


@pytest.mark.slow
def test_c_continues_a_transformer_training_from_its_checkpoint(stock_runs):
    run = stock_runs[RESUMED]
    if run.error is not None:
        raise run.error
    fold = run.model_folder / "fold_0"
    first, resumed = _training_logs(fold)

    def epochs(log):
        return [int(e) for e in re.findall(r": Epoch (\d+)\s*$", log, re.MULTILINE)]

    # the second run starts at epoch 1 (loaded from checkpoint_final), and reads no pretrained file
    assert epochs(first) == [0] and epochs(resumed) == [1]
    assert f"continuing a training: encoder weights come from its checkpoint, {run.variable} is not read" in resumed
    assert "pretrained encoder from" not in resumed
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert len(checkpoint["logging"]["train_losses"]) == 2  # the first run's epoch kept in nnU-Net's log


@pytest.mark.slow
def test_nnunet_pretrained_weights_override_the_release_checkpoint(stock_runs):
    """``-pretrained_weights`` (an nnU-Net checkpoint) is applied after the trainer's own encoder weights."""
    from nnunet_ext.networks.pretrained import read_checkpoint

    run = stock_runs[FINE_TUNED]
    if run.error is not None:
        raise run.error
    fine_tuned = run.model_folder / "fold_1"
    log = run.log.read_text()
    start = log.index("-pretrained_weights")  # the fine-tuning command line, then its output
    ours = log.index(f"pretrained encoder from {run.checkpoint.parent / 'sam_vit_b_tiny_other.pth'} [sam]", start)
    nnunet = log.index("Loading pretrained weights from file", start)
    assert ours < nnunet  # the release checkpoint is loaded first, nnU-Net's weights then replace it
    assert "encoder.vit.blocks.0.attn.qkv.weight" in log[nnunet:]

    name = "encoder.vit.blocks.0.attn.qkv.weight"
    tuned = torch.load(fine_tuned / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    source = torch.load(run.model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                        weights_only=False)
    other_sam = read_checkpoint(run.checkpoint.parent / "sam_vit_b_tiny_other.pth")
    from_nnunet = float((tuned["network_weights"][name] - source["network_weights"][name]).abs().mean())
    from_release = float((tuned["network_weights"][name] - other_sam["image_encoder.blocks.0.attn.qkv.weight"])
                         .abs().mean())
    assert from_nnunet < 0.25 * from_release  # two small SGD steps away from fold 0's weights


@pytest.mark.slow
def test_pretrained_trainer_with_its_variable_unset_needs_nnunet_weights(stock_runs, monkeypatch):
    """Without the release file, a pretrained trainer trains only when nnU-Net loaded weights (-pretrained_weights);
    otherwise it stops before loading data, naming the variable."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_ext.nnunet.commands import applied_environment

    run = stock_runs[FINE_TUNED]
    if run.error is not None:
        raise run.error
    plans = json.loads((run.model_folder / "plans.json").read_text())
    dataset_json = json.loads((run.model_folder / "dataset.json").read_text())
    monkeypatch.delenv(run.variable, raising=False)
    with applied_environment(run.dataset.env):  # what nnUNetv2_train does, in this process
        trainer = nnUNetTrainerEMSAM({**plans, "continue_training": False}, run.configuration, 2, dataset_json,
                                     torch.device("cpu"))
        trainer.initialize()  # no error yet: nnU-Net applies -pretrained_weights after initialize
        with pytest.raises(FileNotFoundError, match=rf"(?s){run.variable} is not set.*-pretrained_weights FILE"):
            trainer.on_train_start()
        assert trainer.dataloader_train is None  # stopped before any data was loaded
        load_pretrained_weights(trainer.network, str(run.model_folder / "fold_0" / "checkpoint_final.pth"))
        trainer.check_encoder_weights()  # nnU-Net's weights are in: training may start

    # a variable naming no file (e.g. a stale one on the machine that runs --val) behaves the same: no error before
    # training, and the error names the variable and the file when nothing else loaded the encoder
    monkeypatch.setenv(run.variable, str(run.model_folder / "moved_away.pth"))
    with applied_environment(run.dataset.env):
        trainer = nnUNetTrainerEMSAM({**plans, "continue_training": False}, run.configuration, 3, dataset_json,
                                     torch.device("cpu"))
        trainer.initialize()
        with pytest.raises(FileNotFoundError, match=rf"(?s){run.variable}=.*moved_away.pth: no such file.*"
                                                    r"-pretrained_weights FILE"):
            trainer.on_train_start()
