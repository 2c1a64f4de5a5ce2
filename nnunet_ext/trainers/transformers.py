"""Transformer trainers: EM-SAM, ViT from scratch, pretrained ViTs (timm, MAE, DINO, BEiT) and inflated 3D ViTs.

All are thin nnU-Net trainers. The network comes from the plans (``nnunet-ext plans-vit`` writes them, naming
:class:`nnunet_ext.networks.unetr.ViTUNETR`), so ``nnUNetv2_predict`` rebuilds it without the trainer's help; the
trainers add the AxonCallosumEM recipe (all parameters trained with SGD, linear warm-up then cosine decay) and read
pretrained encoder weights from the local file that an environment variable names. Those weights are loaded once in
:meth:`initialize`, before nnU-Net applies ``-pretrained_weights``, which keeps working and takes precedence (the
variable may then be left unset: training refuses to start only when nothing loaded the encoder); a training
continued with ``--c`` takes its weights from its checkpoint and does not read the variable, and
``nnUNetv2_train --val`` needs no file (when the variable names one, it is read and then replaced by the checkpoint). Prediction never needs the file (the trained weights are in the nnU-Net checkpoint).

Usage::

    nnunet-ext plans-vit -d 1 -c 2d --backbone sam_vit_b          # writes nnUNetPlans_sam_vit_b (1024 x 1024)
    nnUNetv2_preprocess -d 1 -plans_name nnUNetPlans_sam_vit_b -c 2d
    export NNUNET_EXT_SAM_CHECKPOINT=/data/weights/sam_vit_b_01ec64.pth
    nnUNetv2_train 1 2d 0 -p nnUNetPlans_sam_vit_b -tr nnUNetTrainerEMSAM
"""
from __future__ import annotations

import math
import os

import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_ext.networks.pretrained import checkpoint_path_from_env, load_pretrained_encoder
from nnunet_ext.nnunet.plans_vit import check_vit_configuration
from nnunet_ext.trainers.vcvrl import nnUNetTrainerVCVRL


class WarmupCosineLRScheduler(_LRScheduler):
    """Linear warm-up to ``initial_lr`` over ``warmup_steps``, then cosine decay to 0 at ``max_steps``.

    Stepped like nnU-Net's ``PolyLRScheduler``: ``step(current_epoch)`` sets the rate of that epoch.
    """

    def __init__(self, optimizer, initial_lr: float, warmup_steps: int, max_steps: int, current_step: int = None):
        self.initial_lr = initial_lr
        self.warmup_steps = max(0, int(warmup_steps))
        self.max_steps = max(self.warmup_steps + 1, int(max_steps))
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.initial_lr * (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / (self.max_steps - self.warmup_steps))
        return 0.5 * self.initial_lr * (1.0 + math.cos(math.pi * progress))

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


