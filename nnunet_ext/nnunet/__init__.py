"""nnU-Net plumbing: its environment (``nnUNet_extTrainer`` and its folders), running its console commands, and the
plans variants (small CPU U-Net, transformer UNETR) that our trainers are trained with.

Modules
-------
environment
    ``nnUNet_extTrainer`` and nnU-Net's three folders; ``nnunet-ext env``.
commands
    Running nnU-Net's own console scripts (plan, preprocess, train, predict) from Python, as a user would.
plans_cpu
    ``nnUNetPlans_cpu``: a small 2D/3D U-Net plans variant for CPU training; ``nnunet-ext plans-cpu``.
plans_vit
    ``nnUNetPlans_<backbone>``: transformer plans (EM-SAM, ViT, BEiT, inflated 3D ViT); ``nnunet-ext plans-vit``.
"""
