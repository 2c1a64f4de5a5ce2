"""Auxiliary training losses used by nnunet-ext's trainers (training only: no part of the saved network)."""
