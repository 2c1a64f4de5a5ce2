"""The VCV-RL loss module: schedule, interpolation without a full-resolution tensor, pools, sampling and the loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.trainers.losses.vcvrl_loss import (PoolDescriptors, VCVRLConfig, VoxelPools, VoxelSimSiamLoss,
                                                   descriptor_momentum, label_pools, linear_interpolation_matrix,
                                                   pooled_embedding_means, random_subset, region_pools,
                                                   sample_anchors, sample_partner_voxels, sample_voxel_embeddings,
                                                   symmetric_simsiam_loss)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _upsampled(features, shape):
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(features, size=shape, mode=mode, align_corners=False)


# -- schedule and descriptors ----------------------------------------------------------------------------------

def test_descriptor_momentum_follows_the_cosine_schedule():
    assert descriptor_momentum(0, 100) == 1.0
    assert descriptor_momentum(50, 100) == pytest.approx(0.5)
    assert descriptor_momentum(25, 100) == pytest.approx((math.cos(math.pi / 4) + 1) / 2)  # 0.853553...
    assert descriptor_momentum(25, 100) == pytest.approx(0.8535534)
    assert descriptor_momentum(100, 100) == pytest.approx(0.0)
    assert descriptor_momentum(250, 100) == pytest.approx(0.0)  # past the end: stays at 0
    values = [descriptor_momentum(k, 10) for k in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        descriptor_momentum(0, 0)


def test_descriptor_momentum_update_blends_and_keeps_gradient_only_in_the_current_part():
    descriptors = PoolDescriptors(num_pools=2, channels=3)
    first = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    assert torch.equal(descriptors.blend(0, first, momentum=0.9), first)  # first sight: starts from current
    assert descriptors.initialised.tolist() == [True, False]

    second = torch.tensor([0.0, 4.0, 2.0], requires_grad=True)
    blended = descriptors.blend(0, second, momentum=0.25)  # dsc = (1 - a) now + a previous
    assert torch.allclose(blended, torch.tensor([0.25, 3.0, 2.0]))
    assert torch.allclose(descriptors.values[0], torch.tensor([0.25, 3.0, 2.0]))
    assert not descriptors.values.requires_grad
    blended.sum().backward()
    assert torch.allclose(second.grad, torch.full((3,), 0.75))
    assert first.grad is None  # the previous descriptor is a constant

    assert torch.allclose(descriptors.blend(0, None, momentum=0.5), torch.tensor([0.25, 3.0, 2.0]))
    with pytest.raises(ValueError, match="no descriptor yet"):
        descriptors.blend(1, None, momentum=0.5)


# -- interpolation at chosen voxels ------------------------------------------------------------------------------

@pytest.mark.parametrize("input_shape,feature_shape", [((13, 17), (4, 5)), ((32, 32), (4, 4)),
                                                       ((8, 12, 10), (2, 3, 5)), ((6, 6, 6), (6, 6, 6))])
def test_sampled_embeddings_equal_the_full_interpolation(input_shape, feature_shape):
    torch.manual_seed(0)
    features = torch.randn(3, 6, *feature_shape, dtype=torch.float64, requires_grad=True)
    flat_index = torch.randint(0, 3 * math.prod(input_shape), (60,))
    sampled = sample_voxel_embeddings(features, flat_index, input_shape)
    reference = _upsampled(features, input_shape).movedim(1, -1).reshape(-1, 6)[flat_index]
    assert torch.allclose(sampled, reference, atol=1e-12)
    weights = torch.randn_like(sampled)
    grad_sampled, = torch.autograd.grad((sampled * weights).sum(), features)
    grad_reference, = torch.autograd.grad((reference * weights).sum(), features)
    assert torch.allclose(grad_sampled, grad_reference, atol=1e-12)


def test_interpolation_matrix_reproduces_linear_interpolation():
    matrix = linear_interpolation_matrix(11, 4, dtype=torch.float64)
    assert torch.allclose(matrix.sum(1), torch.ones(11, dtype=torch.float64))
    values = torch.randn(4, dtype=torch.float64)
    expected = F.interpolate(values.view(1, 1, 4), size=11, mode="linear", align_corners=False).view(11)
    assert torch.allclose(matrix @ values, expected)


@pytest.mark.parametrize("input_shape,feature_shape", [((13, 17), (4, 5)), ((8, 12, 10), (2, 3, 5))])
def test_pool_means_equal_means_of_the_full_interpolation(input_shape, feature_shape):
    torch.manual_seed(1)
    features = torch.randn(2, 5, *feature_shape, dtype=torch.float64)
    masks = torch.rand(3, 2, *input_shape) > 0.7
    masks[2] = False  # an empty pool
    means, counts = pooled_embedding_means(features, masks)
    upsampled = _upsampled(features, input_shape).movedim(1, -1)
    for mask, mean, count in zip(masks[:2], means[:2], counts[:2]):
        assert int(count) == int(mask.sum())
        assert torch.allclose(mean, upsampled[mask].mean(0), atol=1e-12)
    assert int(counts[2]) == 0 and torch.equal(means[2], torch.zeros(5, dtype=torch.float64))


# -- pools ---------------------------------------------------------------------------------------------------------

def test_label_pools_gather_each_class_across_volumes_and_skip_the_ignore_label():
    target = torch.tensor([[[0, 1], [2, 3]], [[1, 1], [0, 0]]]).view(2, 1, 2, 2)  # 3 = ignore label
    predicted = torch.tensor([[[0, 0], [2, 2]], [[1, 0], [0, 1]]])
    logits = F.one_hot(predicted, 3).movedim(-1, 1).float()
    members, correct = label_pools(target, logits, ignore_label=3)
    assert members.shape == (3, 2, 2, 2)
    assert members.flatten(1).sum(1).tolist() == [3, 3, 1]  # the ignored voxel is in no pool
    assert correct.flatten(1).sum(1).tolist() == [2, 1, 1]
    assert members[1, 1, 0].all() and members[1, 0, 0, 1]  # class 1 from both volumes
    assert not (correct & ~members).any()


def test_region_pools_one_per_region_plus_background():
    inner = torch.zeros(1, 4, 4, dtype=torch.bool)
    inner[0, 1:3, 1:3] = True
    outer = inner.clone()
    outer[0, 0, :] = True
    ignored = torch.zeros_like(inner)
    ignored[0, 3, 3] = True
    target = torch.stack([outer, inner, ignored], 1).float()  # regions (outer ⊃ inner), then the ignore channel
    logits = torch.stack([outer, outer], 1).float() * 2 - 1  # predicts `outer` for both regions
    members, correct = region_pools(target, logits, has_ignore_channel=True)
    assert members.flatten(1).sum(1).tolist() == [8, 4, 7]  # outer, inner, background (16 - 8 - 1 ignored)
    assert correct.flatten(1).sum(1).tolist() == [8, 4, 7]  # inner voxels are inside outer: both right
    logits[:, 1] = -1  # now predicts nothing for the inner region
    members, correct = region_pools(target, logits, has_ignore_channel=True)
    assert correct.flatten(1).sum(1).tolist() == [8, 0, 7]


# -- sampling ------------------------------------------------------------------------------------------------------

def _pool(size=1000, members=600, hard=100, seed=0):
    generator = _generator(seed)
    order = torch.randperm(size, generator=generator)
    member_mask = torch.zeros(size, dtype=torch.bool)
    member_mask[order[:members]] = True
    hard_mask = torch.zeros(size, dtype=torch.bool)
    hard_mask[order[:hard]] = True  # all hard voxels are members
    hard_mask[order[-20:]] = True  # misclassified voxels of other pools never count
    return member_mask, hard_mask


@pytest.mark.parametrize("sampling,expected_hard", [("random", 0), ("hybrid", 32), ("hard", 64)])
def test_anchor_counts_and_hybrid_split(sampling, expected_hard):
    members, hard = _pool()
    fraction = VCVRLConfig(anchor_sampling=sampling).hard_fraction
    anchors, num_hard = sample_anchors(members, hard, 64, fraction, _generator())
    assert anchors.numel() == 64 and anchors.unique().numel() == 64
    assert members[anchors].all()
    assert num_hard == expected_hard
    assert hard[anchors[:num_hard]].all()


def test_too_few_hard_voxels_fall_back_to_random_ones():
    members, hard = _pool(hard=10)
    anchors, num_hard = sample_anchors(members, hard, 64, 0.5, _generator())
    assert num_hard == 10 and anchors.numel() == 64 and anchors.unique().numel() == 64
    anchors, num_hard = sample_anchors(members, hard, 64, 1.0, _generator())
    assert num_hard == 10 and anchors.numel() == 64
    members, no_hard = _pool(hard=0)  # all voxels right: hard pool empty
    anchors, num_hard = sample_anchors(members, no_hard & members, 64, 1.0, _generator())
    assert num_hard == 0 and anchors.numel() == 64 and members[anchors].all()


def test_a_pool_smaller_than_n_uses_all_its_voxels_once():
    members, hard = _pool(members=5, hard=2)
    anchors, num_hard = sample_anchors(members, hard, 512, 0.5, _generator())
    assert sorted(anchors.tolist()) == members.nonzero().view(-1).tolist()
    assert num_hard == 2


def test_random_subset_is_uniform():
    mask = torch.tensor([True, False, True, True, False, True])
    generator = _generator(3)
    counts = torch.zeros(6)
    for _ in range(2000):
        counts[random_subset(mask, 2, generator)] += 1
    assert counts[~mask].sum() == 0
    assert torch.allclose(counts[mask] / 2000, torch.full((4,), 0.5), atol=0.05)  # each kept with p = 2/4


def test_partner_voxels_are_other_voxels_of_the_pool():
    generator = _generator(5)
    for members_count in (2, 3, 50):
        members, _ = _pool(size=100, members=members_count, hard=0)
        anchors, _ = sample_anchors(members, torch.zeros_like(members), 16, 0.0, generator)
        for _ in range(20):
            partners = sample_partner_voxels(members, anchors, generator)
            assert partners.numel() == anchors.numel()
            assert members[partners].all() and not (partners == anchors).any()
    single, _ = _pool(size=10, members=1, hard=0)
    with pytest.raises(ValueError, match="at least two"):
        sample_partner_voxels(single, single.nonzero().view(-1))


# -- the SimSiam loss ----------------------------------------------------------------------------------------------

def test_symmetric_loss_against_hand_computed_value_and_stop_gradient():
    prediction_a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    projection_a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    prediction_b = torch.tensor([[1.0, 1.0]], requires_grad=True)
    projection_b = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = symmetric_simsiam_loss(prediction_a, projection_a, prediction_b, projection_b)
    # 1/2 * 1/2 (1 - cos 90°) + 1/2 * 1/2 (1 - cos 45°)
    assert loss.item() == pytest.approx(0.25 + 0.25 * (1 - 1 / math.sqrt(2)))
    loss.sum().backward()
    assert projection_a.grad is None and projection_b.grad is None  # targets are stop-gradient
    assert prediction_a.grad.abs().sum() > 0 and prediction_b.grad.abs().sum() > 0


def _identity_heads(loss):
    loss.heads.projector = torch.nn.Identity()
    loss.heads.predictor = torch.nn.Identity()
    return loss


def _two_class_batch():
    """Full-resolution features (interpolation is the identity): class 0 is all [1, 0]; class 1 has four voxels at
    [0, 1] that the network gets right and four at [1, 0] that it gets wrong."""
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0] = 1.0
    features[0, :, 0] = torch.tensor([0.0, 1.0]).view(2, 1)  # class 1, first row: [0, 1]
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 1.0
    logits[0, 1, 0] = 2.0  # first row predicted class 1: right; second row predicted 0: wrong
    return features, label_pools(target, logits)


@pytest.mark.parametrize("pairing,expected", [
    ("relaxed", 0.5 * (1 - 1 / math.sqrt(2))),  # class 1 descriptor [0.5, 0.5]: every anchor at 45°
    ("strict", 0.25),                             # descriptor [0, 1]: half the anchors at 0°, half at 90°
])
def test_loss_against_hand_computed_values(pairing, expected):
    features, pools = _two_class_batch()
    loss = _identity_heads(VoxelSimSiamLoss(2, 2, 10, VCVRLConfig(pairing=pairing, num_anchors=512)))
    # with identity heads each pair costs 1/2 (1 - cos(anchor, descriptor)); class 0 pairs cost 0
    assert loss(features, pools, _generator()).item() == pytest.approx(expected, abs=1e-6)
    assert loss.iteration.item() == 1


def test_descriptors_follow_the_momentum_schedule_across_iterations():
    features, pools = _two_class_batch()
    loss = _identity_heads(VoxelSimSiamLoss(2, 2, 4, VCVRLConfig(pairing="relaxed")))
    loss(features, pools, _generator())
    assert torch.allclose(loss.descriptors.values[1], torch.tensor([0.5, 0.5]))
    loss(features * 3.0, pools, _generator())  # iteration 1 of 4: a = (cos(pi / 4) + 1) / 2
    a = (math.cos(math.pi / 4) + 1) / 2
    expected = (1 - a) * torch.tensor([1.5, 1.5]) + a * torch.tensor([0.5, 0.5])
    assert torch.allclose(loss.descriptors.values[1], expected)
    assert loss.iteration.item() == 2
    no_momentum = _identity_heads(VoxelSimSiamLoss(2, 2, 4, VCVRLConfig(pairing="relaxed", momentum=False)))
    no_momentum(features, pools, _generator())
    no_momentum(features * 3.0, pools, _generator())
    assert torch.allclose(no_momentum.descriptors.values[1], torch.tensor([1.5, 1.5]))


def _random_batch(num_classes=3, shape=(2, 16, 16), feature_shape=(4, 4), channels=8, seed=0):
    torch.manual_seed(seed)
    target = torch.randint(0, num_classes, (shape[0], 1, *shape[1:]))
    logits = torch.randn(shape[0], num_classes, *shape[1:])
    features = torch.randn(shape[0], channels, *feature_shape, requires_grad=True)
    return features, target, logits


@pytest.mark.parametrize("pairing", ["strict", "relaxed", "voxel"])
def test_absent_class_is_skipped_without_nan_and_gradients_reach_features_and_heads(pairing):
    features, target, logits = _random_batch()
    target[target == 2] = 0  # class 2 absent from this batch
    loss = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(pairing=pairing, num_anchors=32))
    value = loss(features, label_pools(target, logits), _generator())
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    head_grads = [p.grad for p in loss.heads.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    if pairing != "voxel":
        assert loss.descriptors.initialised.tolist() == [True, True, False]


def test_all_voxels_correct_and_no_correct_voxel_at_all():
    features, target, _ = _random_batch()
    perfect = F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(num_anchors=32))  # hybrid + strict
    assert torch.isfinite(loss(features, label_pools(target, perfect), _generator()))
    wrong = F.one_hot((target[:, 0] + 1) % 3, 3).movedim(-1, 1).float()  # strict descriptors have no voxel
    fresh = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(num_anchors=32))
    assert torch.isfinite(fresh(features, label_pools(target, wrong), _generator()))
    assert fresh.descriptors.initialised.all()  # started from the whole pool


def test_tiny_pools_and_empty_batches():
    features, target, logits = _random_batch()
    target[:] = 0
    target[0, 0, 5, 5] = 1  # class 1: a single voxel
    pools = label_pools(target, logits)
    strict = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(num_anchors=32))
    assert torch.isfinite(strict(features, pools, _generator()))
    assert strict.descriptors.initialised.tolist() == [True, True, False]
    voxel_pairs = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(num_anchors=32, pairing="voxel"))
    assert torch.isfinite(voxel_pairs(features, pools, _generator()))  # the one-voxel pool is skipped
    nothing = VoxelPools(torch.zeros_like(pools.members), torch.zeros_like(pools.correct))  # all ignored
    value = strict(features, nothing, _generator())
    assert value.item() == 0.0 and strict.iteration.item() == 2


def test_eval_mode_does_not_advance_the_schedule_and_wrong_pool_count_is_an_error():
    features, target, logits = _random_batch()
    loss = VoxelSimSiamLoss(8, 3, 100, VCVRLConfig(num_anchors=16)).eval()
    loss(features, label_pools(target, logits), _generator())
    assert loss.iteration.item() == 0
    with pytest.raises(ValueError, match="expected 4 pools"):
        VoxelSimSiamLoss(8, 4, 100)(features, label_pools(target, logits))


def test_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="anchor_sampling"):
        VCVRLConfig(anchor_sampling="easy")
    with pytest.raises(ValueError, match="pairing"):
        VCVRLConfig(pairing="loose")
    with pytest.raises(ValueError, match="num_anchors"):
        VCVRLConfig(num_anchors=0)