class nnUNetTrainerViT(nnUNetTrainer):
    """The plans' transformer UNETR trained from scratch (ViT-B/16 plans: AxonCallosumEM's "scratched ViT").

    AxonCallosumEM's recipe for every transformer: the whole network trained with SGD (momentum 0.9), linear warm-up
    over the first 5 % of epochs, then cosine decay. nnU-Net's Dice + cross-entropy loss with deep supervision
    replaces the paper's binary cross-entropy (it handles axon and myelin as classes).
    """

    #: backbone families the trainer accepts (None: any) and the dimension it needs (None: any)
    backbone_families: tuple[str, ...] | None = None
    spatial_dims: int | None = None
    #: environment variable naming the pretrained checkpoint (None: train from scratch)
    checkpoint_variable: str | None = None
    checkpoint_description: str = "the pretrained checkpoint"
    checkpoint_source: str = "auto"
    inflation: str = "centre"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnUNetv2_train --c passes this in the plans (and the base class pops it)
        resuming = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.resuming = resuming
        # the patch embedding as initialised, kept while the release checkpoint is not loaded (variable unset)
        self._encoder_at_initialisation: torch.Tensor | None = None
        self._missing_weights_error: FileNotFoundError | None = None
        self.initial_lr = 1e-2
        self.momentum = 0.9
        self.warmup_fraction = 0.05

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        check_vit_configuration(configuration_manager, cls.__name__, cls.backbone_families, cls.spatial_dims)
        return get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            allow_init=True, deep_supervision=enable_deep_supervision)

    def initialize(self):
        super().initialize()
        if self.checkpoint_variable is None:
            return
        if self.resuming and any(os.path.isfile(os.path.join(self.output_folder, f"checkpoint_{kind}.pth"))
                                 for kind in ("final", "latest", "best")):
            self.print_to_log_file("continuing a training: encoder weights come from its checkpoint, "
                                   f"{self.checkpoint_variable} is not read")
            return
        try:
            path = checkpoint_path_from_env(self.checkpoint_variable, self.checkpoint_description)
        except FileNotFoundError as error:
            # variable unset or naming no file: nnU-Net may still load every weight itself (-pretrained_weights,
            # --val, which never calls on_train_start); whether training may start is decided in on_train_start
            self._encoder_at_initialisation = self._patch_embedding().detach().clone()
            self._missing_weights_error = error
            return
        report = load_pretrained_encoder(self._plain_network(), path, self.checkpoint_source, self.inflation,
                                         verbose=False)
        self.print_to_log_file(str(report))

    def _plain_network(self):
        # by type, not self.is_ddp: the network is wrapped in DDP only at the end of nnU-Net's initialize
        network = self.network.module if isinstance(self.network, torch.nn.parallel.DistributedDataParallel) \
            else self.network
        return getattr(network, "_orig_mod", network)  # torch.compile wrapper

    def _patch_embedding(self) -> torch.Tensor:
        return self._plain_network().encoder.vit.patch_embed.proj.weight

    def check_encoder_weights(self) -> None:
        """Refuse to train a pretrained trainer whose encoder nothing loaded (its variable unset, no nnU-Net weights).

        Raises
        ------
        FileNotFoundError
            Naming the environment variable and the alternatives.
        """
        if self._encoder_at_initialisation is None:
            return
        if torch.equal(self._encoder_at_initialisation, self._patch_embedding().detach()):
            raise FileNotFoundError(
                f"{self._missing_weights_error}\n{self.__class__.__name__} starts from {self.checkpoint_description}, "
                f"read from the local file {self.checkpoint_variable} names (nothing is downloaded). To start from an "
                f"nnU-Net checkpoint instead, pass nnUNetv2_train ... -pretrained_weights FILE; to train from "
                f"scratch, use nnUNetTrainerViT.")
        self.print_to_log_file(f"{self.checkpoint_variable} unset or naming no file: encoder weights come from "
                               f"nnU-Net (-pretrained_weights)")
        self._encoder_at_initialisation = None

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.check_encoder_weights()  # after nnU-Net applied -pretrained_weights, before any data is loaded
        super().on_train_start()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay)
        warmup = max(1, round(self.warmup_fraction * self.num_epochs))
        return optimizer, WarmupCosineLRScheduler(optimizer, self.initial_lr, warmup, self.num_epochs)


class nnUNetTrainerEMSAM(nnUNetTrainerViT):
    """EM-SAM (AxonCallosumEM): SAM's image encoder without neck or prompts, fine-tuned whole with a UNETR decoder.

    Plans: ``nnunet-ext plans-vit --backbone sam_vit_b`` (1024 x 1024 patches, batch 2). Weights: the original
    ``sam_vit_b_01ec64.pth`` (or ViT-L/H for ``sam_vit_l``/``sam_vit_h`` plans) named by
    ``NNUNET_EXT_SAM_CHECKPOINT``.
    """

    backbone_families = ("sam",)
    spatial_dims = 2
    checkpoint_variable = "NNUNET_EXT_SAM_CHECKPOINT"
    checkpoint_description = "the original SAM checkpoint (sam_vit_b_01ec64.pth, keys image_encoder.*)"
    checkpoint_source = "sam"


