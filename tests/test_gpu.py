"""CUDA: mixed precision, torch.compile, block-wise ``segment`` and DDP on a GPU (marker ``gpu``).

Every CUDA test carries the ``gpu`` marker and is skipped, with the reason, where ``torch.cuda.is_available()`` is
False (``pytest -m gpu -rs`` lists them). The autocast checks also run on the CPU with bfloat16 (unmarked, a few
seconds), so that the checks themselves are exercised where no GPU is:

* each network (nnU-Net's PlainConvUNet, and ViT-UNETR with SAM, ViT and BEiT encoders in 2D and a ViT in 3D) does a
  forward and backward pass under ``torch.autocast`` in float16 (with nnU-Net's GradScaler) and bfloat16: finite
  loss, a finite gradient for every parameter (none unused: DDP needs that), outputs in the autocast dtype; on CUDA
  also through ``torch.compile``;
* VCV-RL's loss and heads under autocast: the similarity is computed in float32 (heads' outputs float32, the same
  value as a float32 computation), gradients finite;
* ``nnunet-ext segment`` on CUDA: a block-wise slide prediction equal to nnU-Net's one-piece prediction of the same
  pixels (in one process, so that cuDNN picks the same kernels), and ``--workers 2`` sharing one GPU gives the same
  labels as one worker;
* ``benchmarks/gpu_check.py --tiny --compile on``: every trainer through the stock ``nnUNetv2_train -device cuda``
  with nnU-Net's mixed precision and torch.compile, and ``nnUNetv2_predict`` on CUDA;
* ``nnUNetv2_train -num_gpus 2`` (needs two GPUs): the same DDP agreement checks as ``test_ddp.py`` on NCCL.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_recording import (RECORD_VARIABLE, VCVRL_TRAINER, VIT_TRAINER, check_network_agrees,  # noqa: E402
                           check_vcvrl_agrees, load_records, write_recording_trainers, write_tiny_sam_plans)
from test_vcvrl_trainer import nnunet_folders  # noqa: E402,F401 - the fixture, for the in-process VCV-RL trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
NO_CUDA = (f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
           f"{torch.version.cuda})")
ON_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]
gpu_only = pytest.mark.skipif(not CUDA, reason=NO_CUDA)

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SAM = {**TINY_VIT, "window_size": 2, "global_attn_indexes": [1]}

# device, autocast dtype: CUDA in both half types, the CPU in bfloat16 (CPU autocast's type)
PRECISIONS = [pytest.param("cuda", torch.float16, marks=ON_CUDA, id="cuda-float16"),
              pytest.param("cuda", torch.bfloat16, marks=ON_CUDA, id="cuda-bfloat16"),
              pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16")]


# ------------------------------------------------------------------------------------------------------ networks
def _network(name: str) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    """(network, input shape without batch and channel, classes), tiny versions of what the trainers build."""
    from nnunet_ext.networks.unetr import ViTUNETR

    if name == "unet2d":
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        network = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, 2, conv_bias=True,
                                norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                                nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
        return network, (32, 32), 3
    if name == "sam2d":
        return ViTUNETR(1, 3, (32, 32), "sam_vit_b", backbone_kwargs=TINY_SAM, decoder_features=8), (32, 32), 3
    if name == "vit2d":
        return ViTUNETR(1, 3, (32, 32), "vit_b", backbone_kwargs=TINY_VIT, decoder_features=8), (32, 32), 3
    if name == "beit2d":
        return ViTUNETR(1, 3, (32, 32), "beit_b", backbone_kwargs=TINY_VIT, decoder_features=8), (32, 32), 3
    if name == "vit3d":
        return ViTUNETR(1, 2, (8, 32, 32), "vit_b", patch_embed_size=(4, 16, 16), backbone_kwargs=TINY_VIT,
                        decoder_features=8), (8, 32, 32), 2
    raise ValueError(name)


NETWORKS = ["unet2d", "sam2d", "vit2d", "beit2d", "vit3d"]


def _deep_supervision_loss(outputs, labels: torch.Tensor, classes: int):
    """nnU-Net's Dice + CE with its deep-supervision wrapper (every output weighted, so every head gets a gradient)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DeepSupervisionWrapper(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                       weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss),
        [1 / 2 ** i for i in range(len(outputs))])
    targets = [F.interpolate(labels.float(), size=o.shape[2:], mode="nearest") for o in outputs]
    return loss(outputs, targets)


