"""Shim that nnU-Net imports as a top-level module when it scans ``nnUNet_extTrainer``.

nnU-Net asks this module for the trainer by name (``hasattr``/``getattr``) and removes it from ``sys.modules``
afterwards. Each name resolves to the class defined in ``nnunet_ext.trainers`` (absolute import, imported on demand),
so the class nnU-Net uses is the very object ``nnunet_ext.trainers.<module>.<Trainer>``.
"""
import nnunet_ext.trainers as _trainers

__all__ = list(_trainers.__all__)


def __getattr__(name):
    if name in __all__:
        return getattr(_trainers, name)
    raise AttributeError(name)
