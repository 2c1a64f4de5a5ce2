"""Folder named in ``nnUNet_extTrainer`` (see :mod:`nnunet_ext.nnunet_env`). It must hold only the shim module."""
