"""Command-line registration for ``nnunet-ext segment`` (parsers only; work happens in the handler)."""
from __future__ import annotations


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment images, folders, BIDS datasets or whole slides with a trained nnU-Net model",
        description="Segment with an nnU-Net trained-model folder, as AxonDeepSeg does: writes nnU-Net's label image "
                    "<stem>.png with AxonDeepSeg's <stem>_seg-axon.png, <stem>_seg-myelin.png (0/255) and "
                    "<stem>_seg-axonmyelin.png (axon 255, myelin 127) beside it. INPUT is an image, a folder, a BIDS "
                    "microscopy dataset, or a whole slide (Zarr/OME-Zarr, or a TIFF/PNG above --max-image-pixels): "
                    "slides are predicted block by block with nnU-Net's sliding window into <stem>_seg.zarr "
                    "(identical to a one-piece prediction, memory bounded by the block size), resume after an "
                    "interruption, and run on Dask: local threads by default, a dask.distributed cluster with "
                    "--scheduler.")
    parser.add_argument("-i", "--input", required=True, help="image, folder, BIDS dataset root, or Zarr store")
    parser.add_argument("-o", "--output", required=True, help="output folder (BIDS inputs keep sub-*/micr/)")
    parser.add_argument("-m", "--model", required=True, metavar="MODEL_DIR",
                        help="nnU-Net trained-model folder <Trainer>__<Plans>__<configuration> (or one fold_N in it)")
    model = parser.add_argument_group("model (as nnUNetv2_predict)")
    model.add_argument("-f", "--folds", nargs="+", default=None,
                       help="folds to ensemble (default: every fold_* holding the checkpoint)")
    model.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name (default checkpoint_final.pth)")
    model.add_argument("-device", "--device", default="cpu",
                       help="cpu (default), cuda (one Dask worker per GPU) or cuda:N")
    model.add_argument("-step_size", "--step-size", type=float, default=0.5,
                       help="sliding-window step as a fraction of the patch (default 0.5)")
    model.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (faster)")
    model.add_argument("--save-probabilities", action="store_true",
                       help="also write class probabilities (<stem>.npz, or 'probabilities' in the slide's Zarr)")
    model.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: OMP_NUM_THREADS if set, else the cores not already busy: "
                            "available cores minus the 1-minute load average, at least 1; whole slides share them "
                            "among --workers)")
    slides = parser.add_argument_group("whole slides")
    slides.add_argument("--max-image-pixels", type=int, default=None,
                        help="images above this many pixels are predicted block by block (default 2^25)")
    slides.add_argument("--block-size", type=int, default=4096,
                        help="block core and Zarr chunk edge in pixels (default 4096); each block in flight holds "
                             "about 25 bytes per pixel (0.4 GB at 4096); larger blocks predict fewer margin tiles "
                             "twice")
    slides.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="dask.distributed scheduler (tcp://host:8786); workers must see the same paths")
    slides.add_argument("--workers", type=int, default=None,
                        help="blocks predicted at once by local Dask threads (default 2); on the CPU each gets "
                             "its own copy of the model and cores / workers torch threads unless --threads")
    measure = parser.add_argument_group("morphometrics")
    measure.add_argument("--morphometrics", action="store_true",
                         help="then measure axons and myelin (nnunet-ext morphometrics) into OUTPUT/morphometrics")
    measure.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                         help="pixel size in um (default: BIDS sidecar, <stem>.json or pixel_size_in_micrometer.txt)")
    measure.add_argument("--axon-shape", choices=("circle", "ellipse"), default="circle",
                         help="axon diameter as equivalent circle or ellipse minor axis, as AxonDeepSeg")
    measure.add_argument("--postprocess", action="store_true",
                         help="post-process the predicted masks before the morphometrics (fill axon holes, remove "
                              "axons below 0.1 um^2 and axons without a myelin ring: nnunet-ext morphometrics "
                              "--postprocess's defaults); the written masks stay as predicted")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--continue", dest="continue_existing", action="store_true",
                        help="skip inputs whose outputs already exist (interrupted slides resume in any case)")
    parser.set_defaults(func=_run)


