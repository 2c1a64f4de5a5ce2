"""Synthetic myelinated-axon phantoms with exactly known truth, written as BIDS microscopy datasets;
``nnunet-ext phantoms``."""
