"""The key of the cached Triton launcher (rmeeto.ops.triton._launch): two calls may share a compiled kernel only
if Triton would have compiled them the same. Pure functions, checked on CPU against Triton's own specialisation."""

import contextlib
import itertools

import pytest
import torch

from rmeeto.ops import policy
from rmeeto.ops.triton import _launch
from rmeeto.ops.triton._launch import CONSTEXPR, NO_ALIGN, NO_SPECIALIZE, SPECIALIZE, arg_key, specialization_key

MODES = (SPECIALIZE, NO_ALIGN, NO_SPECIALIZE)


def _key(args, modes, meta=None):
    return specialization_key(0, tuple(args), tuple(modes), meta or {})


def test_pointer_alignment_is_in_the_key_unless_not_specialised():
    buf = torch.zeros(64, dtype=torch.float16)
    aligned, offset = buf, buf[1:]  # 2-byte offset: not a multiple of 16
    assert aligned.data_ptr() % 16 == 0 and offset.data_ptr() % 16 != 0
    assert _key([aligned], [SPECIALIZE]) != _key([offset], [SPECIALIZE])
    assert _key([aligned], [NO_ALIGN]) == _key([offset], [NO_ALIGN])
    assert _key([aligned], [NO_SPECIALIZE]) == _key([offset], [NO_SPECIALIZE])
    assert _key([buf[8:]], [SPECIALIZE]) == _key([aligned], [SPECIALIZE])  # 16 bytes further: aligned again
    assert _key([aligned], [SPECIALIZE]) != _key([aligned.float()], [SPECIALIZE])  # dtype


def test_integer_divisibility_one_and_width():
    assert _key([16], [SPECIALIZE]) != _key([17], [SPECIALIZE])
    assert _key([16], [NO_ALIGN]) == _key([17], [NO_ALIGN])
    assert _key([16], [NO_SPECIALIZE]) == _key([17], [NO_SPECIALIZE])
    for mode in (SPECIALIZE, NO_ALIGN):  # a specialised 1 becomes a constant
        assert _key([1], [mode]) != _key([17], [mode])
    assert _key([1], [NO_SPECIALIZE]) == _key([17], [NO_SPECIALIZE])
    for mode in MODES:  # i32 / i64 / u64 are different signatures
        assert len({_key([v], [mode]) for v in (3, 2**31 + 3, 2**63 + 3)}) == 3


def test_constexprs_options_and_device_are_in_the_key():
    assert _key([True], [CONSTEXPR]) != _key([1], [CONSTEXPR])  # equal as Python values
    assert _key([], [], {"BLOCK": 32}) != _key([], [], {"BLOCK": 64})
    assert _key([], [], {"BLOCK": True}) != _key([], [], {"BLOCK": 1})
    assert _key([], [], {"num_warps": 4}) != _key([], [], {"num_warps": 8})
    assert specialization_key(0, (), (), {}) != specialization_key(1, (), (), {})
    assert _key([None], [SPECIALIZE]) != _key([0], [SPECIALIZE])
    assert _key([2.0], [SPECIALIZE]) == _key([3.5], [SPECIALIZE])  # floats are never specialised


def test_unsupported_arguments_raise():
    with pytest.raises(_launch._Unsupported):
        arg_key(torch.tensor(1).numpy(), SPECIALIZE)  # a numpy scalar: the plain launch handles it


