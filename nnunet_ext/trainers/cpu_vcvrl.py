"""VCV-RL with the real-SEM CPU schedule of :class:`~nnunet_ext.trainers.cpu.nnUNetTrainerCPUSEM`.

Its own module because :mod:`nnunet_ext.trainers.vcvrl` imports :mod:`nnunet_ext.trainers.cpu` (for the smoke
schedule), so ``cpu`` cannot import ``vcvrl`` back.
"""
from __future__ import annotations

from nnunet_ext.trainers.cpu import CPUSEMSchedule
from nnunet_ext.trainers.vcvrl import nnUNetTrainerVCVRL


class nnUNetTrainerVCVRL_CPUSEM(CPUSEMSchedule, nnUNetTrainerVCVRL):
    """VCV-RL (voxel-wise SimSiam loss during training) on the same CPU schedule and time budget as
    ``nnUNetTrainerCPUSEM``, for like-for-like comparisons on real SEM (``benchmarks/bench_real_sem.py --trainer``)."""
