"""Shared references for the model tests: the official state-dict layout of Vim / VideoMamba (SPEC sections 2
and 10), the official bidirectional mixer recomputed one token and one channel at a time, and a deterministic
re-initialisation. Imported by the test files of this folder as ``from _official import ...``."""

import math

import torch
import torch.nn.functional as F


def official_layout(embed_dim: int, depth: int = 24, num_classes: int = 1000, num_frames=None, tubelet: int = 1,
                    d_state: int = 16, patch: int = 16, spatial_tokens: int = 197):
    """(key, shape) in the official state-dict order, from the official constructors' layer sizes: own
    parameters (cls_token, pos_embed, and for video models, ``num_frames`` given, temporal_pos_embedding and a
    3-D patch kernel), then patch_embed, head, layers, norm_f (SPEC section 2 for Vim, 10 for VideoMamba)."""
    e, di, r = embed_dim, 2 * embed_dim, math.ceil(embed_dim / 16)
    layout = [("cls_token", (1, 1, e)), ("pos_embed", (1, spatial_tokens, e))]
    if num_frames is not None:
        layout += [("temporal_pos_embedding", (1, num_frames // tubelet, e)),
                   ("patch_embed.proj.weight", (e, 3, tubelet, patch, patch))]
    else:
        layout += [("patch_embed.proj.weight", (e, 3, patch, patch))]
    layout += [("patch_embed.proj.bias", (e,)), ("head.weight", (num_classes, e)), ("head.bias", (num_classes,))]
    per_layer = [
        ("mixer.A_log", (di, d_state)), ("mixer.D", (di,)), ("mixer.A_b_log", (di, d_state)), ("mixer.D_b", (di,)),
        ("mixer.in_proj.weight", (2 * di, e)),
        ("mixer.conv1d.weight", (di, 1, 4)), ("mixer.conv1d.bias", (di,)),
        ("mixer.x_proj.weight", (r + 2 * d_state, di)),
        ("mixer.dt_proj.weight", (di, r)), ("mixer.dt_proj.bias", (di,)),
        ("mixer.conv1d_b.weight", (di, 1, 4)), ("mixer.conv1d_b.bias", (di,)),
        ("mixer.x_proj_b.weight", (r + 2 * d_state, di)),
        ("mixer.dt_proj_b.weight", (di, r)), ("mixer.dt_proj_b.bias", (di,)),
        ("mixer.out_proj.weight", (e, di)),
        ("norm.weight", (e,)),
    ]
    for i in range(depth):
        layout += [(f"layers.{i}.{key}", shape) for key, shape in per_layer]
    return layout + [("norm_f.weight", (e,))]


def naive_branch(x, z, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, dt_rank, d_state):
    """Official causal branch, one token and one channel at a time. x, z: [L, Di] (already flipped if backward)."""
    L, Di = x.shape
    K = conv_w.shape[-1]
    u = torch.zeros(L, Di, dtype=torch.float64)
    for t in range(L):
        acc = conv_b.double().clone()
        for k in range(K):
            src = t - (K - 1) + k
            if src >= 0:
                acc += conv_w[:, 0, k].double() * x[src].double()
        u[t] = acc * torch.sigmoid(acc)
    A = -torch.exp(A_log.double())
    h = torch.zeros(Di, d_state, dtype=torch.float64)
    out = torch.zeros(L, Di, dtype=torch.float64)
    for t in range(L):
        dbl = x_proj_w.double() @ u[t]
        dt_low, Bt, Ct = dbl[:dt_rank], dbl[dt_rank:dt_rank + d_state], dbl[dt_rank + d_state:]
        delta = F.softplus(dt_w.double() @ dt_low + dt_b.double())
        for d in range(Di):
            h[d] = torch.exp(delta[d] * A[d]) * h[d] + delta[d] * Bt * u[t, d]
            y = (h[d] * Ct).sum() + D[d].double() * u[t, d]
            out[t, d] = y * (z[t, d].double() * torch.sigmoid(z[t, d].double()))
    return out


def naive_mixer(m, hidden, divide_out: bool = True):
    """[L, E] -> [L, E], flips done explicitly as in the official code; the two directions averaged (Vim,
    ``divide_out``) or summed (VideoMamba)."""
    xz = hidden.double() @ m.in_proj.weight.double().T
    x, z = xz[:, : m.d_inner], xz[:, m.d_inner:]
    f = naive_branch(x, z, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias,
                     m.A_log, m.D, m.dt_rank, m.d_state)
    b = naive_branch(x.flip(0), z.flip(0), m.conv1d_b.weight, m.conv1d_b.bias, m.x_proj_b.weight,
                     m.dt_proj_b.weight, m.dt_proj_b.bias, m.A_b_log, m.D_b, m.dt_rank, m.d_state)
    y = (f + b.flip(0)) / 2 if divide_out else f + b.flip(0)
    return y @ m.out_proj.weight.double().T


def randomize(module, seed):
    """Every parameter of ``module`` redrawn from N(0, 0.25 / fan_in), reproducibly from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(1, p.shape[-1]))))