def test_equal_keys_imply_equal_triton_specialisation():
    """On the Triton installed here: for every pair of sample arguments and every mode, the keys are equal exactly
    when Triton's native specialisations are (a coarser key would launch wrong kernels, a finer one recompile)."""
    pytest.importorskip("triton")
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        pytest.skip("this Triton has no native_specialize_impl")
    buf = torch.zeros(256, dtype=torch.float16)
    samples = [buf, buf[1:], buf[8:], buf[4:], buf.float(), buf.bfloat16()[3:], torch.zeros(5, dtype=torch.int64),
               torch.zeros(3, dtype=torch.bool), 0, 1, 2, 16, 17, 32, -16, -1, 2**31 - 1, 2**31, 2**31 + 16,
               -2**31, -2**31 - 1, 2**40, 2**63, 2**63 + 16, True, False, 0.5, 1.0, None]
    try:  # host-made TMA descriptors: dtype and block shape compiled in, address, shape, strides and padding not
        from triton.tools.tensor_descriptor import TensorDescriptor as TD
        samples += [TD(buf, [16, 16], [16, 1], [16, 16]), TD(buf[8:], [8, 16], [16, 1], [16, 16]),
                    TD(buf, [32, 8], [8, 1], [16, 8]), TD(buf, [16, 16], [16, 1], [16, 16], padding="nan"),
                    TD(buf.float(), [16, 16], [16, 1], [16, 16]), TD(buf.bfloat16(), [16, 16], [16, 1], [8, 16])]
    except ImportError:
        pass
    flags = {SPECIALIZE: (True, True), NO_ALIGN: (True, False), NO_SPECIALIZE: (False, False)}
    for mode in MODES:
        spec, align = flags[mode]
        native = [native_specialize_impl(BaseBackend, v, False, spec, align) for v in samples]
        keys = [arg_key(v, mode) for v in samples]
        for (k1, n1), (k2, n2) in itertools.combinations(zip(keys, native), 2):
            assert (k1 == k2) == (n1 == n2), (mode, k1, k2, n1, n2)


def test_param_modes_follow_the_kernel_declaration():
    pytest.importorskip("triton")
    from rmeeto.ops.triton import scan

    kernel = scan._scan_fwd_kernel
    if not hasattr(kernel, "params"):
        pytest.skip("interpreted kernels carry no parameter list")
    modes = dict(zip((p.name for p in kernel.params), _launch.param_modes(kernel)))
    assert modes["u_ptr"] == SPECIALIZE
    assert modes["s_u_l"] == NO_SPECIALIZE  # listed in the kernel's do_not_specialize
    assert modes["dstate"] == SPECIALIZE
    assert modes["BLOCK_D"] == CONSTEXPR


def test_cpu_tensors_and_switch_take_the_plain_launch(monkeypatch):
    calls = []

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: calls.append((grid, args, meta)) or "compiled"

    assert _launch.launch(FakeKernel(), (2,), torch.device("cpu"), 1, 2, BLOCK=4) == "compiled"
    monkeypatch.setattr(policy, "_fast_launch", False)
    assert not policy.fast_launch()
    assert calls == [((2,), (1, 2), {"BLOCK": 4})]


def test_compiled_key_function_equals_the_reference_key():
    """The generated per-kernel key (straight-line code, fast paths for tensors and int32) gives exactly
    specialization_key's tuple, for every mode and every kind of argument, positional constexprs included."""
    buf = torch.zeros(64, dtype=torch.float16)
    samples = [buf, buf[1:], buf[8:], torch.nn.Parameter(torch.zeros(4)), 0, 1, 16, 17, -16, 2**31, 2**63 + 16,
               True, 0.5, None]
    modes = (SPECIALIZE, NO_ALIGN, NO_SPECIALIZE, CONSTEXPR)
    for mode in modes:
        fn = _launch.compile_key_function((mode,))
        for v in samples:
            assert fn(3, {"X": 1}, v) == specialization_key(3, (v,), (mode,), {"X": 1}), (mode, v)
    all_modes = modes * 2
    fn = _launch.compile_key_function(all_modes)
    args = (buf[1:], 17, 2**40, 8, buf, None, 1, 2.5)
    meta = {"BLOCK": 64, "FLAG": True, "num_warps": 4}
    assert fn(0, meta, *args) == specialization_key(0, args, all_modes, meta)
    with pytest.raises(_launch._Unsupported):
        fn(0, meta, torch.tensor(1).numpy(), *args[1:])  # a numpy scalar for a specialised parameter


# ------------------------------------------------------------------ the fast path's logic, with a fake Triton
class _Param:
    def __init__(self, name, constexpr=False, nospec=False, default=None):
        self.name, self.is_constexpr, self.do_not_specialize = name, constexpr, nospec
        self.do_not_specialize_on_alignment = False
        self.annotation_type, self.is_const = "", False
        self.has_default, self.default = default is not None, default


class _FakeCompiled:
    def __init__(self, log):
        self.function, self.packed_metadata = "function-handle", "packed"
        self.run = lambda *a: log.append(("fast", a))


