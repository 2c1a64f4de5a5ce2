"""Command-line registration for ``nnunet-ext morphometrics`` (parsers only; work happens in the handler)."""
from __future__ import annotations

#: A single label TIFF above this many pixels goes the chunked way by default (segment's threshold for slides).
LARGE_IMAGE_PIXELS = 2**25


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "morphometrics", help="per-axon and aggregate morphometrics (AxonDeepSeg-compatible) from label images",
        description="Measure axons and myelin (g-ratio, axon diameter, myelin thickness, AVF, MVF, density, ...) "
                    "with AxonDeepSeg 5.5's definitions. INPUT is a label image (nnU-Net prediction: 0 background, "
                    "1 myelin, 2 axon; or ADS 0/127/255), an ADS axon mask *_seg-axon*.png (its _seg-myelin "
                    "partner is taken along), a folder of either, or a BIDS microscopy dataset. Writes one "
                    "per-axon CSV per image, a combined per-axon CSV, an aggregate CSV and a QC overlay PNG per "
                    "image; tile maps on request. No axon is filtered out unless asked. With --mtneuro, INPUT is "
                    "instead a 4-class MTNeuro label map (0 background, 1 vessel, 2 cell, 3 axon; 2D or a 3D "
                    "stack) or a folder of them, and the output is one CSV of per-slice semantic features.")
    parser.add_argument("input", help="label image, ADS axon mask, folder of them, or BIDS dataset root")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="pixel size in um (default: BIDS sidecar, <name>.json, or pixel_size_in_micrometer.txt)")
    parser.add_argument("--axon-shape", choices=("circle", "ellipse"), default=None,
                        help="diameter as equivalent circle (default) or ellipse minor axis, as ADS")
    parser.add_argument("--myelin-label", type=int, default=None, help="myelin value in label images (default 1)")
    parser.add_argument("--axon-label", type=int, default=None,
                        help="axon value in label images (default 2; 3 with --mtneuro)")
    parser.add_argument("--label-suffix", default=None,
                        help="BIDS label derivatives to use: <stem>_seg-axon-<suffix>.png (default manual)")
    parser.add_argument("--image-dir", default=None,
                        help="folder with the microscopy images of predictions (<name>_0000.png or <name>.png), "
                             "shown under the QC overlay")
    parser.add_argument("--roi", default=None,
                        help="ROI mask (one input) or folder of <name>.png ROI masks: aggregates within it; for a "
                             "slide a Zarr/TIFF/PNG mask at its resolution or downsampled by a whole factor")
    parser.add_argument("--maps", action="store_true", help="also write tile maps (CSV and heat-map PNGs)")
    parser.add_argument("--tile-size", type=float, default=None, help="map tile edge (default 256)")
    parser.add_argument("--tile-unit", choices=("px", "um"), default=None, help="unit of --tile-size (default px)")
    parser.add_argument("--min-axon-area", type=float, default=None, metavar="UM2",
                        help="filter: drop axons smaller than this area in um^2")
    parser.add_argument("--drop-border", action="store_true", help="filter: drop fibres touching the image border")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="filter: drop axons whose g-ratio is invalid (NaN, <= 0 or >= 1)")
    parser.add_argument("--no-qc", action="store_true",
                        help="skip the QC overlay PNGs (on by default: palette PNGs of at most 1280 px a side, "
                             "written beside the measurement, about 10-20 ms per image)")
    modes = parser.add_argument_group(
        "AxonDeepSeg 5.5's other modes", "unmyelinated axons are measured whenever an input has them (label 3 of a "
        "label image, as 'convert bids --uaxon label' writes, or <stem>_seg-uaxon.png beside ADS masks): "
        "<name>_uaxon_morphometrics.csv with ADS's '-u' columns, and both populations in the aggregate CSV")
    modes.add_argument("--nerve", nargs="?", const=True, default=None, metavar="MASK",
                       help="nerve mode (ADS's -n): fascicles are the nerve mask's 4-connected components; axons "
                            "outside the nerve are removed; writes <name>_nerve_morphometrics.json (fascicle areas, "
                            "per-fascicle and total axon density as ADS, plus per-fascicle AVF, MVF, aggregate "
                            "g-ratio) and <name>_fascicles.csv. MASK: a nerve mask (one input) or a folder of "
                            "<name>_seg-nerve.png; without MASK each input's <name>_seg-nerve.png beside it. On a "
                            "whole slide MASK is a Zarr/TIFF/PNG (at its resolution or downsampled by a whole "
                            "factor) and fascicles are joined across chunks: measured exactly, whatever their size")
    modes.add_argument("--nerve-label", type=int, default=None, metavar="V",
                       help="nerve mode with the nerve from label images: value V (nerve tissue) with the axon "
                            "and myelin pixels")
    modes.add_argument("--format", choices=("csv", "xlsx"), default="csv", dest="table_format",
                       help="per-image tables as CSV (default) or as AxonDeepSeg's <name>_axon_morphometrics.xlsx "
                            "(its column order and unnamed index; needs openpyxl: pip install 'nnunet-ext[xlsx]')")
    modes.add_argument("--no-index-maps", action="store_true",
                       help="skip AxonDeepSeg's index images (on by default: <name>_index.png with each axon's "
                            "0-based row number at its centroid, and _axonmyelin_index.png; not for whole slides)")
    modes.add_argument("-c", "--colorize", action="store_true",
                       help="also AxonDeepSeg's instance maps (its -c): <name>_colorized.png and the 16-bit "
                            "<name>_instance-map.png, from the fibres already measured (about 0.05 s per image of "
                            "1.5 megapixels); not for whole slides")
    post = parser.add_argument_group(
        "post-processing of predictions", "clean the masks before measuring (nnunet_ext.morphometrics.postprocess): "
        "fill axon holes, remove axons below an area and axons without a myelin ring; defaults set on ads_sem's "
        "manual masks, which they leave intact, and measured on ASTIH's SEM1 test subject by "
        "benchmarks/bench_real_sem.py")
    post.add_argument("--postprocess", action="store_true", help="apply the post-processing (default options below)")
    post.add_argument("--pp-min-axon-area", type=float, default=None, metavar="UM2",
                      help="remove axons smaller than this (default 0.1 um^2; 0 keeps all)")
    post.add_argument("--pp-min-myelin-coverage", type=float, default=None, metavar="FRACTION",
                      help="remove axons whose outer boundary is less than this fraction myelin (default 0.5; 0 "
                           "keeps all)")
    post.add_argument("--pp-no-fill-holes", action="store_true", help="do not fill holes in axons")
    post.add_argument("--pp-drop-orphan-myelin", action="store_true",
                      help="also remove myelin components left without an axon")
    slide = parser.add_argument_group(
        "whole slides", "a label image larger than memory (Zarr, OME-Zarr, tiled TIFF) is measured chunk by chunk "
        "through Dask; used for *.zarr inputs, a label TIFF above --max-image-pixels, or whenever --chunk-size is "
        "given")
    slide.add_argument("--chunk-size", type=int, default=None, help="chunk core size in px (default 2048)")
    slide.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                       help=f"a single label TIFF above this many pixels is measured chunk by chunk (default "
                            f"2^25 = {LARGE_IMAGE_PIXELS}, as segment; same CSVs, a tenth of the memory)")
    slide.add_argument("--halo", type=int, default=None,
                       help="margin read around each chunk, px (default 256); fibres reaching it are reported")
    slide.add_argument("--scheduler", default=None, help="dask.distributed scheduler address (default: threads)")
    slide.add_argument("--workers", type=int, default=None, help="threads of the local scheduler (default: cores)")
    slide.add_argument("--image-name", default=None,
                       help="name of the slide in the CSVs and output files (default: the image a 'nnunet-ext "
                            "segment' output came from, else the file name)")
    mtneuro = parser.add_argument_group(
        "MTNeuro semantic features", "per-slice vessel and axon fractions, cell count, mean cell size and mean "
        "nearest-neighbour distance between cells, written to mtneuro_semantic_features.csv")
    mtneuro.add_argument("--mtneuro", action="store_true", help="INPUT holds 4-class MTNeuro label maps")
    mtneuro.add_argument("--vessel-label", type=int, default=1, help="vessel value (default 1)")
    mtneuro.add_argument("--cell-label", type=int, default=2, help="cell value (default 2)")
    mtneuro.add_argument("--cell-connectivity", type=int, choices=(4, 8), default=8,
                         help="cells are 4- or 8-connected components (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from nnunet_ext.morphometrics.measure_files import discover_inputs, run_morphometrics, run_slide

    source, output = Path(args.input), Path(args.output)
    if source.is_dir() and not source.name.lower().endswith(".zarr") and output.resolve() == source.resolve():
        raise ValueError(f"-o {args.output}: the output folder is the input folder {args.input}; its CSVs and QC "
                         f"PNGs would be read as inputs by the next run: choose another output folder")
    if args.mtneuro:
        return _run_mtneuro(args)
    # defaults of axon morphometrics; None in the parser so that --mtneuro can tell which options were given
    for option, default in (("axon_label", 2), ("myelin_label", 1), ("axon_shape", "circle"),
                            ("label_suffix", "manual"), ("tile_size", 256), ("tile_unit", "px"), ("halo", 256)):
        if getattr(args, option) is None:
            setattr(args, option, default)
    tile_px = int(args.tile_size) if args.tile_unit == "px" else None
    tile_um = args.tile_size if args.tile_unit == "um" else None
    if args.tile_unit == "px" and args.tile_size != int(args.tile_size):
        raise ValueError(f"--tile-size {args.tile_size} px must be a whole number")
    if args.chunk_size is not None or args.input.rstrip("/").lower().endswith(".zarr") or _large_tiff(args):
        if args.postprocess:
            raise ValueError("--postprocess is not available for whole slides (measured chunk by chunk)")
        if args.colorize:
            raise ValueError("-c/--colorize is not available for whole slides (an instance map as large as the "
                             "slide); the QC overview shows the axons")
        summary = run_slide(
            args.input, args.output, args.pixel_size, chunk_size=args.chunk_size or 2048, halo=args.halo,
            axon_shape=args.axon_shape, myelin_label=args.myelin_label, axon_label=args.axon_label,
            maps=args.maps, tile_size_px=tile_px, tile_size_um=tile_um, scheduler=args.scheduler,
            workers=args.workers, min_axon_area_um2=args.min_axon_area, drop_border=args.drop_border,
            drop_invalid=args.drop_invalid, qc=not args.no_qc, overwrite=args.overwrite, roi=args.roi,
            image_name=args.image_name, nerve=args.nerve, nerve_label=args.nerve_label,
            table_format=args.table_format)
        return _report(summary, args.output)
    if args.image_name is not None:
        raise ValueError("--image-name names a whole slide (*.zarr or --chunk-size); images are named after their "
                         "files")
    inputs = discover_inputs(args.input, args.pixel_size, args.label_suffix, args.image_dir)
    postprocess = postprocess_options(args)
    summary = run_morphometrics(
        inputs, args.output, axon_shape=args.axon_shape, myelin_label=args.myelin_label,
        axon_label=args.axon_label, roi=args.roi, min_axon_area_um2=args.min_axon_area,
        drop_border=args.drop_border, drop_invalid=args.drop_invalid, maps=args.maps, tile_size_px=tile_px,
        tile_size_um=tile_um, qc=not args.no_qc, overwrite=args.overwrite, postprocess=postprocess,
        nerve=args.nerve, nerve_label=args.nerve_label, index_maps=not args.no_index_maps, colorize=args.colorize,
        table_format=args.table_format)
    return _report(summary, args.output)


def postprocess_options(args) -> dict | None:
    """Options of ``postprocess_masks`` from ``--postprocess`` and its ``--pp-*`` options (None without it)."""
    given = [args.pp_min_axon_area is not None, args.pp_min_myelin_coverage is not None, args.pp_no_fill_holes,
             args.pp_drop_orphan_myelin]
    if not args.postprocess:
        if any(given):
            raise ValueError("--pp-* options set the post-processing; add --postprocess to apply it")
        return None
    from nnunet_ext.morphometrics.postprocess import DEFAULT_POSTPROCESS

    options = dict(DEFAULT_POSTPROCESS)
    if args.pp_min_axon_area is not None:
        options["min_axon_area_um2"] = args.pp_min_axon_area
    if args.pp_min_myelin_coverage is not None:
        options["min_myelin_coverage"] = args.pp_min_myelin_coverage
    if args.pp_no_fill_holes:
        options["fill_holes"] = False
    if args.pp_drop_orphan_myelin:
        options["drop_orphan_myelin"] = True
    return options


def _large_tiff(args) -> bool:
    """A single label TIFF (not an ADS axon/myelin mask pair) too large to measure comfortably in one piece (a
    20000^2 TIFF took 6.1 GB in memory against 0.6 GB chunked, with the same CSVs)."""
    import re
    from pathlib import Path

    source = Path(args.input)
    if not (source.is_file() and source.name.lower().endswith((".tif", ".tiff"))) or args.image_dir is not None \
            or re.search(r"_seg-(axon|myelin)", source.name):
        return False
    from nnunet_ext.io.images import image_shape

    height, width = image_shape(source)
    limit = LARGE_IMAGE_PIXELS if args.max_image_pixels is None else args.max_image_pixels
    if height * width <= limit:
        return False
    print(f"{source}: {height}x{width} pixels, above {limit}: measured chunk by chunk (--chunk-size "
          f"{args.chunk_size or 2048})")
    return True


def _run_mtneuro(args) -> int:
    from nnunet_ext.morphometrics.mtneuro_features import MTNEURO_CSV, run_semantic_features

    # every option of axon morphometrics and whole slides: none of them means anything for MTNeuro maps
    axon_only = ("--axon-shape", "--myelin-label", "--label-suffix", "--image-dir", "--roi", "--maps", "--tile-size",
                 "--tile-unit", "--min-axon-area", "--drop-border", "--drop-invalid", "--no-qc", "--chunk-size",
                 "--halo", "--scheduler", "--workers", "--image-name", "--max-image-pixels", "--postprocess",
                 "--pp-min-axon-area", "--pp-min-myelin-coverage", "--pp-no-fill-holes", "--pp-drop-orphan-myelin",
                 "--nerve", "--nerve-label", "--no-index-maps", "--colorize")
    refused = [flag for flag in axon_only if getattr(args, flag[2:].replace("-", "_")) not in (None, False)]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not available with --mtneuro")
    table = run_semantic_features(args.input, args.output, args.pixel_size, vessel_label=args.vessel_label,
                                  cell_label=args.cell_label, axon_label=3 if args.axon_label is None else
                                  args.axon_label, connectivity=1 if args.cell_connectivity == 4 else 2,
                                  overwrite=args.overwrite)
    print(f"{table['image'].nunique()} label map(s), {len(table)} slice(s) -> {args.output}/{MTNEURO_CSV}")
    return 0


def _report(summary, output) -> int:
    uaxons = f", {summary['uaxons']} unmyelinated axons" if summary.get("uaxons") else ""
    print(f"{summary['images']} image(s), {summary['axons']} axons measured{uaxons} -> {output}")
    for aggregate in summary["aggregates"]:
        # with an ROI or a nerve, the aggregate counts the axons inside it
        where = " in the ROI" if aggregate.get("roi") else " in the nerve" if "fascicle_count" in aggregate else ""
        print(f"  {aggregate['image']}: {aggregate['axon_count']} axons{where}, AVF {aggregate['avf']:.4f}, "
              f"MVF {aggregate['mvf']:.4f}, aggregate g-ratio {aggregate['gratio_aggregate']:.4f}, "
              f"{aggregate['axon_density (per mm^2)']:.1f} axons/mm^2")
    return 0
