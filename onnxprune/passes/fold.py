"""Placeholder: BatchNorm / Gemm alpha-beta folding is being written."""
