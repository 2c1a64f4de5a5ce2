"""Command-line registration for nnunet_ext.trainers: ``nnunet-ext plans-vit``."""
from __future__ import annotations

import json

BACKBONE_CHOICES = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "vit_b", "vit_l", "beit_b")


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "plans-vit", help="write transformer plans (EM-SAM, ViT, BEiT, inflated 3D ViT) of a planned dataset",
        description="Derive nnUNetPlans_<backbone> from nnU-Net's plans: patch size in whole 16-pixel tokens, batch "
                    "size 2 and the ViT-UNETR network with all its arguments, so nnUNetv2_train and "
                    "nnUNetv2_predict rebuild the network from the plans alone. Then: nnUNetv2_preprocess -d D "
                    "-plans_name nnUNetPlans_<backbone> -c C; nnUNetv2_train D C FOLD -p nnUNetPlans_<backbone> "
                    "-tr nnUNetTrainerEMSAM (or nnUNetTrainerViT, nnUNetTrainerViTMAE, nnUNetTrainerViTDINO, "
                    "nnUNetTrainerViTBEiT, nnUNetTrainerViTPretrained, nnUNetTrainerViT3DInflated[Average]).")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (already planned by nnU-Net)")
    parser.add_argument("-c", "--configuration", default="2d", help="configuration to derive (default: 2d)")
    parser.add_argument("--backbone", default="sam_vit_b", choices=BACKBONE_CHOICES,
                        help="transformer encoder (default: sam_vit_b, EM-SAM); 3D configurations need vit_b/vit_l")
    parser.add_argument("--patch-size", type=int, nargs="+",
                        help="network input, multiples of the token size (default 2D: 1024 1024 for SAM, 224 224 "
                             "otherwise; 3D: nnU-Net's patch rounded down to whole tokens)")
    parser.add_argument("--patch-embed-size", type=int, nargs="+",
                        help="token size per axis (default 16 on each); 3D may be thin in depth, e.g. 5 16 16")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (default: 2, as AxonCallosumEM)")
    parser.add_argument("--decoder-features", type=int, default=16,
                        help="channels of the full-resolution decoder level, doubled per level (default: 16, 1.89 M "
                             "decoder parameters with ViT-B; 64: the public EM-SAM decoder's widths 64..512, "
                             "17.3 M; 84: its parameter count, 28 M)")
    parser.add_argument("--input-channels", choices=("repeat", "sum"), default="repeat",
                        help="grey input repeated to the RGB patch embedding (repeat, default) or RGB kernels "
                             "summed to the data's channels (sum)")
    parser.add_argument("--backbone-kwargs", type=json.loads, default=None, metavar="JSON",
                        help='overrides of the backbone size, e.g. \'{"embed_dim": 64, "depth": 4, "num_heads": 4}\'')
    parser.add_argument("--source-plans", default="nnUNetPlans", help="plans to derive from (default: nnUNetPlans)")
    parser.add_argument("--plans-name", help="name of the new plans (default: nnUNetPlans_<backbone>)")
    parser.add_argument("--reuse-preprocessed", action="store_true",
                        help="train on the data already preprocessed for --source-plans (same spacing and "
                             "normalisation; only patch, batch and network change), so no nnUNetv2_preprocess run")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    parser.set_defaults(func=_run_plans_vit)


def _run_plans_vit(args) -> int:
    from nnunet_ext.nnunet.plans_vit import vit_plans_name, write_vit_plans

    if args.backbone_kwargs is not None and not isinstance(args.backbone_kwargs, dict):
        raise ValueError(f"--backbone-kwargs must be a JSON object, got {args.backbone_kwargs!r}")
    path = write_vit_plans(args.dataset, args.configuration, args.backbone, args.patch_size, args.patch_embed_size,
                           args.batch_size, args.decoder_features, args.input_channels, args.backbone_kwargs,
                           args.source_plans, args.plans_name, args.overwrite, args.reuse_preprocessed)
    plans = args.plans_name or vit_plans_name(args.backbone)
    configuration = json.loads(path.read_text())["configurations"][args.configuration]
    print(f"Wrote {path}: {args.backbone}, patch {configuration['patch_size']}, batch {configuration['batch_size']}")
    preprocess = "" if args.reuse_preprocessed else (
        f"nnUNetv2_preprocess -d {args.dataset} -plans_name {plans} -c {args.configuration}\n      ")
    print(f"Next: {preprocess}nnUNetv2_train {args.dataset} {args.configuration} FOLD -p {plans} -tr TRAINER")
    if args.reuse_preprocessed:
        print(f"These plans read {args.source_plans}'s preprocessed data: do not run nnUNetv2_preprocess for {plans} "
              f"(nnU-Net would delete and rewrite that shared folder), and write them again if you re-plan "
              f"{args.source_plans}.")
    return 0
