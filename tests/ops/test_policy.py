"""The kernel policy (rmeeto.ops.policy): environment read once, the Python setters and the reference context,
CPU tensors never fused, and the forced-reference path bit-identical to the default one on CPU."""

import os
import subprocess
import sys

import pytest
import torch

import rmeeto
from rmeeto.merge import MergeConfig, apply_merge
from rmeeto.ops import policy
from rmeeto.ops.selective_scan import resolve_backend, set_default_backend

CUDA = torch.device("cuda")


def _in_subprocess(code: str, **env) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_environment_is_read_once_at_import():
    code = (
        "import os\n"
        "from rmeeto.ops import policy\n"
        "os.environ.update(RMEETO_FUSED_NORM='1', RMEETO_FUSED_CONV='0', RMEETO_SCAN_BACKEND='chunked')\n"
        "print(policy._fused['norm'], policy._fused['conv'], policy._fused['merge'], policy.scan_backend())\n"
    )
    out = _in_subprocess(code, RMEETO_FUSED_NORM="0", RMEETO_FUSED_CONV="1", RMEETO_SCAN_BACKEND="reference")
    # values at import win over the later changes to os.environ
    assert out == "False True True reference"


def test_set_fused_and_set_scan_backend_take_effect_and_restore(monkeypatch):
    monkeypatch.setattr(policy, "_HAS_TRITON", True)  # decide as if Triton were installed
    assert policy.use_fused("norm", CUDA)
    policy.set_fused("norm", False)
    try:
        assert not policy.use_fused("norm", CUDA) and policy.use_fused("conv", CUDA)
    finally:
        policy.set_fused("norm", True)
    assert policy.use_fused("norm", CUDA)
    set_default_backend("reference")
    try:
        assert policy.scan_backend() == "reference" and resolve_backend("auto", torch.device("cpu")) == "reference"
    finally:
        set_default_backend("auto")
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="unknown op"):
        policy.set_fused("attention", True)
    with pytest.raises(ValueError, match="not valid"):
        policy.use_fused("conv", CUDA, backend="cuda")


def test_force_reference_takes_effect_and_restores(monkeypatch):
    monkeypatch.setattr(policy, "_HAS_TRITON", True)
    assert all(policy.use_fused(op, CUDA) for op in policy.OPS)
    with policy.force_reference():
        assert not any(policy.use_fused(op, CUDA) for op in policy.OPS)
        assert policy.scan_backend("triton") == "chunked" and policy.scan_backend() == "chunked"
        assert policy.scan_backend("reference") == "reference"  # a PyTorch backend asked for stays
        with policy.force_reference():
            pass
        assert not policy.use_fused("norm", CUDA)  # the inner exit restored "forced", not "free"
    assert all(policy.use_fused(op, CUDA) for op in policy.OPS)
    with pytest.raises(RuntimeError):
        with policy.force_reference():
            raise RuntimeError("boom")
    assert policy.use_fused("merge", CUDA)  # restored after an exception too


def test_cpu_tensors_never_fused(monkeypatch):
    monkeypatch.setattr(policy, "_HAS_TRITON", True)
    x = torch.zeros(2, 3)
    assert not any(policy.use_fused(op, x) for op in policy.OPS)
    assert policy.use_fused("conv", x, backend="triton")  # an explicit request is the caller's (interpreter tests)
    assert not policy.use_fused("conv", CUDA, backend="torch")
    assert policy.op_backend("chunked") == policy.op_backend("reference") == "torch"
    assert policy.op_backend("auto") == policy.op_backend("triton") == "auto"


def _train_step(merged: bool, reference: bool):
    torch.manual_seed(0)
    model = rmeeto.create_model("vim_digits_patch4_32", drop_path_rate=0.1)
    if merged:
        apply_merge(model, MergeConfig(num_merged=4))
    model.train()
    x = torch.randn(2, model.patch_embed.proj.in_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # drop path's draws
    if reference:
        with policy.force_reference():
            out = model(x)
    else:
        out = model(x)
    out.square().mean().backward()
    return [out.detach()] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("merged", [False, True])
def test_forced_reference_is_the_cpu_default_bitwise(merged):
    """On CPU the default path is the PyTorch one, so forcing it changes no bit (drop path's draws included)."""
    default, forced = _train_step(merged, False), _train_step(merged, True)
    assert len(default) == len(forced)
    assert all(torch.equal(a, b) for a, b in zip(default, forced))


def test_every_switch_change_moves_the_generation():
    """Caches of decisions taken from the switches (the mixers' prepared paths) key on policy.generation(): every
    setter and force_reference's entry and exit must change it, or a cached plan would outlive its switch."""
    seen = [policy.generation()]

    def moved():
        seen.append(policy.generation())
        return seen[-1] != seen[-2]

    was_plan, was_launch, was_pdl = policy._fused["plan"], policy.fast_launch(), policy.pdl()
    try:
        policy.set_fused("plan", False)
        assert moved()
        policy.set_fast_launch(not was_launch)
        assert moved()
        policy.set_pdl(not was_pdl)
        assert moved()
        with policy.force_reference():
            assert moved()
        assert moved()
    finally:
        policy.set_fused("plan", was_plan)
        policy.set_fast_launch(was_launch)
        policy.set_pdl(was_pdl)
    backend = policy.scan_backend()
    policy.set_scan_backend("chunked")
    assert moved()
    policy.set_scan_backend(backend)
    assert moved()


def test_pdl_is_off_by_default_and_never_on_without_a_hopper_gpu():
    """Programmatic dependent launch: off unless RMEETO_PDL=1 (read at import); switched on, the launchers'
    constexpr and launch option appear only where CUDA with compute capability 9.0 or more runs the kernels (never
    under Triton's interpreter, never on a CPU-only machine)."""
    from rmeeto.ops.triton import _launch

    out = _in_subprocess("from rmeeto.ops import policy\nprint(policy.pdl())\n")
    assert out == "False"
    out = _in_subprocess("from rmeeto.ops import policy\nprint(policy.pdl())\n", RMEETO_PDL="1")
    assert out == "True"
    assert _launch.pdl_meta() == {} or policy.pdl()
    was = policy.pdl()
    policy.set_pdl(True)
    try:
        hopper = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
        interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        expected = {"PDL": True, "launch_pdl": True} if hopper and not interpreted else {}
        assert _launch.pdl_meta() in (expected, {})  # {} too where the installed Triton lacks launch_pdl
        if not hopper:
            assert _launch.pdl_meta() == {}
    finally:
        policy.set_pdl(was)
    assert policy.pdl() == was
