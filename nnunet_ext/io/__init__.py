"""The bottom of the house: every rule about microscopy files lives here, and every other package uses it.

Modules
-------
atomic
    Files and folders that appear whole or not at all (temporary sibling, then rename; staging folder, then swap).
images
    Reading and writing 2D/3D images and label maps; image extensions and file stems; Zarr detection.
bids
    BIDS microscopy naming and detection, sidecar inheritance, AxonDeepSeg's mask values and file names.
pixel_size
    One lookup order and one unit table for pixel sizes (option, sidecar, OME-Zarr, nnU-Net spacing,
    ``pixel_size_in_micrometer.txt``), and the plausible range.
slides
    Whole slides larger than memory: one opener (Zarr, OME-Zarr, TIFF), one block type, one Dask task runner.
swc
    SWC neuron reconstructions (read, write, resample).
v3dpbd
    Vaa3D's compressed ``.v3dpbd`` stacks (packbits-difference, 8 and 16 bit, both byte orders).

Nothing in this package imports another package of nnunet_ext.
"""