class _FakeJIT:
    """Stands in for a JITFunction: kernel(x_ptr, n, stride, BLOCK: constexpr, FLAG: constexpr,
    PDL: constexpr = False)."""

    def __init__(self):
        self.params = [_Param("x_ptr"), _Param("n"), _Param("stride", nospec=True), _Param("BLOCK", True),
                       _Param("FLAG", True), _Param("PDL", True, default=False)]
        self.pre_run_hooks = []
        self.log = []
        self.compiled = _FakeCompiled(self.log)

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("plain", grid, args, meta))
            return self.compiled
        return run


class _FakeRuntime:
    def __init__(self, jit_type):
        class Runtime:
            launch_enter_hook = None
            launch_exit_hook = None
            debug = False

        class Knobs:
            runtime = Runtime

        self.knobs, self.jit_function = Knobs, jit_type
        self.get_device = lambda: 0
        self.get_stream = lambda index: 1234 + index


@pytest.fixture
def fake(monkeypatch):
    """(kernel, runtime, device, buffer): a fake JIT kernel and Triton runtime behind the fast path, switched on,
    with an empty launch cache; the device is only compared and passed along (no GPU needed)."""
    kernel = _FakeJIT()
    rt = _FakeRuntime(_FakeJIT)
    monkeypatch.setattr(_launch, "_get_runtime", lambda: rt)
    monkeypatch.setattr(policy, "_fast_launch", True)
    monkeypatch.setattr(_launch, "on_device", lambda device: contextlib.nullcontext())  # no CUDA here
    _launch.clear_cache()
    return kernel, rt, torch.device("cuda", 0), torch.zeros(64)


def test_fast_path_serves_a_repeated_specialization_and_only_that(fake, monkeypatch):
    kernel, rt, dev, buf = fake

    def call(x, n=32, stride=7, grid=(3, 2), **meta):
        kernel.log.clear()
        out = _launch.launch(kernel, grid, dev, x, n, stride, BLOCK=64, FLAG=True, num_warps=4, **meta)
        assert out is kernel.compiled
        return kernel.log[0][0], kernel.log[0]

    assert call(buf)[0] == "plain"  # first of its specialization: Triton's own path
    kind, (_, fast_args) = call(buf, stride=9)  # only a do_not_specialize argument changed: cached
    assert kind == "fast"
    # grid padded to 3-D, the device's current stream, the compiled function, no launch metadata, the hooks,
    # then every parameter in signature order, constexprs included, a constexpr left out at its default (PDL)
    assert fast_args == (3, 2, 1, 1234, "function-handle", "packed", None, None, None, buf, 32, 9, 64, True, False)
    assert call(buf, PDL=True)[0] == "plain"  # the defaulted constexpr given: another specialization
    kind, (_, fast_args) = call(buf, PDL=True)
    assert kind == "fast" and fast_args[-1] is True
    assert call(buf[1:])[0] == "plain"  # another alignment
    assert call(buf[1:])[0] == "fast"
    assert call(buf, n=48)[0] == "fast"  # 48 % 16 == 0 like 32
    assert call(buf, n=33)[0] == "plain"  # divisibility changed
    assert call(buf, n=1)[0] == "plain"  # == 1 is a constant to Triton
    assert call(buf.double())[0] == "plain"  # dtype
    assert call(buf, num_stages=2)[0] == "plain"  # a launch option
    assert call(buf, grid=lambda meta: (1,))[0] == "plain"  # callable grids are left to Triton
    kernel.log.clear()  # a parameter with no default left out (Triton would refuse it): never cached
    for _ in range(2):
        _launch.launch(kernel, (3, 2), dev, buf, 32, 7, BLOCK=64, num_warps=4)
    assert [entry[0] for entry in kernel.log] == ["plain", "plain"]
    rt.knobs.runtime.launch_enter_hook = lambda *a: None  # a hook must see every launch
    assert call(buf)[0] == "plain"
    rt.knobs.runtime.launch_enter_hook = None
    kernel.pre_run_hooks.append(lambda *a, **k: None)
    _launch.clear_cache()
    monkeypatch.setattr(_launch, "_get_runtime", lambda: rt)
    assert call(buf)[0] == "plain" and call(buf)[0] == "plain"
    kernel.pre_run_hooks.clear()
    _launch.clear_cache()
    monkeypatch.setattr(policy, "_fast_launch", False)
    assert call(buf)[0] == "plain" and call(buf)[0] == "plain"