class nnUNetTrainerEMSAM_VCVRL(nnUNetTrainerVCVRL, nnUNetTrainerEMSAM):
    """EM-SAM trained with the VCV-RL similarity loss (:class:`~nnunet_ext.trainers.vcvrl.nnUNetTrainerVCVRL`).

    Everything of :class:`nnUNetTrainerEMSAM` (plans, ``NNUNET_EXT_SAM_CHECKPOINT``, SGD with warm-up and cosine decay,
    whose schedule the SimSiam heads follow as a second parameter group) plus ``w * L_SIM`` on the output of SAM's
    last tapped block (block 12 for ViT-B: 768 channels at 1/16 of the patch, 64 x 64 at 1024 x 1024). That map is
    the encoder's deepest representation and the bottleneck the UNETR decoder starts from, the counterpart of the
    U-Net latent code on which the paper applies the loss; the decoder's top features would instead shape the
    convolutional decoder, not the pretrained encoder. ``vcvrl_config.encoder_stage`` picks another tapped block
    (0..3: blocks 3, 6, 9, 12). Prediction builds the plain EM-SAM network (the heads are not part of it).
    """


class nnUNetTrainerViTPretrained(nnUNetTrainerViT):
    """ViT initialised from a timm-format checkpoint (``.pth``, ``.safetensors``) named by NNUNET_EXT_VIT_CHECKPOINT."""

    backbone_families = ("vit",)
    checkpoint_variable = "NNUNET_EXT_VIT_CHECKPOINT"
    checkpoint_description = "a timm-format ViT checkpoint (.pth or .safetensors)"


class nnUNetTrainerViTMAE(nnUNetTrainerViT):
    """ViT-B/16 from MAE's release (``mae_pretrain_vit_base.pth``) named by NNUNET_EXT_MAE_CHECKPOINT."""

    backbone_families = ("vit",)
    checkpoint_variable = "NNUNET_EXT_MAE_CHECKPOINT"
    checkpoint_description = "MAE's ViT checkpoint (mae_pretrain_vit_base.pth)"
    checkpoint_source = "mae"


class nnUNetTrainerViTDINO(nnUNetTrainerViT):
    """ViT-B/16 from DINO's release (``dino_vitbase16_pretrain.pth``) named by NNUNET_EXT_DINO_CHECKPOINT."""

    backbone_families = ("vit",)
    checkpoint_variable = "NNUNET_EXT_DINO_CHECKPOINT"
    checkpoint_description = "DINO's ViT checkpoint (dino_vitbase16_pretrain.pth)"
    checkpoint_source = "dino"


class nnUNetTrainerViTBEiT(nnUNetTrainerViT):
    """BEiT-B/16 from BEiT's release (``beit_base_patch16_224_pt22k.pth``) named by NNUNET_EXT_BEIT_CHECKPOINT.

    Plans: ``nnunet-ext plans-vit --backbone beit_b``.
    """

    backbone_families = ("beit",)
    checkpoint_variable = "NNUNET_EXT_BEIT_CHECKPOINT"
    checkpoint_description = "BEiT's checkpoint (beit_base_patch16_224_pt22k.pth)"
    checkpoint_source = "beit"


class nnUNetTrainerViT3DInflated(nnUNetTrainerViT):
    """3D ViT initialised by inflating a 2D ViT (DINO in the BigNeuron paper; MAE or timm work too), centre strategy.

    Plans: ``nnunet-ext plans-vit -c 3d_fullres --backbone vit_b [--patch-embed-size 5 16 16]``. Weights:
    NNUNET_EXT_INFLATE_CHECKPOINT.
    """

    backbone_families = ("vit",)
    spatial_dims = 3
    checkpoint_variable = "NNUNET_EXT_INFLATE_CHECKPOINT"
    checkpoint_description = "a 2D ViT checkpoint to inflate (DINO, MAE or timm format)"
    inflation = "centre"


class nnUNetTrainerViT3DInflatedAverage(nnUNetTrainerViT3DInflated):
    """As :class:`nnUNetTrainerViT3DInflated` with the average strategy (2D kernel / k_d on every slice)."""

    inflation = "average"