def _forward_backward(network, shape, classes, device: str, dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 1, *shape, generator=generator).to(device)
    labels = torch.randint(0, classes, (2, 1, *shape), generator=generator).to(device)
    scaler = None
    if device == "cuda" and dtype == torch.float16:  # nnU-Net's pairing: autocast + GradScaler
        scaler = torch.amp.GradScaler("cuda")
    network.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=dtype):
        outputs = network(image)
        loss = _deep_supervision_loss(outputs, labels, classes)
    assert outputs[0].dtype == dtype, "autocast did not reach the network's output layer"
    assert math.isfinite(float(loss.detach())), float(loss.detach())
    if scaler is not None:
        scaler.scale(loss).backward()
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    missing = [n for n, p in network.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient (DDP would fail): {missing[:5]}"
    bad = [n for n, p in network.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"
    return float(loss.detach())


@pytest.mark.parametrize("device,dtype", PRECISIONS)
@pytest.mark.parametrize("name", NETWORKS)
def test_network_forward_backward_under_autocast(name, device, dtype):
    torch.manual_seed(0)
    network, shape, classes = _network(name)
    _forward_backward(network.to(device).train(), shape, classes, device, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2d", "vit3d"])
def test_dynamo_captures_the_transformer_networks_whole(name):
    """On the CPU, the part of torch.compile that does not generate code: dynamo captures the network in one graph
    (no graph break) and AOTAutograd's joint forward/backward graph trains under autocast. (Measured here: one
    graph and no break for every network of NETWORKS.) Inductor's CUDA code is checked by the test below."""
    torch.manual_seed(0)
    network, shape, classes = _network(name)
    explanation = torch._dynamo.explain(network)(torch.randn(2, 1, *shape))
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    compiled = torch.compile(network.train(), backend="aot_eager")
    for step in range(2):
        _forward_backward(compiled, shape, classes, "cpu", torch.bfloat16, seed=step)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("name", NETWORKS)
def test_compiled_network_forward_backward_under_autocast_on_cuda(name):
    """What nnU-Net does with nnUNet_compile=t on CUDA: torch.compile (inductor) of the network, float16 autocast."""
    torch.manual_seed(0)
    network, shape, classes = _network(name)
    compiled = torch.compile(network.to("cuda").train())
    for step in range(2):  # the second step runs the compiled graphs without recompiling
        _forward_backward(compiled, shape, classes, "cuda", torch.float16, seed=step)


# ------------------------------------------------------------------------------------------------------- VCV-RL
def _blobby_labels(shape, generator, classes=3):
    noise = torch.rand(2, 1, *[max(1, s // 4) for s in shape], generator=generator)
    smooth = F.interpolate(noise, size=shape, mode="bilinear", align_corners=False)
    return (smooth * classes).long().clamp(max=classes - 1)


@pytest.mark.parametrize("device,dtype", PRECISIONS)
def test_vcvrl_loss_and_heads_in_float32_under_autocast(device, dtype):
    from nnunet_ext.trainers.losses.vcvrl_loss import VCVRLConfig, VoxelSimSiamLoss, label_pools

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, stride=4, padding=1), torch.nn.LeakyReLU()).to(device)
    config = VCVRLConfig(num_anchors=64, projector_hidden=64, projector_dim=64, predictor_hidden=16)
    loss_module = VoxelSimSiamLoss(16, 3, 100, config).to(device).train()
    reference_module = VoxelSimSiamLoss(16, 3, 100, config).to(device).train()
    reference_module.load_state_dict(loss_module.state_dict())
    image = torch.randn(2, 1, 32, 32, generator=generator).to(device)
    labels = _blobby_labels((32, 32), generator).to(device)
    logits = torch.randn(2, 3, 32, 32, generator=generator).to(device)
    pools = label_pools(labels, logits)
    head_dtypes = []
    loss_module.heads.register_forward_hook(lambda module, inputs, output: head_dtypes.extend(o.dtype for o in output))

    with torch.autocast(device, dtype=dtype):
        features = encoder(image)
        assert features.dtype == dtype  # the encoder's output is in half precision, as in nnU-Net's forward
        sampling = torch.Generator(device=device).manual_seed(5)
        loss = loss_module(features, pools, generator=sampling)
    assert loss.dtype == torch.float32 and head_dtypes == [torch.float32, torch.float32]
    assert math.isfinite(float(loss)) and float(loss) > 0
    # the same inputs in float32 without autocast give the same value: autocast had no effect inside the loss
    expected = reference_module(features.detach().float(), pools,
                                generator=torch.Generator(device=device).manual_seed(5))
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, parameter in list(loss_module.named_parameters()) + list(encoder.named_parameters()):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert loss_module.descriptors.values.dtype == torch.float32 and loss_module.descriptors.initialised.any()


def test_vcvrl_trainer_step_through_aot_autograd_matches_eager(nnunet_folders):
    """The encoder hook's features through AOTAutograd (the autograd path of inductor, torch.compile's default
    back end, without its code generation): the same losses and weights as eager training."""
    from test_vcvrl_trainer import _batch, _trainer

    torch.manual_seed(0)
    eager = _trainer(patch=(16, 16))
    compiled = _trainer(patch=(16, 16))
    compiled.network.load_state_dict(eager.network.state_dict())
    compiled.vcvrl_loss.load_state_dict(eager.vcvrl_loss.state_dict())
    compiled.network = torch.compile(compiled.network, backend="aot_eager")
    for step in range(2):
        batch = _batch(eager, seed=step)
        torch.manual_seed(100 + step)
        expected = eager.train_step(batch)
        torch.manual_seed(100 + step)
        result = compiled.train_step(batch)
        for key in ("loss", "similarity_loss"):
            assert float(result[key]) == pytest.approx(float(expected[key]), rel=1e-5)
    for a, b in zip(eager.network.parameters(), compiled._plain_network().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- segment
def _run(args, env, timeout=1800):
    result = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-4000:]}\n" \
                                   f"{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def cuda_segment_outputs(smoke_trained_model, tiny_nnunet_dataset, tmp_path_factory):
    """``nnunet-ext segment -device cuda`` on a folder holding one image twice: as a PNG (nnU-Net's one-piece
    prediction) and as a Zarr slide (block-wise, 64-pixel blocks with 48-pixel patches: 9 blocks), with 1 and 2
    Dask workers."""
    import zarr
    from PIL import Image

    model = smoke_trained_model.parent  # .../nnUNetTrainerCPUSmoke__nnUNetPlans_cpu__2d
    tests = sorted((tiny_nnunet_dataset.raw_folder / "imagesTs").glob("*_0000.png"))
    tiles = [np.asarray(Image.open(p).convert("L")) for p in tests]
    side = min(min(t.shape) for t in tiles)
    tiles = [t[:side, :side] for t in tiles] * 4
    image = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]).astype(np.uint8)
    base = tmp_path_factory.mktemp("cuda_segment")
    inputs = base / "inputs"
    inputs.mkdir()
    Image.fromarray(image).save(inputs / "piece.png")
    zarr.open_array(str(inputs / "blocks.zarr"), mode="w", shape=image.shape, chunks=(64, 64), dtype="uint8")[:] = \
        image
    nnunet_ext = Path(sys.executable).parent / "nnunet-ext"
    outputs = {}
    for workers in (1, 2):
        out = base / f"out_workers{workers}"
        _run([nnunet_ext, "segment", "-m", model, "-i", inputs, "-o", out, "-device", "cuda", "--block-size", 64,
              "--workers", workers], tiny_nnunet_dataset.env)
        outputs[workers] = out
    return image, outputs


def _labels(out: Path):
    import zarr
    from PIL import Image

    return (np.asarray(Image.open(out / "piece.png")),
            np.asarray(zarr.open_group(str(out / "blocks_seg.zarr"), mode="r")["labels"][:]))


@pytest.mark.gpu
@gpu_only
def test_blockwise_slide_prediction_equals_one_piece_on_cuda(cuda_segment_outputs):
    image, outputs = cuda_segment_outputs
    piece, blocks = _labels(outputs[1])
    assert piece.shape == blocks.shape == image.shape
    assert len(np.unique(piece)) > 1  # the model segments something
    assert np.array_equal(piece, blocks), f"{int((piece != blocks).sum())} of {piece.size} pixels differ"


@pytest.mark.gpu
@gpu_only
def test_segment_two_workers_share_one_gpu(cuda_segment_outputs):
    _, outputs = cuda_segment_outputs
    one_piece, one_worker = _labels(outputs[1])
    _, two_workers = _labels(outputs[2])
    assert np.array_equal(one_worker, two_workers)
    assert np.array_equal(one_piece, two_workers)


# ------------------------------------------------------------------------------------ the stock commands on CUDA
@pytest.mark.gpu
@pytest.mark.slow
@gpu_only
def test_gpu_check_tiny_on_cuda(tmp_path):
    """Every trainer through nnUNetv2_train -device cuda with nnU-Net's mixed precision and torch.compile, then
    nnUNetv2_predict and segment on CUDA (tiny sizes: minutes, mostly compilation)."""
    out = tmp_path / "gpu_check"
    _run([sys.executable, REPO_ROOT / "benchmarks" / "gpu_check.py", "--tiny", "--compile", "on", "--out", out],
         dict(os.environ), timeout=3600)
    report = json.loads((out / "gpu_check.json").read_text())
    assert not report["failures"]
    for raw in report["training_raw"]:
        timing = raw["timing"]
        assert raw["ok"] and raw["predict_ok"], raw["key"]
        assert timing["compile_active"] and timing["grad_scaler"] and timing["autocast"] == "float16"
        assert timing["peak_allocated_bytes"] > 0 and timing["device"].startswith("cuda")
    assert all(item["ok"] and item["peak_allocated_bytes"] for item in report["segment"])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"needs two CUDA GPUs for nnUNetv2_train -num_gpus 2 ({torch.cuda.device_count()} "
                           f"visible)")
def test_stock_ddp_two_gpus(tiny_nnunet_dataset, tmp_path):
    """The stock ``nnUNetv2_train -num_gpus 2`` (NCCL, GradScaler): workers agree as in test_ddp.py."""
    ds = tiny_nnunet_dataset
    trainers = write_recording_trainers(tmp_path / "trainers")
    env = {**ds.env, "nnUNet_extTrainer": ds.env["nnUNet_extTrainer"] + os.pathsep + str(trainers),
           "nnUNet_results": str(tmp_path / "nnUNet_results"), "nnUNet_compile": "f",
           RECORD_VARIABLE: str(tmp_path / "records")}
    vit_plans = write_tiny_sam_plans(ds, env)
    train = Path(sys.executable).parent / "nnUNetv2_train"
    for trainer, plans in ((VCVRL_TRAINER, ds.plans), (VIT_TRAINER, vit_plans)):
        _run([train, ds.dataset_id, "2d", 0, "-p", plans, "-tr", trainer, "-num_gpus", 2, "-device", "cuda"], env)
    records = load_records(tmp_path / "records", VCVRL_TRAINER)
    assert [r["device"] for r in records] == ["cuda:0", "cuda:1"]
    check_network_agrees(records)
    check_vcvrl_agrees(records)
    check_network_agrees(load_records(tmp_path / "records", VIT_TRAINER))