def test_launcher_calls_what_the_fast_path_calls(fake, monkeypatch):
    """_launch.Launcher (the prepared blocks' launches): its first call goes through launch() (Triton's own path
    for a new specialization), later calls hand the cached launcher exactly what launch()'s fast path hands it
    for the same arguments; a launch hook, a pre-run hook or the switch off send every call through launch()."""
    kernel, rt, dev, buf = fake
    launcher = _launch.Launcher(kernel, (3, 2), dev, (32, 7), dict(BLOCK=64, FLAG=True, num_warps=4))

    def kinds(call):
        kernel.log.clear()
        call()
        return [entry[0] for entry in kernel.log], kernel.log

    assert kinds(lambda: launcher(buf))[0] == ["plain"] and launcher.entry is not None
    kind, log = kinds(lambda: launcher(buf))
    assert kind == ["fast"]
    _, ref = kinds(lambda: _launch.launch(kernel, (3, 2), dev, buf, 32, 7, BLOCK=64, FLAG=True, num_warps=4))
    assert ref[0][0] == "fast" and log[0] == ref[0]
    rt.knobs.runtime.launch_enter_hook = lambda *a: None
    assert kinds(lambda: launcher(buf))[0] == ["plain"]
    rt.knobs.runtime.launch_enter_hook = None
    kernel.pre_run_hooks.append(lambda *a, **k: None)
    assert kinds(lambda: launcher(buf))[0] == ["plain"]
    kernel.pre_run_hooks.clear()
    monkeypatch.setattr(policy, "_fast_launch", False)
    assert kinds(lambda: launcher(buf))[0] == ["plain"]
    monkeypatch.setattr(policy, "_fast_launch", True)
    assert kinds(lambda: launcher(buf))[0] == ["fast"]


class CudaLauncher:
    """Stands in for Triton 3.6's NVIDIA launcher (the class name is what direct_parts checks): its Python layer
    logs "fast", its C function ``launch`` logs "direct"."""

    def __init__(self, log, scratch=0):
        self.log = log
        self.global_scratch_size, self.profile_scratch_size = scratch, 0
        self.launch_cooperative_grid, self.launch_pdl = False, True

    def __call__(self, *args):
        self.log.append(("fast", args))

    def launch(self, *args):
        self.log.append(("direct", args))


class _HookChain:
    def __init__(self):
        self.calls = []


