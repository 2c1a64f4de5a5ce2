"""Command-line registration for ``nnunet-ext morphometrics`` (parsers only; work happens in the handler)."""
from __future__ import annotations


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "morphometrics", help="per-axon and aggregate morphometrics (AxonDeepSeg-compatible) from label images",
        description="Measure axons and myelin (g-ratio, axon diameter, myelin thickness, AVF, MVF, density, ...) "
                    "with AxonDeepSeg 5.5's definitions. INPUT is a label image (nnU-Net prediction: 0 background, "
                    "1 myelin, 2 axon; or ADS 0/127/255), an ADS axon mask *_seg-axon*.png (its _seg-myelin "
                    "partner is taken along), a folder of either, or a BIDS microscopy dataset. Writes one "
                    "per-axon CSV per image, a combined per-axon CSV, an aggregate CSV and a QC overlay PNG per "
                    "image; tile maps on request. No axon is filtered out unless asked.")
    parser.add_argument("input", help="label image, ADS axon mask, folder of them, or BIDS dataset root")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size in um (default: BIDS sidecar, <name>.json, or pixel_size_in_micrometer.txt)")
    parser.add_argument("--axon-shape", choices=("circle", "ellipse"), default="circle",
                        help="diameter as equivalent circle (default) or ellipse minor axis, as ADS")
    parser.add_argument("--myelin-label", type=int, default=1, help="myelin value in label images (default 1)")
    parser.add_argument("--axon-label", type=int, default=2, help="axon value in label images (default 2)")
    parser.add_argument("--label-suffix", default="manual",
                        help="BIDS label derivatives to use: <stem>_seg-axon-<suffix>.png (default manual)")
    parser.add_argument("--image-dir", default=None,
                        help="folder with the microscopy images of predictions (<name>_0000.png or <name>.png), "
                             "shown under the QC overlay")
    parser.add_argument("--roi", default=None,
                        help="ROI mask (one input) or folder of <name>.png ROI masks: aggregates within it")
    parser.add_argument("--maps", action="store_true", help="also write tile maps (CSV and heat-map PNGs)")
    parser.add_argument("--tile-size", type=float, default=256, help="map tile edge (default 256)")
    parser.add_argument("--tile-unit", choices=("px", "um"), default="px", help="unit of --tile-size (default px)")
    parser.add_argument("--min-axon-area", type=float, default=None, metavar="UM2",
                        help="filter: drop axons smaller than this area in um^2")
    parser.add_argument("--drop-border", action="store_true", help="filter: drop fibres touching the image border")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="filter: drop axons whose g-ratio is invalid (NaN, <= 0 or >= 1)")
    parser.add_argument("--no-qc", action="store_true", help="skip the QC overlay PNGs")
    slide = parser.add_argument_group(
        "whole slides", "a label image larger than memory (Zarr, OME-Zarr, tiled TIFF) is measured chunk by chunk "
        "through Dask; used for *.zarr inputs or whenever --chunk-size is given")
    slide.add_argument("--chunk-size", type=int, default=None, help="chunk core size in px (default 2048)")
    slide.add_argument("--halo", type=int, default=256,
                       help="margin read around each chunk, px (default 256); fibres reaching it are reported")
    slide.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (default: threads)")
    slide.add_argument("--workers", type=int, default=None, help="threads of the local scheduler (default: cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from nnunet_ext.morphometrics.batch import discover_inputs, run_morphometrics, run_slide

    tile_px = int(args.tile_size) if args.tile_unit == "px" else None
    tile_um = args.tile_size if args.tile_unit == "um" else None
    if args.tile_unit == "px" and args.tile_size != int(args.tile_size):
        raise ValueError(f"--tile-size {args.tile_size} px must be a whole number")
    if args.chunk_size is not None or args.input.rstrip("/").lower().endswith(".zarr"):
        if args.roi is not None:
            raise ValueError("--roi is not supported for whole slides yet; crop the aggregate with the tile map")
        summary = run_slide(
            args.input, args.output, args.pixel_size, chunk_size=args.chunk_size or 2048, halo=args.halo,
            axon_shape=args.axon_shape, myelin_label=args.myelin_label, axon_label=args.axon_label,
            maps=args.maps, tile_size_px=tile_px, tile_size_um=tile_um, scheduler=args.scheduler,
            workers=args.workers, min_axon_area_um2=args.min_axon_area, drop_border=args.drop_border,
            drop_invalid=args.drop_invalid, qc=not args.no_qc, overwrite=args.overwrite)
        return _report(summary, args.output)
    inputs = discover_inputs(args.input, args.pixel_size, args.label_suffix, args.image_dir)
    summary = run_morphometrics(
        inputs, args.output, axon_shape=args.axon_shape, myelin_label=args.myelin_label,
        axon_label=args.axon_label, roi=args.roi, min_axon_area_um2=args.min_axon_area,
        drop_border=args.drop_border, drop_invalid=args.drop_invalid, maps=args.maps, tile_size_px=tile_px,
        tile_size_um=tile_um, qc=not args.no_qc, overwrite=args.overwrite)
    return _report(summary, args.output)


def _report(summary, output) -> int:
    print(f"{summary['images']} image(s), {summary['axons']} axons -> {output}")
    for aggregate in summary["aggregates"]:
        print(f"  {aggregate['image']}: {aggregate['axon_count']} axons, AVF {aggregate['avf']:.4f}, "
              f"MVF {aggregate['mvf']:.4f}, aggregate g-ratio {aggregate['gratio_aggregate']:.4f}, "
              f"{aggregate['axon_density (per mm^2)']:.1f} axons/mm^2")
    return 0
