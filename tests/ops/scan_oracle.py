"""Test-only oracle: the selective-scan kernels of src/rmeeto/ops/triton/scan.py as they were before the
forward and backward bodies were unified (commit 62ed9c6), copied verbatim. The bidirectional kernels here copy
the single-direction bodies and choose their direction's pointers at run time; the restructured kernels must give
the same bits. tests/ops/test_interpreted.py swaps these kernels into scan.py's launchers (same parameter lists)
and compares. Imports Triton: load it only where Triton is installed."""

import triton
import triton.language as tl

# Layout. State tiles are [NP, BLOCK_D] (dstate x channels) with the channel axis last, so Triton spreads the
# channels over lanes and warps and keeps all dstate entries of a channel inside one thread: the sums over
# dstate (y = C . h, gB, ...) are in-thread adds. Token tiles are [CHUNK, BLOCK_D] with the CHUNK axis inside
# each thread too; _pick / _put read and write one token's row of such a tile with selects whose condition is
# a compile-time constant per register, so they cost nothing after LLVM folds them (x + -0.0 == x exactly).
# Strides of the [batch, dim, L] tensors are not specialised on purpose: a known unit stride would make
# Triton vectorise the loads along channels and move the chunk axis across lanes.
_SCAN_NOSPEC = [
    "dim", "L", "s_u_b", "s_u_d", "s_u_l", "s_dt_b", "s_dt_d", "s_dt_l", "s_z_b", "s_z_d", "s_z_l",
    "s_o_b", "s_o_d", "s_o_l", "s_g_b", "s_g_d", "s_g_l", "s_B_b", "s_B_l", "s_C_b", "s_C_l",
    "s_A_d", "s_A_n", "nchunks", "batch",
]

@triton.jit
def _softplus(x):
    # log1p(exp(x)) accurate for negative x (Kahan's log1p trick), identity above 20
    e = tl.exp(x)
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)

@triton.jit
def _pick(tile, offs_j, j):
    """Row j of a [CHUNK, BLOCK_D] tile -> [BLOCK_D]."""
    return tl.sum(tl.where(offs_j[:, None] == j, tile, -0.0), axis=0)

@triton.jit
def _put(tile, offs_j, j, row):
    """Tile with row j replaced by row ([BLOCK_D])."""
    return tl.where(offs_j[:, None] == j, row[None, :], tile)

@triton.jit
def _pick3(tile, offs_j, j):
    """[CHUNK, NP, BLOCK_D] -> [NP, BLOCK_D] at position j."""
    return tl.sum(tl.where(offs_j[:, None, None] == j, tile, -0.0), axis=0)

@triton.jit
def _load_pair(base, tj, s_l, s_n, offs_h, dstate, vj, PACK: tl.constexpr):
    """Entries 2k and 2k+1 (k < NP/2) of token tj's dstate vector of B or C as two float32 [NP/2] vectors.
    PACK (16-bit inputs, even offsets and strides, checked by the launcher) reads both halves of a pair
    with one 32-bit load: B and C are broadcast to every thread, so halving their loads matters."""
    if PACK:
        w = tl.load((base + tj * s_l).to(tl.pointer_type(tl.int32)) + offs_h, mask=(2 * offs_h < dstate) & vj, other=0)
        if base.dtype.element_ty == tl.bfloat16:
            lo = (w << 16).to(tl.float32, bitcast=True)
            hi = (w & -65536).to(tl.float32, bitcast=True)
        else:
            lo = (w & 65535).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        ptr = base + tj * s_l + 2 * offs_h * s_n
        lo = tl.load(ptr, mask=(2 * offs_h < dstate) & vj, other=0.0).to(tl.float32)
        hi = tl.load(ptr + s_n, mask=(2 * offs_h + 1 < dstate) & vj, other=0.0).to(tl.float32)
    return lo, hi

