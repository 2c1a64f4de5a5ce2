"""Voxel-wise cross-volume SimSiam loss (VCV-RL, Wang et al., MLMI 2021) on the encoder of an nnU-Net network.

Each class (or region) of the batch forms one *pool* of voxels, gathered from the ground truth of every volume of the
batch (cross-volume). From each pool ``N`` *anchor* voxels are sampled (randomly, from the voxels the network
currently gets wrong, or half and half), and each anchor is paired with either the pool *descriptor* (the mean
embedding of the pool, or of its correctly classified voxels, smoothed over iterations by a momentum update) or
another voxel of the pool. A SimSiam projector/predictor pair and a symmetrised, stop-gradient cosine loss pull the
pair together. The heads and descriptors exist only during training.

Voxel embeddings are the encoder's low-resolution feature map brought to input resolution by (bi/tri)linear
interpolation, exactly as ``torch.nn.functional.interpolate(..., align_corners=False)`` would, but evaluated only
where needed: at the sampled voxels (:func:`sample_voxel_embeddings`) and, for pool means, through the adjoint of the
interpolation (:func:`pooled_embedding_means`). No full-resolution d-channel tensor is ever built.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ANCHOR_SAMPLING = {"random": 0.0, "hybrid": 0.5, "hard": 1.0}  # share of anchors drawn from misclassified voxels
PAIRINGS = ("strict", "relaxed", "voxel")


@dataclass(frozen=True)
class VCVRLConfig:
    """Settings of the VCV-RL loss; defaults are the paper's best model (hybrid anchors, strict descriptor).

    Attributes
    ----------
    num_anchors : int
        Anchors ``N`` per pool and batch (paper: 512). Pools smaller than ``N`` use all their voxels.
    anchor_sampling : {'hybrid', 'random', 'hard'}
        ``random``: uniformly from the pool; ``hard``: from the pool's misclassified voxels; ``hybrid``: ``N/2``
        hard and ``N/2`` random. Where too few voxels are misclassified, the shortfall is drawn randomly.
    pairing : {'strict', 'relaxed', 'voxel'}
        Partner of each anchor: the pool descriptor as the mean embedding of the pool's correctly classified voxels
        (``strict``) or of the whole pool (``relaxed``), or another random voxel of the pool (``voxel``).
    momentum : bool
        Smooth descriptors over iterations: ``dsc_k = (1 - a) dsc_now + a dsc_(k-1)`` with ``a`` falling from 1 to
        0 on a cosine schedule over the training (:func:`descriptor_momentum`). ``False`` uses ``dsc_now``.
    weight : float
        ``w`` in ``loss = segmentation loss + w * L_SIM``.
    encoder_stage : int
        Index into the encoder's list of stage outputs; ``-1`` is the bottleneck (the paper's latent code).
    projector_hidden, projector_dim, predictor_hidden : int
        SimSiam head sizes: projector ``d -> 512 -> 512 -> 512``, predictor ``512 -> 128 -> 512`` (paper).
    """

    num_anchors: int = 512
    anchor_sampling: str = "hybrid"
    pairing: str = "strict"
    momentum: bool = True
    weight: float = 1.0
    encoder_stage: int = -1
    projector_hidden: int = 512
    projector_dim: int = 512
    predictor_hidden: int = 128

    def __post_init__(self):
        if self.anchor_sampling not in ANCHOR_SAMPLING:
            raise ValueError(f"anchor_sampling must be one of {sorted(ANCHOR_SAMPLING)}, not {self.anchor_sampling!r}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, not {self.pairing!r}")
        if self.num_anchors < 1:
            raise ValueError(f"num_anchors must be at least 1, not {self.num_anchors}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, not {self.weight}")
        for name in ("projector_hidden", "projector_dim", "predictor_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    @property
    def hard_fraction(self) -> float:
        return ANCHOR_SAMPLING[self.anchor_sampling]

    def to_dict(self) -> dict:
        return asdict(self)


def float32_context(device: torch.device | str):
    """A context in which autocast is off on ``device``: operations run in their inputs' precision (float32 here).

    Only where autocast is on (CUDA or CPU autocast, float16 or bfloat16); elsewhere a null context, because some
    back ends (MPS in older torch) refuse even ``torch.autocast(..., enabled=False)``.
    """
    device_type = torch.device(device).type
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else \
            device_type == "cpu" and torch.is_autocast_cpu_enabled()
    return torch.autocast(device_type, enabled=False) if enabled else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------

def descriptor_momentum(iteration: int, total_iterations: int) -> float:
    """Momentum ``a = (cos(pi k / K) + 1) / 2`` of the descriptor update at iteration ``k`` of ``K``.

    Falls from 1 at ``k = 0`` to 0 at ``k = K`` (clipped outside ``[0, K]``).
    """
    if total_iterations < 1:
        raise ValueError(f"total_iterations must be at least 1, not {total_iterations}")
    k = min(max(int(iteration), 0), int(total_iterations))
    return (math.cos(math.pi * k / total_iterations) + 1.0) / 2.0


# ---------------------------------------------------------------------------------------------------------------
# Interpolation of a low-resolution feature map, evaluated only where needed
# ---------------------------------------------------------------------------------------------------------------

def _linear_source_positions(output_size: int, input_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower/upper source index and upper weight of each output position, as ``interpolate(align_corners=False)``.

    Computed on the CPU in float64 (small 1D tensors; float64 is not available on every accelerator).
    """
    scale = input_size / output_size
    position = ((torch.arange(output_size, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    lower = position.floor().long().clamp_(max=input_size - 1)
    upper = (lower + 1).clamp_(max=input_size - 1)
    return lower, upper, position - lower


def linear_interpolation_matrix(output_size: int, input_size: int, device=None,
                                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Matrix ``U`` (output_size x input_size) with ``interpolate(x, output_size, 'linear')[o] = sum_i U[o, i] x[i]``.

    Rows sum to one; matches ``torch.nn.functional.interpolate`` with ``align_corners=False``.
    """
    lower, upper, upper_weight = _linear_source_positions(output_size, input_size)
    matrix = torch.zeros(output_size, input_size, dtype=torch.float64)
    rows = torch.arange(output_size)
    matrix.index_put_((rows, lower), 1 - upper_weight, accumulate=True)
    matrix.index_put_((rows, upper), upper_weight, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def sample_voxel_embeddings(features: torch.Tensor, flat_index: torch.Tensor,
                            input_shape: Sequence[int]) -> torch.Tensor:
    """Embeddings of chosen input voxels: the feature map linearly interpolated to ``input_shape``, at those voxels.

    Parameters
    ----------
    features : (B, C, *S_f) tensor
        Encoder feature map (2D or 3D).
    flat_index : (P,) long tensor
        Voxels as flat indices into an array of shape ``(B, *input_shape)``.
    input_shape : sequence of int
        Spatial shape of the network input.

    Returns
    -------
    (P, C) tensor
        Equal to ``interpolate(features, input_shape, mode='(bi|tri)linear', align_corners=False)`` gathered at
        ``flat_index``, without building that full-resolution tensor. Differentiable in ``features``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    batch_size, channels, *feature_shape = features.shape
    if len(input_shape) != len(feature_shape):
        raise ValueError(f"features are {len(feature_shape)}D but input shape {input_shape} is {len(input_shape)}D")
    coordinates = torch.unravel_index(flat_index, (batch_size, *input_shape))
    # rows of a (B * prod(S_f), C) table: one gather of whole rows per corner (fast forward and backward)
    table = features.movedim(1, -1).reshape(-1, channels)
    lower_and_upper = []
    for axis, (out_size, in_size) in enumerate(zip(input_shape, feature_shape)):
        lower, upper, upper_weight = (t.to(features.device) for t in _linear_source_positions(out_size, in_size))
        position = coordinates[axis + 1]
        upper_weight = upper_weight.to(features.dtype)[position]
        lower_and_upper.append(((lower[position], 1 - upper_weight), (upper[position], upper_weight)))
    embeddings = None
    for corner in itertools.product((0, 1), repeat=len(input_shape)):
        row, weight = coordinates[0], None
        for axis, side in enumerate(corner):
            axis_index, axis_weight = lower_and_upper[axis][side]
            row = row * feature_shape[axis] + axis_index
            weight = axis_weight if weight is None else weight * axis_weight
        term = weight[:, None] * table.index_select(0, row)
        embeddings = term if embeddings is None else embeddings + term
    return embeddings


def pooled_embedding_means(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean interpolated embedding over each voxel mask, through the adjoint of the interpolation.

    Parameters
    ----------
    features : (B, C, *S_f) tensor
        Encoder feature map.
    masks : (M, B, *S) bool tensor
        ``M`` voxel sets at input resolution ``S``.

    Returns
    -------
    means : (M, C) tensor
        Mean over each mask of ``interpolate(features, S, mode='(bi|tri)linear', align_corners=False)``; zero rows
        for empty masks. Differentiable in ``features``.
    counts : (M,) tensor
        Voxels per mask.
    """
    input_shape = masks.shape[2:]
    feature_shape = features.shape[2:]
    counts = masks.flatten(1).sum(1)
    weights = masks.to(features.dtype)
    # The mean of interpolated values is a weighted sum of low-resolution values; the weights are the masks pushed
    # through the transposed (separable) interpolation, one axis at a time, the contiguous last axis first.
    for axis in reversed(range(len(input_shape))):
        matrix = linear_interpolation_matrix(input_shape[axis], feature_shape[axis], features.device, features.dtype)
        weights = (weights.movedim(2 + axis, -1) @ matrix).movedim(-1, 2 + axis)
    sums = weights.flatten(1) @ features.movedim(1, -1).reshape(-1, features.shape[1])
    return sums / counts.clamp(min=1).to(sums.dtype)[:, None], counts


# ---------------------------------------------------------------------------------------------------------------
# Pools and anchor sampling
# ---------------------------------------------------------------------------------------------------------------

class VoxelPools(NamedTuple):
    """Cross-volume voxel pools of one batch.

    ``members[p]`` marks the voxels (over all volumes) whose ground truth puts them in pool ``p``; ``correct[p]`` the
    members the network currently classifies right. Both are (P, B, *S) bool tensors.
    """

    members: torch.Tensor
    correct: torch.Tensor


def label_pools(target: torch.Tensor, logits: torch.Tensor, ignore_label: int | None = None) -> VoxelPools:
    """One pool per class of a label (softmax) segmentation: class ``c`` is pool ``c``, background included.

    Parameters
    ----------
    target : (B, 1, *S) tensor
        Label map (nnU-Net's full-resolution target).
    logits : (B, C, *S) tensor
        Network output at the same resolution; the prediction is its argmax.
    ignore_label : int, optional
        Voxels with this label belong to no pool.
    """
    if target.ndim != logits.ndim or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"target {tuple(target.shape)} must be (B, 1, *S) matching logits {tuple(logits.shape)}")
    labels = target[:, 0].long()
    classes = torch.arange(logits.shape[1], device=labels.device).view(-1, *[1] * labels.ndim)
    members = labels[None] == classes
    if ignore_label is not None:
        members &= (labels != ignore_label)[None]
    # max(1).indices, not argmax(1): the same first-maximum index, 25x faster on CPU (torch 2.x reduces argmax
    # over a strided class axis slowly)
    correct = members & (logits.max(1).indices == labels)[None]
    return VoxelPools(members, correct)


def region_pools(target: torch.Tensor, logits: torch.Tensor, has_ignore_channel: bool = False) -> VoxelPools:
    """Pools of region-based (sigmoid) training: one per region, then one for voxels in no region (background).

    Parameters
    ----------
    target : (B, R, *S) tensor, or (B, R + 1, *S) with ``has_ignore_channel``
        Region masks as nnU-Net builds them (last channel marks ignored voxels when the dataset has an ignore label).
    logits : (B, R, *S) tensor
        Network output; a voxel is predicted in region ``r`` where ``logits[:, r] > 0``.
    """
    regions = target[:, :-1] if has_ignore_channel else target
    if regions.shape != logits.shape:
        raise ValueError(f"region target {tuple(regions.shape)} does not match logits {tuple(logits.shape)}")
    inside = regions > 0.5
    predicted = logits > 0
    valid = ~(target[:, -1] > 0.5) if has_ignore_channel else torch.ones_like(inside[:, 0])
    background = ~inside.any(1)
    members = torch.cat([inside.movedim(1, 0), background[None]]) & valid[None]
    correct_region = (inside == predicted).movedim(1, 0) & members[:-1]
    correct_background = background & ~predicted.any(1) & valid
    return VoxelPools(members, torch.cat([correct_region, correct_background[None]]))


def random_subset(mask: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat indices of ``min(count, mask.sum())`` distinct ``True`` entries of a flat bool ``mask``, drawn uniformly."""
    candidates = mask.nonzero().squeeze(1)
    count = min(int(count), candidates.numel())
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=mask.device)
    if count == candidates.numel():
        return candidates
    # the smallest of i.i.d. random keys is a uniform sample without replacement; keys only for the allowed entries
    keys = torch.rand(candidates.numel(), generator=generator, device=mask.device)
    return candidates[keys.topk(count, largest=False, sorted=False).indices]


def sample_anchors(members: torch.Tensor, hard: torch.Tensor, num_anchors: int, hard_fraction: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Anchor voxels of one pool.

    Parameters
    ----------
    members : (V,) bool tensor
        Flat pool membership.
    hard : (V,) bool tensor
        Flat mask of misclassified voxels (only those inside the pool count).
    num_anchors : int
        Anchors wanted ``N``.
    hard_fraction : float
        Share of ``N`` drawn from the hard voxels (0 random, 1 purely hard, 0.5 hybrid). When the pool has fewer
        hard voxels, all of them are taken and the rest is drawn from the pool's other voxels (random fallback).

    Returns
    -------
    anchors : (n,) long tensor
        Distinct flat indices, ``n = min(N, pool size)``; hard ones first.
    num_hard : int
        How many of them were drawn as hard voxels.
    """
    hard_anchors = random_subset(hard & members, round(num_anchors * hard_fraction), generator)
    others = members.clone()
    others[hard_anchors] = False
    random_anchors = random_subset(others, num_anchors - hard_anchors.numel(), generator)
    return torch.cat([hard_anchors, random_anchors]), hard_anchors.numel()


def sample_partner_voxels(members: torch.Tensor, anchors: torch.Tensor,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """One random voxel of the pool per anchor, never the anchor itself (the pool needs at least two voxels)."""
    candidates = random_subset(members, anchors.numel() + 1, generator)
    if candidates.numel() < 2:
        raise ValueError("a pool needs at least two voxels to pair voxels with each other")
    candidates = candidates[torch.randperm(candidates.numel(), generator=generator, device=candidates.device)]
    partners = candidates[:anchors.numel()]
    # candidates are distinct, so the next candidate differs from an anchor that drew itself
    spare = candidates[(torch.arange(anchors.numel(), device=anchors.device) + 1) % candidates.numel()]
    return torch.where(partners == anchors, spare, partners)


# ---------------------------------------------------------------------------------------------------------------
# SimSiam heads, descriptors and the loss
# ---------------------------------------------------------------------------------------------------------------

def negative_cosine_with_stopgrad(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L = 1/2 (1 - cos(prediction, stopgrad(target)))`` per row (rows broadcast)."""
    return 0.5 * (1.0 - F.cosine_similarity(prediction, target.detach(), dim=-1))


def symmetric_simsiam_loss(prediction_a: torch.Tensor, projection_a: torch.Tensor, prediction_b: torch.Tensor,
                           projection_b: torch.Tensor) -> torch.Tensor:
    """Per-pair symmetrised SimSiam loss ``1/2 L(a, b) + 1/2 L(b, a)`` (gradient never flows into the targets)."""
    return 0.5 * negative_cosine_with_stopgrad(prediction_a, projection_b) + \
        0.5 * negative_cosine_with_stopgrad(prediction_b, projection_a)


class SimSiamHeads(nn.Module):
    """SimSiam projector ``f`` (3-layer MLP) and predictor ``h`` (2-layer bottleneck MLP) on voxel embeddings."""

    def __init__(self, in_channels: int, projector_hidden: int = 512, projector_dim: int = 512,
                 predictor_hidden: int = 128):
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(in_channels, projector_hidden, bias=False), nn.BatchNorm1d(projector_hidden), nn.ReLU(True),
            nn.Linear(projector_hidden, projector_hidden, bias=False), nn.BatchNorm1d(projector_hidden), nn.ReLU(True),
            nn.Linear(projector_hidden, projector_dim, bias=False), nn.BatchNorm1d(projector_dim, affine=False))
        self.predictor = nn.Sequential(
            nn.Linear(projector_dim, predictor_hidden, bias=False), nn.BatchNorm1d(predictor_hidden), nn.ReLU(True),
            nn.Linear(predictor_hidden, projector_dim))

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projection ``f(x)``, prediction ``h(f(x))``) of (n, d) embeddings; n must be at least 2 in training."""
        projection = self.projector(embeddings)
        return projection, self.predictor(projection)


class PoolDescriptors(nn.Module):
    """Momentum-smoothed descriptor (virtual point) of each pool, kept as buffers so checkpoints carry them."""

    def __init__(self, num_pools: int, channels: int):
        super().__init__()
        self.register_buffer("values", torch.zeros(num_pools, channels))
        self.register_buffer("initialised", torch.zeros(num_pools, dtype=torch.bool))

    def blend(self, pool: int, current: torch.Tensor | None, momentum: float) -> torch.Tensor:
        """``(1 - a) current + a previous``; stores the result (detached) and returns it (with current's graph).

        A pool seen for the first time starts from ``current``; ``current=None`` (no voxel to average in this
        batch) returns the stored descriptor unchanged.
        """
        if current is None:
            if not bool(self.initialised[pool]):
                raise ValueError(f"pool {pool} has no descriptor yet and nothing to average")
            return self.values[pool].clone()
        if bool(self.initialised[pool]):
            current = (1.0 - momentum) * current + momentum * self.values[pool]
        self.values[pool] = current.detach().to(self.values.dtype)
        self.initialised[pool] = True
        return current


class VoxelSimSiamLoss(nn.Module):
    """The VCV-RL similarity loss ``L_SIM``: SimSiam heads, pool descriptors and the iteration counter.

    Parameters
    ----------
    in_channels : int
        Channels ``d`` of the encoder feature map used.
    num_pools : int
        Pools (classes, or regions + background).
    total_iterations : int
        Training iterations ``K`` of the descriptor momentum schedule.
    config : VCVRLConfig
        Sampling, pairing and head settings.

    Calling it with a feature map and the batch's :class:`VoxelPools` returns the loss summed over pools (each the
    mean over its pairs) and advances the iteration counter in training mode. Pools with no voxel (or, for voxel
    pairs, fewer than two) are skipped; a batch where every pool is skipped gives a zero loss.
    """

    def __init__(self, in_channels: int, num_pools: int, total_iterations: int, config: VCVRLConfig = VCVRLConfig()):
        super().__init__()
        if total_iterations < 1:
            raise ValueError(f"total_iterations must be at least 1, not {total_iterations}")
        self.config = config
        self.num_pools = int(num_pools)
        self.total_iterations = int(total_iterations)
        self.heads = SimSiamHeads(in_channels, config.projector_hidden, config.projector_dim, config.predictor_hidden)
        self.descriptors = PoolDescriptors(num_pools, in_channels)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_momentum(self) -> float:
        return descriptor_momentum(int(self.iteration), self.total_iterations) if self.config.momentum else 0.0

    def forward(self, features: torch.Tensor, pools: VoxelPools,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``L_SIM`` of one batch, always computed in float32.

        Under mixed precision (``torch.autocast``, float16 or bfloat16) the encoder's features arrive in half
        precision; they are cast to float32 and autocast is switched off here, so pool means (sums over many voxels),
        the heads and the cosines run in float32 whatever context the caller is in. Gradients flow back into the
        half-precision features as usual.
        """
        with float32_context(features.device):
            return self._forward(features.float(), pools, generator)

    def _forward(self, features: torch.Tensor, pools: VoxelPools,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        members, correct = pools
        if members.shape[0] != self.num_pools:
            raise ValueError(f"expected {self.num_pools} pools, got {members.shape[0]}")
        if members.shape[1] != features.shape[0]:
            raise ValueError(f"pools cover {members.shape[1]} volumes but features {features.shape[0]}")
        input_shape = members.shape[2:]
        pairing = self.config.pairing
        flat_members = members.flatten(1)
        flat_hard = flat_members & ~correct.flatten(1)
        sizes = flat_members.sum(1).tolist()

        used, anchors, partners = [], [], []
        for pool in range(self.num_pools):
            if sizes[pool] < (2 if pairing == "voxel" else 1):
                continue
            pool_anchors, _ = sample_anchors(flat_members[pool], flat_hard[pool], self.config.num_anchors,
                                             self.config.hard_fraction, generator)
            used.append(pool)
            anchors.append(pool_anchors)
            if pairing == "voxel":
                partners.append(sample_partner_voxels(flat_members[pool], pool_anchors, generator))
        if not used:
            self._advance()
            return features.new_zeros(())

        anchor_embeddings = sample_voxel_embeddings(features, torch.cat(anchors), input_shape)
        if pairing == "voxel":
            partner_embeddings = sample_voxel_embeddings(features, torch.cat(partners), input_shape)
        else:
            partner_embeddings = self._descriptors(features, pools, used)
        projection, prediction = self.heads(torch.cat([anchor_embeddings, partner_embeddings]))
        num_rows = anchor_embeddings.shape[0]
        anchor_projection, partner_projection = projection[:num_rows], projection[num_rows:]
        anchor_prediction, partner_prediction = prediction[:num_rows], prediction[num_rows:]

        total = features.new_zeros(())
        start = 0
        for position, pool_anchors in enumerate(anchors):
            rows = slice(start, start + pool_anchors.numel())
            start += pool_anchors.numel()
            if pairing == "voxel":
                partner_rows = rows
            else:  # one descriptor row per pool, broadcast against its anchors
                partner_rows = slice(position, position + 1)
            pair_losses = symmetric_simsiam_loss(anchor_prediction[rows], anchor_projection[rows],
                                                 partner_prediction[partner_rows], partner_projection[partner_rows])
            total = total + pair_losses.mean()
        self._advance()
        return total

    def _descriptors(self, features: torch.Tensor, pools: VoxelPools, used: list[int]) -> torch.Tensor:
        """Descriptor of each used pool after this iteration's momentum update, (len(used), d)."""
        members, correct = pools
        strict = self.config.pairing == "strict"
        masks = (correct if strict else members)[used]
        means, counts = pooled_embedding_means(features, masks)
        counts = counts.tolist()
        momentum = self.current_momentum()
        rows = []
        for position, pool in enumerate(used):
            current = means[position] if counts[position] > 0 else None
            if current is None and not bool(self.descriptors.initialised[pool]):
                # strict descriptor of a pool with no correctly classified voxel yet: start from the whole pool
                current = pooled_embedding_means(features, members[pool:pool + 1])[0][0]
            rows.append(self.descriptors.blend(pool, current, momentum))
        return torch.stack(rows)

    def _advance(self) -> None:
        if self.training:
            self.iteration += 1