def test_launcher_calls_tritons_c_function_with_addresses(fake, monkeypatch):
    """Where the installed Triton's launcher is one the direct path was checked against, a Launcher's cached calls
    skip its Python layer: the C function gets the grid, the stream, the function, the launcher's flags, no scratch,
    the packed metadata, no launch metadata and no hooks, then each tensor as its address (None and scalars as they
    are) and the constexprs. A hook installed, the switch off or a kernel needing a scratch buffer: not direct."""
    kernel, rt, dev, buf = fake
    rt.knobs.runtime.launch_enter_hook, rt.knobs.runtime.launch_exit_hook = _HookChain(), _HookChain()
    monkeypatch.setattr(_launch, "_runtime", rt)
    monkeypatch.setattr(_launch, "_direct_ok", True)
    kernel.compiled.run = CudaLauncher(kernel.log)
    other = torch.zeros(8)
    launcher = _launch.Launcher(kernel, (3, 2), dev, (7,), dict(BLOCK=64, FLAG=True, num_warps=4))

    def kinds(*tensors):
        kernel.log.clear()
        launcher(*tensors)
        return [entry[0] for entry in kernel.log], kernel.log

    assert kinds(buf, 32)[0] == ["plain"] and launcher._direct is not None
    kind, log = kinds(other, 48)  # another tensor at another address: its address is passed
    assert kind == ["direct"]
    assert log[0][1] == (3, 2, 1, 1234, "function-handle", False, True, None, None, "packed", None, None, None,
                         other.data_ptr(), 48, 7, 64, True, False)
    assert all(type(a) is not torch.Tensor for a in log[0][1])
    # a prepared block's launches: one check for all, then the C function with the addresses as given
    fresh = _launch.Launcher(kernel, (3, 2), dev, (7,), dict(BLOCK=64, FLAG=True, num_warps=4))
    assert _launch.direct_ready(launcher) and not _launch.direct_ready(launcher, fresh)
    kernel.log.clear()
    launcher.raw(4096, 48)
    assert kernel.log == [("direct", (3, 2, 1, 1234, "function-handle", False, True, None, None, "packed", None, None,
                                      None, 4096, 48, 7, 64, True, False))]
    policy.set_direct_launch(False)
    try:
        assert kinds(buf, 32)[0] == ["fast"] and not _launch.direct_ready(launcher)
    finally:
        policy.set_direct_launch(True)
    rt.knobs.runtime.launch_enter_hook.calls.append(lambda *a: None)
    assert kinds(buf, 32)[0] == ["plain"]  # a hook must see every launch: Triton's own path
    assert not _launch.direct_ready(launcher)
    rt.knobs.runtime.launch_enter_hook.calls.clear()
    assert kinds(buf, 32)[0] == ["direct"]
    rt.get_device = lambda: 1  # another device current: the path that switches devices
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())  # no CUDA here
    assert kinds(buf, 32)[0] == ["fast"] and not _launch.direct_ready(launcher)
    rt.get_device = lambda: 0

    none_first = _launch.Launcher(kernel, (5,), dev, (), dict(BLOCK=64, FLAG=False, num_warps=4))
    kernel.log.clear()
    for _ in range(2):
        none_first(None, 16, 3)
    assert [e[0] for e in kernel.log] == ["plain", "direct"] and kernel.log[1][1][13:16] == (None, 16, 3)

    _launch.clear_cache()
    monkeypatch.setattr(_launch, "_get_runtime", lambda: rt)
    monkeypatch.setattr(_launch, "_runtime", rt)
    kernel.compiled.run = CudaLauncher(kernel.log, scratch=256)  # needs a scratch buffer: the Python layer
    scratch = _launch.Launcher(kernel, (3, 2), dev, (7,), dict(BLOCK=64, FLAG=True, num_warps=4))
    kernel.log.clear()
    scratch(buf, 32)
    scratch(buf, 32)
    assert [e[0] for e in kernel.log] == ["plain", "fast"] and scratch._direct is None
    monkeypatch.setattr(_launch, "_direct_ok", False)  # another Triton
    assert _launch.direct_parts(CudaLauncher(kernel.log)) is None


def test_pointer_converter_replaces_only_flagged_arguments():
    a, b = torch.zeros(3), torch.ones(5)[1:]
    convert = _launch.pointer_converter((True, False, True, False))
    assert convert(a, 7, b, None) == (a.data_ptr(), 7, b.data_ptr(), None)
    assert _launch.pointer_converter((True, False, True, False)) is convert
    assert _launch.pointer_converter(())() == ()


@pytest.mark.skipif(not __import__("importlib").util.find_spec("triton"), reason="needs Triton")
def test_direct_triton_versions_have_the_checked_launcher():
    """On a Triton of DIRECT_TRITON, the launcher's Python layer does what the direct path replaces: scratch
    buffers only when the kernel asks for them, then the C function with the arguments in the checked order."""
    import inspect

    import triton

    if not triton.__version__.startswith(_launch.DIRECT_TRITON):
        assert not _launch._direct_supported()
        pytest.skip(f"Triton {triton.__version__}: the direct path is off")
    from triton.backends.nvidia.driver import CudaLauncher as Real

    assert _launch._direct_supported()
    src = " ".join(inspect.getsource(Real.__call__).split())
    assert ("self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid, self.launch_pdl, "
            "global_scratch, profile_scratch, *args)") in src
    assert "if size > 0:" in src and src.count("return None") == 1


def test_grid_helpers_equal_tritons():
    # the launchers' own cdiv / next_pow2 replace Triton's constexpr functions (4-6 us of host time per call)
    triton = pytest.importorskip("triton")
    values = list(range(1, 300)) + [383, 384, 385, 1023, 1024, 1025, 1569, 2**20 - 1, 2**20, 2**31 + 5]
    for n in values:
        assert _launch.next_pow2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 16, 64, 128, 1000):
            assert _launch.cdiv(n, d) == triton.cdiv(n, d), (n, d)