def _postprocess_options(enabled: bool) -> dict | None:
    if not enabled:
        return None
    from nnunet_ext.morphometrics.postprocess import DEFAULT_POSTPROCESS

    return dict(DEFAULT_POSTPROCESS)


def _run(args) -> int:
    from nnunet_ext.segmentation.segment_files import DEFAULT_MAX_IMAGE_PIXELS, discover_segmentation_inputs, segment_inputs
    from nnunet_ext.segmentation.predictor import ModelSpec, default_cpu_threads, resolve_model_folder

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    model_folder, folds = resolve_model_folder(args.model, args.folds, args.checkpoint)
    spec = ModelSpec(model_folder, folds, args.checkpoint, args.device, args.step_size, not args.disable_tta,
                     args.threads)
    inputs = discover_segmentation_inputs(args.input, args.pixel_size, args.max_image_pixels or
                                          DEFAULT_MAX_IMAGE_PIXELS)
    slides = sum(item.slide for item in inputs)
    if args.postprocess and not args.morphometrics:
        raise ValueError("--postprocess applies to the morphometrics: add --morphometrics")
    if args.postprocess and slides:
        raise ValueError("--postprocess is not available for whole slides (measured chunk by chunk); segment them "
                         "without it")
    print(f"nnunet-ext segment: {len(inputs) - slides} image(s), {slides} slide(s); model {model_folder} "
          f"(folds {', '.join(folds)}, {args.checkpoint}) on {args.device}")
    import torch

    threads_before = torch.get_num_threads()
    if args.threads is None:  # not torch's one thread per core: that oversubscribes a busy machine
        torch.set_num_threads(default_cpu_threads())
    try:
        summary = segment_inputs(inputs, args.output, spec, save_probabilities=args.save_probabilities,
                                 overwrite=args.overwrite, continue_existing=args.continue_existing,
                                 block_size=args.block_size, scheduler=args.scheduler, workers=args.workers,
                                 morphometrics=args.morphometrics, axon_shape=args.axon_shape,
                                 postprocess=_postprocess_options(args.postprocess))
    finally:
        torch.set_num_threads(threads_before)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    records = summary["records"]
    done = [r for r in records if not r.skipped]
    pixels = sum(r.shape[0] * r.shape[1] for r in done if r.shape)
    seconds = summary["seconds"]
    print(f"\nSegmented {len(done)} input(s), {pixels / 1e6:.1f} megapixels in {seconds:.1f} s "
          f"({pixels / 1e6 / max(seconds, 1e-9):.2f} MP/s) -> {summary['output']}")
    if len(done) < len(records):
        print(f"  skipped {len(records) - len(done)} input(s) with existing outputs (--continue)")
    for record in records:
        if record.skipped:
            continue
        shape = f"{record.shape[0]}x{record.shape[1]}" if record.shape else "?"
        detail = ", ".join(f"{name} {fraction:.1%}" for name, fraction in record.fractions.items())
        if record.slide:
            detail = f"{record.blocks} blocks" + (f", {record.blocks_resumed} resumed" if record.blocks_resumed
                                                  else "")
        print(f"  {record.name}: {shape} px, {record.seconds:.1f} s" + (f", {detail}" if detail else ""))
    results = summary.get("morphometrics")
    if results:
        for key, result in results.items():
            for aggregate in result["aggregates"]:
                print(f"  morphometrics {aggregate['image']}: {aggregate['axon_count']} axons, "
                      f"aggregate g-ratio {aggregate['gratio_aggregate']:.3f}, AVF {aggregate['avf']:.3f}, "
                      f"MVF {aggregate['mvf']:.3f}")
        print(f"  morphometrics CSVs and QC overlays in {summary['output']}/morphometrics")
