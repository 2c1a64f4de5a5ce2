"""VCV-RL trainers: nnU-Net training plus a voxel-wise cross-volume SimSiam loss on the encoder (Wang et al., 2021).

``nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerVCVRL`` trains nnU-Net's own network with
``loss = nnU-Net's segmentation loss + w * L_SIM`` (see :mod:`nnunet_ext.trainers.losses.vcvrl_loss`). The SimSiam
heads and pool descriptors live beside ``self.network``, not in it: the saved network weights, the plans and
``nnUNetv2_predict`` are those of the base architecture, so inference costs exactly what it costs for
``nnUNetTrainer``. Their state (and the iteration counter of the descriptor schedule) is stored under the extra
checkpoint key ``'vcvrl'``, so ``--c`` resumes them; the optimiser updates them as a second parameter group.

Variants change one setting of :class:`~nnunet_ext.trainers.losses.vcvrl_loss.VCVRLConfig` each; subclass and set
``vcvrl_config`` for other combinations.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import List

import numpy as np
import torch
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_ext.io.atomic import atomic_output_path, save_figure
from nnunet_ext.trainers.cpu import CPUSmokeSchedule
from nnunet_ext.trainers.losses.vcvrl_loss import VCVRLConfig, VoxelSimSiamLoss, label_pools, region_pools

SIMILARITY_LOG_KEY = "train_similarity_losses"
CHECKPOINT_KEY = "vcvrl"
PROGRESS_PLOT = "progress_vcvrl.png"


class nnUNetTrainerVCVRL(nnUNetTrainer):
    """nnU-Net training with the VCV-RL similarity loss on the bottleneck: hybrid anchors, strict descriptors.

    ``train_loss`` in nnU-Net's log and plot stays the segmentation loss (comparable with ``val_loss`` and with
    ``nnUNetTrainer``); the similarity loss ``L_SIM`` is logged per epoch as ``train_similarity_loss`` and drawn in
    ``progress_vcvrl.png``. The optimised loss is ``train_loss + w * train_similarity_loss``.
    """

    vcvrl_config: VCVRLConfig = VCVRLConfig()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.vcvrl_loss: VoxelSimSiamLoss | None = None  # built with the optimiser, see configure_optimizers
        self._encoder_features = None  # set by the encoder's forward hook
        self._ensure_similarity_log()

    # -- network access -------------------------------------------------------------------------------------------
    def _plain_network(self) -> torch.nn.Module:
        """``self.network`` without its DDP and ``torch.compile`` wrappers (as nnU-Net unwraps it).

        By type, not by ``self.is_ddp``: nnU-Net calls ``configure_optimizers`` (which needs the encoder) before it
        wraps the network in DDP.
        """
        module = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        return module._orig_mod if isinstance(module, OptimizedModule) else module

    def _encoder(self) -> torch.nn.Module:
        encoder = getattr(self._plain_network(), "encoder", None)
        if encoder is None:
            raise RuntimeError(f"{self.__class__.__name__} needs a network with an 'encoder' submodule returning its "
                               f"stage outputs (nnU-Net's PlainConvUNet, ResidualEncoderUNet, nnunet-ext's "
                               f"ViTUNETR); "
                               f"{type(self._plain_network()).__name__} has none")
        return encoder

    def _encoder_channels(self) -> int:
        channels = getattr(self._encoder(), "output_channels", None)
        if channels is None:
            raise RuntimeError(f"cannot tell the channels of {type(self._encoder()).__name__}'s outputs (no "
                               f"'output_channels' attribute)")
        channels = [channels] if isinstance(channels, int) else list(channels)
        try:
            return int(channels[self.vcvrl_config.encoder_stage])
        except IndexError:
            raise ValueError(f"encoder_stage {self.vcvrl_config.encoder_stage} does not exist: the encoder has "
                             f"{len(channels)} stages") from None

    def _num_pools(self) -> int:
        heads = self.label_manager.num_segmentation_heads
        return heads + 1 if self.label_manager.has_regions else heads  # regions get a background pool

    # -- set-up ---------------------------------------------------------------------------------------------------
    def initialize(self):
        super().initialize()
        # A hook rather than calling encoder and decoder ourselves: the forward keeps going through the DDP and
        # torch.compile wrappers, and the encoder runs once. It keeps no state of its own that torch.compile would
        # have to guard on (no on/off switch), so one compiled graph serves training and validation.
        self._encoder().register_forward_hook(self._keep_encoder_output)
        self._broadcast_vcvrl_state()

    def configure_optimizers(self):
        if self.vcvrl_loss is None:
            total_iterations = max(1, self.num_epochs * self.num_iterations_per_epoch)
            self.vcvrl_loss = VoxelSimSiamLoss(self._encoder_channels(), self._num_pools(), total_iterations,
                                               self.vcvrl_config).to(self.device)
        optimizer, lr_scheduler = super().configure_optimizers()
        # a second group of the same optimiser: same update rule, learning rate schedule and weight decay
        optimizer.add_param_group({"params": list(self.vcvrl_loss.parameters())})
        return optimizer, lr_scheduler

    def _keep_encoder_output(self, module, inputs, output) -> None:
        self._encoder_features = output[self.vcvrl_config.encoder_stage] if isinstance(output, (list, tuple)) \
            else output

    # -- training -------------------------------------------------------------------------------------------------
    def _pools(self, output, target):
        logits = output[0] if isinstance(output, (list, tuple)) else output
        full_target = target[0] if isinstance(target, (list, tuple)) else target
        if self.label_manager.has_regions:
            return region_pools(full_target, logits, has_ignore_channel=self.label_manager.has_ignore_label)
        return label_pools(full_target, logits, self.label_manager.ignore_label)

    def _trained_parameters(self) -> list:
        return list(self.network.parameters()) + list(self.vcvrl_loss.parameters())

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        self._encoder_features = None
        # mixed precision exactly as nnU-Net's train_step: autocast (its default dtype, float16) on CUDA only, and
        # nnU-Net's GradScaler below
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            segmentation_loss = self.loss(output, target)
        features, self._encoder_features = self._encoder_features, None
        if features is None:
            raise RuntimeError("the encoder's forward hook did not run: the network must call its 'encoder' "
                               "submodule in forward")
        # float32 and no autocast: pool means sum many voxels, and cosines of half-precision vectors are coarse (the
        # loss also ensures this itself, see VoxelSimSiamLoss.forward)
        with torch.autocast(self.device.type, enabled=False) if self.device.type == "cuda" else dummy_context():
            with torch.no_grad():
                pools = self._pools(output, target)
            similarity_loss = self.vcvrl_loss(features.float(), pools)
        loss = segmentation_loss + self.vcvrl_config.weight * similarity_loss

        parameters = self._trained_parameters()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self._average_head_gradients()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._average_head_gradients()
            torch.nn.utils.clip_grad_norm_(parameters, 12)
            self.optimizer.step()
        self._average_descriptors()
        return {"loss": segmentation_loss.detach().cpu().numpy(),
                "similarity_loss": similarity_loss.detach().cpu().numpy()}

    # -- DDP (nnUNetv2_train -num_gpus N) -------------------------------------------------------------------------
    # nnU-Net wraps only self.network in DistributedDataParallel, which starts every worker from rank 0's weights and
    # averages the network's gradients in backward. The heads and descriptors live outside it, so the same is done
    # for them here: rank 0's initial state is broadcast, the heads' gradients averaged after backward (before the
    # grad scaler unscales and the gradients are clipped, as DDP's are), and descriptors and the heads' BatchNorm
    # statistics averaged after each step / epoch, so that every worker holds the same VCV-RL state and rank 0's
    # checkpoint is everyone's. Pools and anchors stay per worker (each worker's share of the batch).
    def _broadcast_vcvrl_state(self) -> None:
        """Every DDP worker starts from rank 0's heads, descriptors and iteration counter."""
        if not self.is_ddp:
            return
        for tensor in list(self.vcvrl_loss.parameters()) + list(self.vcvrl_loss.buffers()):
            if tensor.dtype == torch.bool:  # not every back end broadcasts bool tensors
                as_bytes = tensor.data.to(torch.uint8)
                dist.broadcast(as_bytes, src=0)
                tensor.data.copy_(as_bytes.bool())
            else:
                dist.broadcast(tensor.data, src=0)

    def _average_head_gradients(self) -> None:
        """DDP averages the network's gradients; the heads are outside it, so average theirs here (one all-reduce)."""
        if not self.is_ddp:
            return
        parameters = list(self.vcvrl_loss.parameters())
        for parameter in parameters:
            if parameter.grad is None:  # a worker whose share of the batch had no pool to compare
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([parameter.grad.reshape(-1) for parameter in parameters])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for parameter, averaged in zip(parameters, flat.split([p.numel() for p in parameters])):
            parameter.grad.copy_(averaged.view_as(parameter.grad))

    def _average_descriptors(self) -> None:
        """Keep descriptors identical on all DDP workers (each sees its share of the batch).

        A pool's descriptor becomes the mean over the workers that have one; workers that have not seen the pool
        yet do not count.
        """
        if not self.is_ddp:
            return
        descriptors = self.vcvrl_loss.descriptors
        seen = descriptors.initialised.float()
        summed = descriptors.values * seen[:, None]
        dist.all_reduce(summed)
        dist.all_reduce(seen)
        descriptors.values.copy_(summed / seen.clamp(min=1)[:, None])
        descriptors.initialised.copy_(seen > 0)

    def _average_head_statistics(self) -> None:
        """Average the heads' BatchNorm running statistics over DDP workers (training uses batch statistics; the
        running ones are only saved, and should be the same whichever worker saves)."""
        if not self.is_ddp:
            return
        for module in self.vcvrl_loss.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for buffer in (module.running_mean, module.running_var):
                    dist.all_reduce(buffer)
                    buffer /= dist.get_world_size()
                if module.num_batches_tracked is not None:
                    dist.all_reduce(module.num_batches_tracked, op=dist.ReduceOp.MAX)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.vcvrl_loss.train()

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        self._average_head_statistics()
        losses = collate_outputs(train_outputs)["similarity_loss"]
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, losses)
            losses = np.concatenate([np.atleast_1d(i) for i in gathered])
        self.logger.log(SIMILARITY_LOG_KEY, float(np.mean(losses)), self.current_epoch)

    def on_epoch_end(self):
        self.print_to_log_file("train_similarity_loss",
                               np.round(self.logger.get_value(SIMILARITY_LOG_KEY, step=-1), decimals=4))
        super().on_epoch_end()
        if self.local_rank == 0:
            self._plot_similarity_progress()

    # -- logging --------------------------------------------------------------------------------------------------
    def _logged_values(self) -> dict:
        logger = getattr(self.logger, "local_logger", self.logger)  # MetaLogger (nnU-Net >= 2.6) or nnUNetLogger
        return logger.my_fantastic_logging

    def _ensure_similarity_log(self) -> None:
        """nnU-Net's logger accepts only known keys, one value per epoch: add ours (NaN for epochs without it)."""
        logged = self._logged_values()
        if SIMILARITY_LOG_KEY not in logged:
            logged[SIMILARITY_LOG_KEY] = [float("nan")] * len(logged.get("train_losses", []))

    def _plot_similarity_progress(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        logged = self._logged_values()
        epochs = min(len(logged["train_losses"]), len(logged["val_losses"]), len(logged[SIMILARITY_LOG_KEY]))
        x = np.arange(epochs)
        figure, axes = plt.subplots(figsize=(9, 5))
        axes.plot(x, logged["train_losses"][:epochs], color="b", label="segmentation loss (train)")
        axes.plot(x, logged["val_losses"][:epochs], color="r", label="segmentation loss (val)")
        axes.set_xlabel("epoch")
        axes.set_ylabel("segmentation loss")
        similarity_axes = axes.twinx()
        similarity_axes.plot(x, logged[SIMILARITY_LOG_KEY][:epochs], color="m", ls="--",
                             label=f"similarity loss L_SIM (train, weight {self.vcvrl_config.weight:g})")
        similarity_axes.set_ylabel("similarity loss")
        handles = axes.get_legend_handles_labels()[0] + similarity_axes.get_legend_handles_labels()[0]
        axes.legend(handles, [h.get_label() for h in handles], loc="upper right")
        axes.set_title(f"{self.__class__.__name__}: segmentation and VCV-RL similarity losses")
        figure.tight_layout()
        save_figure(figure, os.path.join(self.output_folder, PROGRESS_PLOT), dpi="figure")

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or self.vcvrl_loss is None:
            return
        # nnU-Net writes a fixed set of keys; add ours to its file (read back, not rebuilt, so nothing of nnU-Net's
        # own checkpoint content is lost), replacing it atomically
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = {"config": self.vcvrl_config.to_dict(),
                                      "state_dict": self.vcvrl_loss.state_dict()}
        with atomic_output_path(filename) as temporary:
            torch.save(checkpoint, temporary)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self._ensure_similarity_log()  # the logger's content was just replaced by the checkpoint's
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            self.print_to_log_file("WARNING: the checkpoint has no VCV-RL state (written by another trainer?); "
                                   "the SimSiam heads and descriptors start afresh")
            return
        if state["config"] != self.vcvrl_config.to_dict():
            raise ValueError(f"the checkpoint's VCV-RL settings {state['config']} differ from "
                             f"{self.__class__.__name__}'s {self.vcvrl_config.to_dict()}")
        self.vcvrl_loss.load_state_dict(state["state_dict"])


class nnUNetTrainerVCVRL_randomAnchors(nnUNetTrainerVCVRL):
    """VCV-RL with all anchors drawn uniformly from each pool (the paper's AS_random)."""

    vcvrl_config = replace(VCVRLConfig(), anchor_sampling="random")


class nnUNetTrainerVCVRL_hardAnchors(nnUNetTrainerVCVRL):
    """VCV-RL with anchors drawn from misclassified voxels only (AS_PH; random fallback where there are too few)."""

    vcvrl_config = replace(VCVRLConfig(), anchor_sampling="hard")


class nnUNetTrainerVCVRL_relaxedDescriptor(nnUNetTrainerVCVRL):
    """VCV-RL with the pool descriptor averaged over the whole pool instead of its correctly classified voxels."""

    vcvrl_config = replace(VCVRLConfig(), pairing="relaxed")


class nnUNetTrainerVCVRL_noMomentum(nnUNetTrainerVCVRL):
    """VCV-RL with descriptors from the current batch only (no momentum update; the paper's ablation E)."""

    vcvrl_config = replace(VCVRLConfig(), momentum=False)


class nnUNetTrainerVCVRL_voxelPairs(nnUNetTrainerVCVRL):
    """VCV-RL without descriptors: each anchor is paired with another random voxel of its pool."""

    vcvrl_config = replace(VCVRLConfig(), pairing="voxel")


class nnUNetTrainerVCVRL_CPUSmoke(CPUSmokeSchedule, nnUNetTrainerVCVRL):
    """VCV-RL with the short schedule of ``nnUNetTrainerCPUSmoke`` (2 epochs of 4 iterations) for tests."""
