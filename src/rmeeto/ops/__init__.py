"""Ops with a PyTorch reference and a fused Triton path: ``selective_scan``, ``conv`` (conv1d + SiLU), ``norm``
(residual add + RMSNorm), ``embed`` (patch cut-out, class-token insert + position add), ``proj`` (both scan
directions' x_proj and dt_proj); their kernels live in :mod:`rmeeto.ops.triton` (the fused merge's too) and
:mod:`rmeeto.ops.policy` decides which path runs."""