@triton.jit
def _chunk_pos(c, j, L, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
    """Memory position of token(s) j (an index or a [CHUNK] range) of chunk c in processing order, and
    whether they exist."""
    s = c * CHUNK + j
    if REVERSE:
        t = L - 1 - s
    else:
        t = s
    return t, s < L

@triton.jit
def _load_tile(base, t, offs_d, s_l, s_d, m2):
    return tl.load(base + t[:, None] * s_l + offs_d[None, :] * s_d, mask=m2, other=0.0).to(tl.float32)

@triton.jit
def _store_tile(base, t, offs_d, s_l, s_d, x, m2):
    tl.store(base + t[:, None] * s_l + offs_d[None, :] * s_d, x.to(base.dtype.element_ty), mask=m2)

@triton.jit
def _step_dt(xd, m2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta tile -> (pre-activation delta + bias, step size dt); dt = 0 on missing tokens."""
    if HAS_BIAS:
        xd = xd + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(xd)
    else:
        dt = xd
    return xd, tl.where(m2, dt, 0.0)

@triton.jit
def _load_a2(A_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d, A_IS_LOG: tl.constexpr):
    """exp(dt A) = exp2(dt A log2 e): A scaled by log2 e, as even / odd dstate halves [NP/2, BLOCK_D].
    With A_IS_LOG the tensor holds A_log (the parameter) and A = -exp(A_log) is formed here."""
    ptr = A_ptr + (2 * offs_h[:, None]) * s_A_n + offs_d[None, :] * s_A_d
    ae = tl.load(ptr, mask=(2 * offs_h[:, None] < dstate) & mask_d[None, :], other=0.0).to(tl.float32)
    ao = tl.load(ptr + s_A_n, mask=(2 * offs_h[:, None] + 1 < dstate) & mask_d[None, :], other=0.0).to(tl.float32)
    if A_IS_LOG:
        ae = -tl.exp(ae)
        ao = -tl.exp(ao)
    return ae * 1.4426950408889634, ao * 1.4426950408889634

@triton.jit
def _channel_consts(A_ptr, D_ptr, bias_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, A_IS_LOG: tl.constexpr):
    """A log2 e (even / odd halves), D and delta_bias of the program's channels (zeros when absent)."""
    A2e, A2o = _load_a2(A_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d, A_IS_LOG)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros_like(offs_d.to(tl.float32))
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(offs_d.to(tl.float32))
    return A2e, A2o, Dv, bias

@triton.jit
def _advance(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo):
    """One token of the recurrence h = exp(dt A) h + dt u B on both state halves (dt_j, dtu_j: [1, BLOCK_D])."""
    he = tl.exp2(dt_j * A2e) * he + Be[:, None] * dtu_j
    ho = tl.exp2(dt_j * A2o) * ho + Bo[:, None] * dtu_j
    return he, ho

@triton.jit
def _token_out(he, ho, A2e, A2o, dt, dtu, c, j, L, B_base, C_base, s_B_l, s_B_n, s_C_l, s_C_n, offs_h, offs_j,
               dstate, CHUNK: tl.constexpr, REVERSE: tl.constexpr, PACK: tl.constexpr):
    """Token j of chunk c (forward, and the backward's recompute): advance the state with its B, dt and
    dt u, and return the new state halves with the token's output C . h (before D and the gate)."""
    tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
    Be, Bo = _load_pair(B_base, tj, s_B_l, s_B_n, offs_h, dstate, vj, PACK)
    Ce, Co = _load_pair(C_base, tj, s_C_l, s_C_n, offs_h, dstate, vj, PACK)
    he, ho = _advance(he, ho, A2e, A2o, _pick(dt, offs_j, j)[None, :], _pick(dtu, offs_j, j)[None, :], Be, Bo)
    return he, ho, tl.sum(he * Ce[:, None], axis=0) + tl.sum(ho * Co[:, None], axis=0)

@triton.jit(do_not_specialize=_SCAN_NOSPEC)
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, L, dstate,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, NP // 2)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < dim

    A2e, A2o, Dv, bias = _channel_consts(A_ptr, D_ptr, bias_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                         HAS_D, HAS_BIAS, A_IS_LOG)

    u_base = u_ptr + pid_b * s_u_b
    dt_base = delta_ptr + pid_b * s_dt_b
    z_base = z_ptr + pid_b * s_z_b
    o_base = out_ptr + pid_b * s_o_b
    B_base = B_ptr + pid_b * s_B_b
    C_base = C_ptr + pid_b * s_C_b

    he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # state, even / odd dstate entries
    ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    for c in range(0, tl.cdiv(L, CHUNK)):
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, REVERSE)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, s_u_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, s_dt_l, s_dt_d, m2)
        if HAS_Z:
            zz = _load_tile(z_base, t, offs_d, s_z_l, s_z_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            he, ho, yj = _token_out(he, ho, A2e, A2o, dt, dtu, c, j, L, B_base, C_base, s_B_l, s_B_n, s_C_l,
                                    s_C_n, offs_h, offs_j, dstate, CHUNK, REVERSE, PACK)
            y = _put(y, offs_j, j, yj)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y = y * (zz * tl.sigmoid(zz))
        _store_tile(o_base, t, offs_d, s_o_l, s_o_d, y, m2)

@triton.jit(do_not_specialize=_SCAN_NOSPEC)
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
    ckpt_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    batch, dim, L, dstate, nchunks,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_g_b, s_g_d, s_g_l,
    s_o_b, s_o_d, s_o_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
):
    """Gradients. Outputs: du, ddelta, dz [batch, dim, L] in the input dtypes (strides s_o_*); float32
    partial sums dA [batch, dim, dstate], dD, dbias [batch, dim], dB, dC [n_dblocks, batch, L, dstate];
    scratch ckpt [batch, nchunks, 2, NP/2, dim] (the state at every chunk start, even / odd halves)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, NP // 2)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < dim
    mask_e = (2 * offs_h[:, None] < dstate) & mask_d[None, :]
    mask_o = (2 * offs_h[:, None] + 1 < dstate) & mask_d[None, :]

    A2e, A2o, Dv, bias = _channel_consts(A_ptr, D_ptr, bias_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                         HAS_D, HAS_BIAS, A_IS_LOG)

    u_base = u_ptr + pid_b * s_u_b
    dt_base = delta_ptr + pid_b * s_dt_b
    z_base = z_ptr + pid_b * s_z_b
    g_base = dout_ptr + pid_b * s_g_b
    B_base = B_ptr + pid_b * s_B_b
    C_base = C_ptr + pid_b * s_C_b
    io = pid_b * s_o_b  # du, ddelta, dz share one layout (strides s_o_*)
    du_base = du_ptr + io
    ddelta_base = ddelta_ptr + io
    dz_base = dz_ptr + io
    ck_base = ckpt_ptr + pid_b * nchunks * NP * dim + offs_h[:, None] * dim + offs_d[None, :]
    ck_odd = (NP // 2) * dim
    part_base = (pid_d * batch + pid_b) * L * dstate  # into dB / dC partials [n_dblocks, batch, L, dstate]

    # ---- pass 1: the state at the start of every chunk
    he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    for c in range(0, nchunks - 1):
        tl.store(ck_base + c * NP * dim, he, mask=mask_e)
        tl.store(ck_base + c * NP * dim + ck_odd, ho, mask=mask_o)
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, REVERSE)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, s_u_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, s_dt_l, s_dt_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        for j in tl.static_range(CHUNK):
            tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
            Be, Bo = _load_pair(B_base, tj, s_B_l, s_B_n, offs_h, dstate, vj, PACK)
            dt_j = _pick(dt, offs_j, j)[None, :]
            dtu_j = _pick(dtu, offs_j, j)[None, :]
            he, ho = _advance(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo)
    tl.store(ck_base + (nchunks - 1) * NP * dim, he, mask=mask_e)
    tl.store(ck_base + (nchunks - 1) * NP * dim + ck_odd, ho, mask=mask_o)
    tl.debug_barrier()

    # ---- pass 2: chunks in reverse processing order
    ge = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # adjoint dL/dh of the token after the current one
    go = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    ane = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # its decay
    ano = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dAe = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dAo = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, REVERSE)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, s_u_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, s_dt_l, s_dt_d, m2)
        dout = _load_tile(g_base, t, offs_d, s_g_l, s_g_d, m2)
        if HAS_Z:
            zz = _load_tile(z_base, t, offs_d, s_z_l, s_z_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u

        # recompute the chunk's states (kept in registers) and outputs
        he = tl.load(ck_base + c * NP * dim, mask=mask_e, other=0.0)
        ho = tl.load(ck_base + c * NP * dim + ck_odd, mask=mask_o, other=0.0)
        hse = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
        hso = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
        y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            he, ho, yj = _token_out(he, ho, A2e, A2o, dt, dtu, c, j, L, B_base, C_base, s_B_l, s_B_n, s_C_l,
                                    s_C_n, offs_h, offs_j, dstate, CHUNK, REVERSE, PACK)
            hse = tl.where(offs_j[:, None, None] == j, he[None, :, :], hse)
            hso = tl.where(offs_j[:, None, None] == j, ho[None, :, :], hso)
            y = _put(y, offs_j, j, yj)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            _store_tile(dz_base, t, offs_d, s_o_l, s_o_d, dz, m2)
        else:
            dy = dout

        # adjoint sweep from the chunk's last token to its first
        du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        ddt = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for jj in tl.static_range(CHUNK):
            j = CHUNK - 1 - jj
            tj, vj = _chunk_pos(c, j, L, CHUNK, REVERSE)
            Be, Bo = _load_pair(B_base, tj, s_B_l, s_B_n, offs_h, dstate, vj, PACK)
            Ce, Co = _load_pair(C_base, tj, s_C_l, s_C_n, offs_h, dstate, vj, PACK)
            dt_j = _pick(dt, offs_j, j)
            dtu_j = _pick(dtu, offs_j, j)
            dy_j = _pick(dy, offs_j, j)
            ge = ane * ge + Ce[:, None] * dy_j[None, :]
            go = ano * go + Co[:, None] * dy_j[None, :]
            hje = _pick3(hse, offs_j, j)
            hjo = _pick3(hso, offs_j, j)
            we = ge * (hje - Be[:, None] * dtu_j[None, :])  # g_t * a_t * h_{t-1}
            wo = go * (hjo - Bo[:, None] * dtu_j[None, :])
            gB = tl.sum(ge * Be[:, None], axis=0) + tl.sum(go * Bo[:, None], axis=0)
            wA = tl.sum(we * A2e, axis=0) + tl.sum(wo * A2o, axis=0)
            du = _put(du, offs_j, j, dt_j * gB)
            ddt = _put(ddt, offs_j, j, _pick(u, offs_j, j) * gB + wA * 0.6931471805599453)
            dAe += we * dt_j[None, :]
            dAo += wo * dt_j[None, :]
            p = dB_ptr + part_base + tj * dstate + 2 * offs_h
            tl.store(p, tl.sum(ge * dtu_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
            tl.store(p + 1, tl.sum(go * dtu_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
            p = dC_ptr + part_base + tj * dstate + 2 * offs_h
            tl.store(p, tl.sum(hje * dy_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
            tl.store(p + 1, tl.sum(hjo * dy_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
            ane = tl.exp2(dt_j[None, :] * A2e)
            ano = tl.exp2(dt_j[None, :] * A2o)
        if HAS_D:
            du += Dv[None, :] * dy
            dD_acc += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(xd)
        ddt = tl.where(m2, ddt, 0.0)
        db_acc += tl.sum(ddt, axis=0)
        _store_tile(du_base, t, offs_d, s_o_l, s_o_d, du, m2)
        _store_tile(ddelta_base, t, offs_d, s_o_l, s_o_d, ddt, m2)

    dA_base = dA_ptr + pid_b * dim * dstate + offs_d[None, :] * dstate + 2 * offs_h[:, None]
    tl.store(dA_base, dAe, mask=mask_e)
    tl.store(dA_base + 1, dAo, mask=mask_o)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, db_acc, mask=mask_d)


# ------------------------------------------------------------------------------------ both directions
# Vim's mixer scans the same tokens forwards (its own u, delta, A, B, C, D, delta_bias) and backwards (another
# set), gated by one shared z. The bidirectional kernels do both in one launch: the grid's third axis is the
# direction (0 forwards, 1 backwards), a runtime value. A program picks its direction's tensors and walks them
# in processing order with the forward code path (REVERSE=False in every helper), the backward direction
# reading memory from the last token down: its base pointers start at token L-1 and its token strides are
# negated. The per-token arithmetic is the single-direction kernels' to the bit; only addressing differs.
# Each direction's inputs must share one layout (the launcher copies them to contiguous tensors otherwise).
_BIDIR_NOSPEC = _SCAN_NOSPEC + ["s_o_r", "s_g_r"]

@triton.jit
def _dir_base(ptr, pid_b, s_b, s_l, t0, sgn):
    """(base, token stride) of one batch element's [dim, L] plane for processing order: forwards
    (t0 = 0, sgn = 1) or from the last token (t0 = L - 1, sgn = -1)."""
    return ptr + pid_b * s_b + t0 * s_l, sgn * s_l

@triton.jit(do_not_specialize=_BIDIR_NOSPEC)
def _scan_bidir_fwd_kernel(
    uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, Af_ptr, Ab_ptr, Bf_ptr, Bb_ptr, Cf_ptr, Cb_ptr, Df_ptr, Db_ptr,
    z_ptr, biasf_ptr, biasb_ptr, out_ptr, scale,
    dim, L, dstate,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_o_r, s_o_b, s_o_d, s_o_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
):
    """out [2, batch, dim, L] (strides s_o_*): out[0] the forward scan of the *f inputs, out[1] the backward
    scan of the *b inputs, both gated by z and multiplied by ``scale`` in float32 before rounding."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    rev = tl.program_id(2)
    bwd = rev == 1
    t0 = rev * (L - 1)
    sgn = 1 - 2 * rev
    u_ptr = tl.where(bwd, ub_ptr, uf_ptr)
    delta_ptr = tl.where(bwd, dtb_ptr, dtf_ptr)
    A_ptr = tl.where(bwd, Ab_ptr, Af_ptr)
    B_ptr = tl.where(bwd, Bb_ptr, Bf_ptr)
    C_ptr = tl.where(bwd, Cb_ptr, Cf_ptr)
    D_ptr = tl.where(bwd, Db_ptr, Df_ptr)
    bias_ptr = tl.where(bwd, biasb_ptr, biasf_ptr)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, NP // 2)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < dim

    A2e, A2o, Dv, bias = _channel_consts(A_ptr, D_ptr, bias_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                         HAS_D, HAS_BIAS, A_IS_LOG)

    u_base, su_l = _dir_base(u_ptr, pid_b, s_u_b, s_u_l, t0, sgn)
    dt_base, sdt_l = _dir_base(delta_ptr, pid_b, s_dt_b, s_dt_l, t0, sgn)
    z_base, sz_l = _dir_base(z_ptr, pid_b, s_z_b, s_z_l, t0, sgn)
    o_base, so_l = _dir_base(out_ptr + rev.to(tl.int64) * s_o_r, pid_b, s_o_b, s_o_l, t0, sgn)
    B_base, sB_l = _dir_base(B_ptr, pid_b, s_B_b, s_B_l, t0, sgn)
    C_base, sC_l = _dir_base(C_ptr, pid_b, s_C_b, s_C_l, t0, sgn)

    he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # state, even / odd dstate entries
    ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    for c in range(0, tl.cdiv(L, CHUNK)):
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, False)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, su_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, sdt_l, s_dt_d, m2)
        if HAS_Z:
            zz = _load_tile(z_base, t, offs_d, sz_l, s_z_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            he, ho, yj = _token_out(he, ho, A2e, A2o, dt, dtu, c, j, L, B_base, C_base, sB_l, s_B_n, sC_l,
                                    s_C_n, offs_h, offs_j, dstate, CHUNK, False, PACK)
            y = _put(y, offs_j, j, yj)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            y = y * (zz * tl.sigmoid(zz))
        y = y * scale
        _store_tile(o_base, t, offs_d, so_l, s_o_d, y, m2)

@triton.jit(do_not_specialize=_BIDIR_NOSPEC)
def _scan_bidir_bwd_kernel(
    uf_ptr, ub_ptr, dtf_ptr, dtb_ptr, Af_ptr, Ab_ptr, Bf_ptr, Bb_ptr, Cf_ptr, Cb_ptr, Df_ptr, Db_ptr,
    z_ptr, biasf_ptr, biasb_ptr, dout_ptr, scale,
    ckpt_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    batch, dim, L, dstate, nchunks,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_A_d, s_A_n,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_g_r, s_g_b, s_g_d, s_g_l,
    s_o_r, s_o_b, s_o_d, s_o_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, PACK: tl.constexpr, A_IS_LOG: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, NP: tl.constexpr,
):
    """Gradients of :func:`_scan_bidir_fwd_kernel` for dout [2, batch, dim, L] (strides s_g_*; the
    gradient of the scaled output, scaled back here). Outputs du, ddelta, dz [2, batch, dim, L] (strides
    s_o_*; dz per direction, summed by the caller); float32 partial sums dA [2, batch, dim, dstate],
    dD, dbias [2, batch, dim], dB, dC [n_dblocks, 2, batch, L, dstate]; scratch ckpt
    [2, batch, nchunks, 2, NP/2, dim]. The body is :func:`_scan_bwd_kernel`'s with REVERSE=False."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    rev = tl.program_id(2)
    bwd = rev == 1
    t0 = rev * (L - 1)
    sgn = 1 - 2 * rev
    u_ptr = tl.where(bwd, ub_ptr, uf_ptr)
    delta_ptr = tl.where(bwd, dtb_ptr, dtf_ptr)
    A_ptr = tl.where(bwd, Ab_ptr, Af_ptr)
    B_ptr = tl.where(bwd, Bb_ptr, Bf_ptr)
    C_ptr = tl.where(bwd, Cb_ptr, Cf_ptr)
    D_ptr = tl.where(bwd, Db_ptr, Df_ptr)
    bias_ptr = tl.where(bwd, biasb_ptr, biasf_ptr)
    pid_rb = rev.to(tl.int64) * batch + pid_b  # (direction, batch element) row of the scratch / partials

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, NP // 2)
    offs_j = tl.arange(0, CHUNK)
    mask_d = offs_d < dim
    mask_e = (2 * offs_h[:, None] < dstate) & mask_d[None, :]
    mask_o = (2 * offs_h[:, None] + 1 < dstate) & mask_d[None, :]

    A2e, A2o, Dv, bias = _channel_consts(A_ptr, D_ptr, bias_ptr, offs_h, offs_d, s_A_n, s_A_d, dstate, mask_d,
                                         HAS_D, HAS_BIAS, A_IS_LOG)

    u_base, su_l = _dir_base(u_ptr, pid_b, s_u_b, s_u_l, t0, sgn)
    dt_base, sdt_l = _dir_base(delta_ptr, pid_b, s_dt_b, s_dt_l, t0, sgn)
    z_base, sz_l = _dir_base(z_ptr, pid_b, s_z_b, s_z_l, t0, sgn)
    g_base, sg_l = _dir_base(dout_ptr + rev.to(tl.int64) * s_g_r, pid_b, s_g_b, s_g_l, t0, sgn)
    B_base, sB_l = _dir_base(B_ptr, pid_b, s_B_b, s_B_l, t0, sgn)
    C_base, sC_l = _dir_base(C_ptr, pid_b, s_C_b, s_C_l, t0, sgn)
    io = rev.to(tl.int64) * s_o_r  # du, ddelta, dz share one layout (strides s_o_*)
    du_base, so_l = _dir_base(du_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
    ddelta_base, so_l = _dir_base(ddelta_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
    dz_base, so_l = _dir_base(dz_ptr + io, pid_b, s_o_b, s_o_l, t0, sgn)
    ck_base = ckpt_ptr + pid_rb * nchunks * NP * dim + offs_h[:, None] * dim + offs_d[None, :]
    ck_odd = (NP // 2) * dim
    # into dB / dC partials [n_dblocks, 2, batch, L, dstate], at memory token t0 + sgn * (processing index)
    part_base = ((pid_d * 2 * batch + pid_rb) * L + t0) * dstate
    s_part = sgn * dstate

    # ---- pass 1: the state at the start of every chunk
    he = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    ho = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    for c in range(0, nchunks - 1):
        tl.store(ck_base + c * NP * dim, he, mask=mask_e)
        tl.store(ck_base + c * NP * dim + ck_odd, ho, mask=mask_o)
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, False)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, su_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, sdt_l, s_dt_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        for j in tl.static_range(CHUNK):
            tj, vj = _chunk_pos(c, j, L, CHUNK, False)
            Be, Bo = _load_pair(B_base, tj, sB_l, s_B_n, offs_h, dstate, vj, PACK)
            dt_j = _pick(dt, offs_j, j)[None, :]
            dtu_j = _pick(dtu, offs_j, j)[None, :]
            he, ho = _advance(he, ho, A2e, A2o, dt_j, dtu_j, Be, Bo)
    tl.store(ck_base + (nchunks - 1) * NP * dim, he, mask=mask_e)
    tl.store(ck_base + (nchunks - 1) * NP * dim + ck_odd, ho, mask=mask_o)
    tl.debug_barrier()

    # ---- pass 2: chunks in reverse processing order
    ge = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # adjoint dL/dh of the token after the current one
    go = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    ane = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)  # its decay
    ano = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dAe = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dAo = tl.zeros([NP // 2, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        t, mask_t = _chunk_pos(c, offs_j, L, CHUNK, False)
        m2 = mask_t[:, None] & mask_d[None, :]
        u = _load_tile(u_base, t, offs_d, su_l, s_u_d, m2)
        xd = _load_tile(dt_base, t, offs_d, sdt_l, s_dt_d, m2)
        # the output was scaled; its gradient as the unscaled scan sees it (exact for a power of two)
        dout = _load_tile(g_base, t, offs_d, sg_l, s_g_d, m2) * scale
        if HAS_Z:
            zz = _load_tile(z_base, t, offs_d, sz_l, s_z_d, m2)
        xd, dt = _step_dt(xd, m2, bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u

        # recompute the chunk's states (kept in registers) and outputs
        he = tl.load(ck_base + c * NP * dim, mask=mask_e, other=0.0)
        ho = tl.load(ck_base + c * NP * dim + ck_odd, mask=mask_o, other=0.0)
        hse = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
        hso = tl.zeros([CHUNK, NP // 2, BLOCK_D], dtype=tl.float32)
        y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(CHUNK):
            he, ho, yj = _token_out(he, ho, A2e, A2o, dt, dtu, c, j, L, B_base, C_base, sB_l, s_B_n, sC_l,
                                    s_C_n, offs_h, offs_j, dstate, CHUNK, False, PACK)
            hse = tl.where(offs_j[:, None, None] == j, he[None, :, :], hse)
            hso = tl.where(offs_j[:, None, None] == j, ho[None, :, :], hso)
            y = _put(y, offs_j, j, yj)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            _store_tile(dz_base, t, offs_d, so_l, s_o_d, dz, m2)
        else:
            dy = dout

        # adjoint sweep from the chunk's last token to its first
        du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        ddt = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        for jj in tl.static_range(CHUNK):
            j = CHUNK - 1 - jj
            tj, vj = _chunk_pos(c, j, L, CHUNK, False)
            Be, Bo = _load_pair(B_base, tj, sB_l, s_B_n, offs_h, dstate, vj, PACK)
            Ce, Co = _load_pair(C_base, tj, sC_l, s_C_n, offs_h, dstate, vj, PACK)
            dt_j = _pick(dt, offs_j, j)
            dtu_j = _pick(dtu, offs_j, j)
            dy_j = _pick(dy, offs_j, j)
            ge = ane * ge + Ce[:, None] * dy_j[None, :]
            go = ano * go + Co[:, None] * dy_j[None, :]
            hje = _pick3(hse, offs_j, j)
            hjo = _pick3(hso, offs_j, j)
            we = ge * (hje - Be[:, None] * dtu_j[None, :])  # g_t * a_t * h_{t-1}
            wo = go * (hjo - Bo[:, None] * dtu_j[None, :])
            gB = tl.sum(ge * Be[:, None], axis=0) + tl.sum(go * Bo[:, None], axis=0)
            wA = tl.sum(we * A2e, axis=0) + tl.sum(wo * A2o, axis=0)
            du = _put(du, offs_j, j, dt_j * gB)
            ddt = _put(ddt, offs_j, j, _pick(u, offs_j, j) * gB + wA * 0.6931471805599453)
            dAe += we * dt_j[None, :]
            dAo += wo * dt_j[None, :]
            p = dB_ptr + part_base + tj * s_part + 2 * offs_h
            tl.store(p, tl.sum(ge * dtu_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
            tl.store(p + 1, tl.sum(go * dtu_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
            p = dC_ptr + part_base + tj * s_part + 2 * offs_h
            tl.store(p, tl.sum(hje * dy_j[None, :], axis=1), mask=(2 * offs_h < dstate) & vj)
            tl.store(p + 1, tl.sum(hjo * dy_j[None, :], axis=1), mask=(2 * offs_h + 1 < dstate) & vj)
            ane = tl.exp2(dt_j[None, :] * A2e)
            ano = tl.exp2(dt_j[None, :] * A2o)
        if HAS_D:
            du += Dv[None, :] * dy
            dD_acc += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(xd)
        ddt = tl.where(m2, ddt, 0.0)
        db_acc += tl.sum(ddt, axis=0)
        _store_tile(du_base, t, offs_d, so_l, s_o_d, du, m2)
        _store_tile(ddelta_base, t, offs_d, so_l, s_o_d, ddt, m2)

    dA_base = dA_ptr + pid_rb * dim * dstate + offs_d[None, :] * dstate + 2 * offs_h[:, None]
    tl.store(dA_base, dAe, mask=mask_e)
    tl.store(dA_base + 1, dAo, mask=mask_o)
    tl.store(dD_ptr + pid_rb * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_rb * dim + offs_d, db_acc, mask=mask_d)
