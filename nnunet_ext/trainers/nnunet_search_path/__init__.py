"""Folder named in ``nnUNet_extTrainer`` (see :mod:`nnunet_ext.nnunet.environment`). It must hold only the shim module."""
