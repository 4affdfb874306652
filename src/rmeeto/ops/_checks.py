"""Input checks shared by the selective scan's dispatcher and its Triton kernel (which must not import the
dispatcher: the dispatcher imports it)."""

from __future__ import annotations

__all__ = ["check_scan_shapes"]


def check_scan_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ValueError naming the first input whose shape breaks the selective scan's contract."""
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, dim, length], got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [dim={dim}, dstate], got {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, dstate, length):
            raise ValueError(f"{name} must be [batch, dstate, length] = {(batch, dstate, length)}, got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be [dim={dim}], got {tuple(t.shape)}")
