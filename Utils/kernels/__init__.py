"""Kernels: sparse propagation (Spmm), the blocked all-node kernels of the objective (Kernels) and
the subspace term's mask pairs (MaskPairs)."""
