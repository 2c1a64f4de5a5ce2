"""Command-line registration of the phantom generator: ``nnunet-ext phantoms``.

Only argparse here; the generator (numpy, scipy, pandas, matplotlib) is imported inside the handler so that
``nnunet-ext --help`` starts instantly.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_ext.phantoms import CONTRASTS


def register_cli(subparsers) -> None:
    """Add the ``phantoms`` subcommand."""
    parser = subparsers.add_parser(
        "phantoms",
        help="write synthetic myelinated-axon phantoms (TEM/SEM/BF) as a BIDS microscopy dataset",
        description="Write synthetic images of myelinated axons with exactly known truth (axon and myelin masks, "
        "per-axon axon diameter, fibre diameter, g-ratio) as a BIDS microscopy dataset laid out like AxonDeepSeg's "
        "(sub-*/micr/*_<MOD>.png + PixelSize sidecars, derivatives/labels/*_seg-{axon,myelin,axonmyelin}-manual.png),"
        " plus derivatives/truth/phantom_truth.csv.",
    )
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (must not exist or be empty)")
    parser.add_argument("--contrasts", nargs="+", default=["TEM", "SEM"], type=str.upper, choices=CONTRASTS,
                        metavar="MOD", help="contrasts of every subject's samples: TEM, SEM, BF (default: TEM SEM)")
    parser.add_argument("--subjects", type=int, default=3, help="number of subjects (default: 3)")
    parser.add_argument("--samples-per-subject", type=int, default=2,
                        help="samples per subject and contrast (default: 2)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="image size in pixels (default: 256 256)")
    parser.add_argument("--pixel-size", type=float, default=0.1, metavar="UM",
                        help="pixel size in micrometres (default: 0.1)")
    parser.add_argument("--pixel-size-jitter", type=float, default=0.0, metavar="FRACTION",
                        help="vary the pixel size between samples by up to +/- this fraction (default: 0)")
    parser.add_argument("--axon-diameter", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
                        help="range of axon equivalent diameters in um (default: 1 3)")
    parser.add_argument("--gratio", type=float, nargs=2, default=(0.55, 0.8), metavar=("MIN", "MAX"),
                        help="range of g-ratios (default: 0.55 0.8)")
    parser.add_argument("--density", type=float, default=0.45,
                        help="target fraction of the area covered by fibres, at most 0.8 (default: 0.45)")
    parser.add_argument("--touching", type=float, default=0.2, metavar="FRACTION",
                        help="target share of fibres touching a neighbour (masks sharing a boundary); 0 keeps every "
                        "fibre apart (default: 0.2)")
    parser.add_argument("--eccentricity", type=float, nargs=2, default=(0.0, 0.7), metavar=("MIN", "MAX"),
                        help="range of axon eccentricities; 0 0 gives circular axons (default: 0 0.7)")
    parser.add_argument("--noise", type=float, default=None,
                        help="noise std as a fraction of the grey range (default per contrast: TEM 0.05, SEM 0.07, "
                        "BF 0.03)")
    parser.add_argument("--blur", type=float, default=None,
                        help="Gaussian blur sigma in pixels (default per contrast: TEM 0.6, SEM 0.8, BF 1.6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same dataset")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also save a montage of the first sample of each contrast with its truth")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    # Imported here, not at the top, so that `nnunet-ext --help` stays instant (numpy, scipy, pandas, matplotlib).
    import pandas as pd

    from nnunet_ext.phantoms.bids_writer import dataset_plan, write_bids_phantom_dataset
    from nnunet_ext.phantoms.generator import generate_phantom
    from nnunet_ext.phantoms.preview import save_phantom_montage

    options = dict(
        axon_diameter_um=tuple(args.axon_diameter), gratio=tuple(args.gratio), density=args.density,
        touching_fraction=args.touching, eccentricity=tuple(args.eccentricity), noise=args.noise, blur=args.blur,
    )
    out_dir = write_bids_phantom_dataset(
        args.out_dir, contrasts=args.contrasts, n_subjects=args.subjects,
        samples_per_subject=args.samples_per_subject, shape=tuple(args.size), pixel_size_um=args.pixel_size,
        pixel_size_jitter=args.pixel_size_jitter, seed=args.seed, overwrite=args.overwrite, **options,
    )
    truth = pd.read_csv(out_dir / "derivatives" / "truth" / "phantom_truth.csv")
    print(
        f"Wrote {truth['image'].nunique()} images ({', '.join(args.contrasts)}) with {len(truth)} axons to {out_dir}"
    )
    if args.preview is not None:
        # Regenerate the first subject's first sample of each contrast: the same seeds as in the dataset.
        plan = dataset_plan(args.contrasts, args.subjects, args.samples_per_subject, args.pixel_size,
                             args.pixel_size_jitter, args.seed)[: len(args.contrasts)]
        phantoms = [
            generate_phantom(shape=tuple(args.size), pixel_size_um=size, contrast=contrast, seed=image_seed, **options)
            for _, _, contrast, size, image_seed in plan
        ]
        print(f"Preview: {save_phantom_montage(phantoms, args.preview)}")
    return 0
