"""The generalist-versus-dedicated experiment (AxonDeepSeg's protocol) on converted nnU-Net datasets:
design, nnU-Net commands, evaluation, statistics and outputs; ``nnunet-ext experiment``."""
