"""The one place the Triton kernels are launched from, and a cheaper launch path for CUDA.

``kernel[grid](*args, **meta)`` spends most of its ~40 us of host time re-deriving, on every call, what it derived
the call before: binding the arguments to the signature, specialising each one (dtype, 16-byte alignment,
``== 1`` / ``% 16 == 0`` for integers), building and hashing a cache key, then looking the compiled kernel up.
:func:`launch` does that once per *specialization*: the first call of each one goes through Triton as usual and
keeps the ``CompiledKernel`` it returns; later calls with the same :func:`specialization_key` call that kernel's
launcher directly (what ``JITFunction.run`` itself ends with).

The key must separate every pair of calls Triton would compile differently, or a kernel compiled for other
assumptions (an aligned pointer, a stride of 1) would silently run. :func:`arg_key` mirrors Triton's
specialisation of one argument (``native_specialize_impl``): tensors by dtype and, unless the parameter is in
``do_not_specialize`` / ``do_not_specialize_on_alignment``, whether the address is a multiple of 16; integers by
width (i32 / i64 / u64) and, unless not specialised, whether they equal 1 and (unless not specialised on
alignment) are multiples of 16; floats, bools and None by kind; host-made TMA descriptors
(``triton.tools.tensor_descriptor.TensorDescriptor``) by dtype and block shape; constexpr parameters by type and
value. The key adds the device and every launch option (``num_warps``, ``num_stages``, ...).
tests/ops/test_launch.py checks that equal keys imply equal Triton specialisations on the Triton installed here.

Fallbacks to the plain ``kernel[grid](...)`` (always correct, just slower): CPU tensors (the interpreter,
TRITON_INTERPRET=1), ``RMEETO_FAST_LAUNCH=0`` (:func:`rmeeto.ops.policy.fast_launch`), a missing Triton or torch
internal (checked once), a kernel that is not a plain ``JITFunction`` or has typed parameters, a callable grid,
an argument of a kind the key does not describe, and any call while a Triton launch hook, pre-run hook or
stage-inspection hook is installed (those hooks must see every launch). ``TRITON_DEBUG`` and
``TRITON_INSTRUMENTATION_MODE`` are read once: if either is set the fast path is off for the process. Not
re-checked on cached calls (as Triton does on every call): that the module globals a kernel reads have not
changed since it was compiled (ours read none that change) and ``knobs.runtime.debug`` set after the first launch.
The fast path launches on the current stream of the device, so it is captured by CUDA graphs like any launch.

:class:`Launcher` goes one step further for callers that launch one kernel with one set of shapes again and again:
after its first call it skips the key too (the caller's own cache key vouches for the specialization). Where the
installed Triton's NVIDIA launcher is one this path was checked against (:data:`DIRECT_TRITON`), it also skips that
launcher's Python layer and calls its C function itself (:func:`direct_parts`), with every tensor passed as its
address: Triton's C code then takes the number as it is, where for a tensor it would call ``data_ptr()`` and ask
the driver (``cuPointerGetAttribute``) whether the address is device memory, once per tensor per launch. It passes
no launch hooks (a launch with one installed goes through Triton's own path) and no scratch buffers (a kernel
that needs one keeps the launcher's Python layer). Off with ``RMEETO_DIRECT_LAUNCH=0``
(:func:`rmeeto.ops.policy.direct_launch`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import torch

from rmeeto.ops import policy

__all__ = ["on_device", "launch", "Launcher", "cdiv", "next_pow2", "arg_key", "specialization_key", "pdl_meta",
           "compile_key_function", "direct_parts", "direct_ready", "pointer_converter", "DIRECT_TRITON",
           "param_modes", "CONSTEXPR", "SPECIALIZE", "NO_ALIGN", "NO_SPECIALIZE"]

# How Triton treats one kernel parameter (see param_modes)
CONSTEXPR = 0  # tl.constexpr: compiled in, the key holds its type and value
SPECIALIZE = 1  # specialised on dtype / width, == 1 and 16-byte alignment (pointers, ints)
NO_ALIGN = 2  # in do_not_specialize_on_alignment: dtype / width and == 1 only
NO_SPECIALIZE = 3  # in do_not_specialize: dtype / width only

_I32 = 1 << 31
_I64 = 1 << 63


class _Unsupported(Exception):
    """An argument the key cannot describe: launch the plain way."""


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' grids. ``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr
    functions: called from the host each costs 4-6 us (Triton 3.6 and 3.8, measured here), and an eager Vim
    block needs five of them."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (``triton.next_power_of_2`` without its host cost)."""
    return 1 << (n - 1).bit_length()


_PDL_OK: Optional[bool] = None


_SMS: dict = {}  # CUDA device index -> (SM count, compute capability major)


def device_sms(device: torch.device) -> tuple[int, int]:
    """(SM count, compute capability major) of CUDA ``device`` (the current device where it has no index), asked
    of the driver once per device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    known = _SMS.get(index)
    if known is None:
        props = torch.cuda.get_device_properties(index)
        known = _SMS[index] = (props.multi_processor_count, props.major)
    return known


def pdl_meta() -> dict:
    """The constexpr and launch option that launch a kernel with programmatic dependent launch (``PDL=True``, which
    the kernel reads to wait for the previous kernel's results first, and ``launch_pdl=True``), or {} where it is
    off: the switch :func:`rmeeto.ops.policy.pdl`, a GPU of compute capability 9.0 or more, a Triton that offers
    ``launch_pdl``, not the interpreter."""
    global _PDL_OK
    if not policy.pdl():
        return {}
    if _PDL_OK is None:
        ok = os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and torch.cuda.is_available()
        try:
            from triton.backends.nvidia.compiler import CUDAOptions

            from rmeeto.ops.triton import _pdl

            ok = ok and _pdl.gdc_wait is not None and "launch_pdl" in CUDAOptions.__dataclass_fields__
            ok = ok and torch.cuda.get_device_capability() >= (9, 0)
        except Exception:
            ok = False
        _PDL_OK = ok
    return {"PDL": True, "launch_pdl": True} if _PDL_OK else {}


def on_device(device: torch.device):
    """Launch context for a kernel over tensors on ``device``: that CUDA device current (Triton launches on the
    current one); nothing for CPU tensors, which only reach the kernels under TRITON_INTERPRET=1."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def arg_key(value: Any, mode: int):
    """What Triton compiles into a kernel about one argument ``value`` of a parameter of ``mode`` (one of
    CONSTEXPR, SPECIALIZE, NO_ALIGN, NO_SPECIALIZE): two arguments with equal keys get the same compiled kernel.
    Raises _Unsupported for a kind of value the key does not describe."""
    if mode == CONSTEXPR:
        return (type(value), value)  # True == 1 == 1.0 as values, but Triton compiles them differently
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return (value.dtype, mode == SPECIALIZE and value.data_ptr() % 16 == 0)
    kind = type(value)
    if kind is bool:
        return "u1"
    if kind is int:
        width = "i32" if -_I32 <= value < _I32 else "i64" if -_I64 <= value < _I64 else "u64"
        if mode == NO_SPECIALIZE:
            return width
        if value == 1:
            return "one"  # Triton turns a specialised 1 into a constexpr
        return (width, mode == SPECIALIZE and value % 16 == 0)
    if kind is float:
        return "fp32"
    if kind is _tensor_descriptor_class():
        # Triton compiles in a host-made TMA descriptor's dtype and block shape; its address, shape, strides and
        # padding are filled into the descriptor at every launch
        return ("desc", value.base.dtype, tuple(value.block_shape))
    raise _Unsupported(kind.__name__)


_TD_CLASS: Any = False


def _tensor_descriptor_class():
    """Triton's host-side ``TensorDescriptor`` class (None where this Triton has none), looked up once."""
    global _TD_CLASS
    if _TD_CLASS is False:
        try:
            from triton.tools.tensor_descriptor import TensorDescriptor
        except Exception:
            TensorDescriptor = None
        _TD_CLASS = TensorDescriptor
    return _TD_CLASS


def specialization_key(device_index: int, args: tuple, modes: tuple, meta: dict) -> tuple:
    """The launch cache's key of one call: the device, :func:`arg_key` of every positional argument (``modes``
    the modes of the leading parameters), and every keyword (constexpr parameters and launch options) with
    its type. Raises _Unsupported as :func:`arg_key`."""
    return (device_index, tuple(map(arg_key, args, modes)), tuple(meta.items()), tuple(map(type, meta.values())))


def param_modes(kernel) -> Optional[tuple]:
    """Modes (CONSTEXPR, ...) of a JITFunction's parameters in signature order, or None when the kernel is not
    one the fast path understands (a typed parameter: Triton specialises those by their annotation)."""
    modes = []
    for p in kernel.params:
        if p.is_constexpr:
            modes.append(CONSTEXPR)
        elif getattr(p, "annotation_type", "") or getattr(p, "is_const", False):
            return None
        elif p.do_not_specialize:
            modes.append(NO_SPECIALIZE)
        elif p.do_not_specialize_on_alignment:
            modes.append(NO_ALIGN)
        else:
            modes.append(SPECIALIZE)
    return tuple(modes)


def compile_key_function(modes: tuple):
    """A function ``key(device_index, meta, *args)`` equal to ``specialization_key(device_index, args, modes,
    meta)`` for ``len(modes)`` positional arguments, generated as straight-line code (one expression per
    parameter, the common cases inline: a tensor, an int32) so the per-call key costs no Python call per
    argument; anything else goes through :func:`arg_key` itself."""
    exprs = []
    for i, mode in enumerate(modes):
        a = f"a{i}"
        if mode == CONSTEXPR:
            exprs.append(f"(type({a}), {a})")
            continue
        ptr = f"{a}.data_ptr() & 15 == 0" if mode == SPECIALIZE else "False"
        if mode == NO_SPECIALIZE:
            small = "'i32'"
        elif mode == NO_ALIGN:
            small = f"('one' if {a} == 1 else ('i32', False))"
        else:
            small = f"('one' if {a} == 1 else ('i32', {a} & 15 == 0))"
        tensor = f"({a}.dtype, {ptr}) if type({a}) is _Tensor or type({a}) is _Parameter"
        int32 = f"{small} if type({a}) is int and -_I32 <= {a} < _I32"
        first, second = (int32, tensor) if mode == NO_SPECIALIZE else (tensor, int32)  # the likelier first
        exprs.append(f"({first} else {second} else _arg_key({a}, {mode}))")
    names = "".join(f", a{i}" for i in range(len(modes)))
    src = (f"def key(device_index, meta{names}):\n"
           f"    return (device_index, ({''.join(e + ', ' for e in exprs)}), tuple(meta.items()),"
           f" tuple(map(type, meta.values())))\n")
    namespace = {"_Tensor": torch.Tensor, "_Parameter": torch.nn.Parameter, "_I32": _I32, "_arg_key": arg_key}
    exec(src, namespace)  # noqa: S102 - source built above from integers only
    return namespace["key"]


# ----------------------------------------------------------------------------------------------- fast path
class _Kernel:
    """Per-kernel state: parameter names and modes, and the compiled launchers by key."""

    def __init__(self, kernel, modes):
        self.names = tuple(p.name for p in kernel.params)
        self.defaults = {p.name: p.default for p in kernel.params if getattr(p, "has_default", False)}
        self.modes = modes
        self.pre_run_hooks = getattr(kernel, "pre_run_hooks", [])
        self.launchers: dict[tuple, tuple] = {}
        self.key_functions: dict[int, Any] = {}

    def key_function(self, n_args: int):
        """The compiled key of calls with ``n_args`` positional arguments (None: more than the kernel has)."""
        fn = self.key_functions.get(n_args)
        if fn is None:
            if n_args > len(self.modes):
                return None
            fn = self.key_functions[n_args] = compile_key_function(self.modes[:n_args])
        return fn

    def tail(self, n_args: int, meta: dict) -> Optional[tuple]:
        """Values of the parameters after the ``n_args`` positional ones: from ``meta``, or the parameter's default
        where ``meta`` leaves it out (a constexpr such as ``PDL=False``); None where one has neither (Triton would
        refuse the call). The key holds every item of ``meta``, so a cached launcher's tail never changes.
        (Until session 26 a parameter left to its default sent every launch of its kernel down the plain path:
        every kernel with a ``PDL`` constexpr, whenever RMEETO_PDL was off.)"""
        values = []
        for name in self.names[n_args:]:
            if name in meta:
                values.append(meta[name])
            elif name in self.defaults:
                values.append(self.defaults[name])
            else:
                return None
        return tuple(values)


class _Runtime:
    """Triton / torch internals the fast path calls, found once (None: not all there, plain launches only)."""

    def __init__(self):
        import triton  # noqa: F401
        from triton import knobs
        from triton.runtime.jit import JITFunction

        self.knobs = knobs
        self.jit_function = JITFunction
        self.get_device = torch._C._cuda_getDevice
        self.get_stream = torch._C._cuda_getCurrentRawStream
        for name in ("launch_enter_hook", "launch_exit_hook"):
            getattr(knobs.runtime, name)
        if knobs.runtime.debug or getattr(knobs.compilation, "instrumentation_mode", ""):
            raise RuntimeError("TRITON_DEBUG / TRITON_INSTRUMENTATION_MODE: launches stay on Triton's path")


_runtime: Optional[_Runtime] = None
_runtime_checked = False
_kernels: dict[int, Optional[_Kernel]] = {}
_keep_alive: list = []  # the kernels whose id() keys _kernels


def _get_runtime() -> Optional[_Runtime]:
    global _runtime, _runtime_checked
    if not _runtime_checked:
        _runtime_checked = True
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            try:
                _runtime = _Runtime()
            except Exception:  # an internal moved or is missing: plain launches
                _runtime = None
    return _runtime


def _hook_set(hook) -> bool:
    """A launch hook is installed: a callable (Triton <= 3.6) or a non-empty HookChain (later)."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else True


def _kernel_state(rt: _Runtime, kernel) -> Optional[_Kernel]:
    state = _kernels.get(id(kernel), False)
    if state is False:
        state = None
        if type(kernel) is rt.jit_function:
            try:
                modes = param_modes(kernel)
                state = _Kernel(kernel, modes) if modes is not None else None
            except Exception:
                state = None
        _kernels[id(kernel)] = state
        _keep_alive.append(kernel)
    return state


def _plain(kernel, grid, device, args, meta):
    with on_device(device):
        return kernel[grid](*args, **meta)


def launch(kernel, grid, device: torch.device, *args, **meta):
    """Launch the ``@triton.jit`` ``kernel`` on ``grid`` (a tuple of 1-3 ints) over tensors on ``device``:
    positional ``args`` in the kernel's parameter order, ``meta`` the constexpr parameters and launch options
    (num_warps, num_stages). See the module docstring for the cached fast path and when it is not taken."""
    if device.type != "cuda" or not policy.fast_launch() or not isinstance(grid, tuple):
        return _plain(kernel, grid, device, args, meta)
    rt = _get_runtime()
    if rt is None:
        return _plain(kernel, grid, device, args, meta)
    state = _kernel_state(rt, kernel)
    hooks = _launch_hooks(rt)
    if state is None or state.pre_run_hooks or hooks is None:
        return _plain(kernel, grid, device, args, meta)
    current = rt.get_device()
    index = current if device.index is None else device.index
    key_function = state.key_function(len(args))
    if key_function is None:
        return _plain(kernel, grid, device, args, meta)
    try:
        key = key_function(index, meta, *args)
    except _Unsupported:
        return _plain(kernel, grid, device, args, meta)
    entry = state.launchers.get(key)
    if entry is None:
        compiled = _plain(kernel, grid, device, args, meta)
        _remember(state, key, compiled, len(args), meta)
        return compiled
    n = len(grid)
    _run(rt, entry, (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1), index, current, hooks, args)
    return entry[4]


def _launch_hooks(rt: _Runtime) -> Optional[tuple]:
    """(enter, exit) launch hooks to hand the launcher, or None while a hook that must see every launch through
    Triton's own path is installed (a launch hook, or a stage-inspection hook)."""
    knobs = rt.knobs.runtime
    enter, exit_ = knobs.launch_enter_hook, knobs.launch_exit_hook
    if _hook_set(enter) or _hook_set(exit_) or getattr(knobs, "add_stages_inspection_hook", None) is not None:
        return None
    return enter, exit_


def _run(rt: _Runtime, entry: tuple, grid3: tuple, index: int, current: int, hooks: tuple, args: tuple) -> None:
    """Call a cached launcher (``entry``, as :func:`_remember` keeps it: the values of the parameters after the
    positional ``args`` fixed by its key) on device ``index`` (``current`` the current one) over a 3-d grid."""
    run, function, packed, tail = entry[:4]
    # the launcher takes every parameter, constexprs included (it skips them), in signature order
    full = args + tail if tail else args
    if index == current:
        run(*grid3, rt.get_stream(index), function, packed, None, *hooks, *full)
    else:
        with torch.cuda.device(index):
            run(*grid3, rt.get_stream(index), function, packed, None, *hooks, *full)


def _remember(state: _Kernel, key: tuple, compiled, n_args: int, meta: dict) -> None:
    """Keep the launcher of the kernel Triton just compiled (or found) for ``key``, if it has the parts the fast
    path calls (a CompiledKernel of Triton 3.x: ``run``, ``function``, ``packed_metadata``)."""
    tail = state.tail(n_args, meta)
    if tail is None:
        return
    try:
        run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    except Exception:
        return
    if callable(run) and function is not None:
        state.launchers[key] = (run, function, packed, tail, compiled, direct_parts(run))


def clear_cache() -> None:
    """Forget every cached launcher (tests; a changed Triton setting)."""
    global _runtime_checked, _runtime
    _kernels.clear()
    _keep_alive.clear()
    _runtime_checked = False
    _runtime = None


# ------------------------------------------------------------------------------------------ direct launches
# Triton versions whose NVIDIA launcher the direct path was checked against, by reading its source: a
# ``CudaLauncher`` whose ``__call__(gridX, gridY, gridZ, stream, function, *args)`` only allocates the scratch
# buffers and calls ``self.launch(gridX, gridY, gridZ, stream, function, launch_cooperative_grid, launch_pdl,
# global_scratch, profile_scratch, kernel_metadata, launch_metadata, enter_hook, exit_hook, *kernel_args)``, the C
# function (or its wrapper expanding host TMA descriptors), which takes a Python int as a pointer unchanged and
# calls each hook that is not None. Other versions (3.8's launcher differs) keep the launcher's Python layer.
DIRECT_TRITON = ("3.6.",)
_direct_ok: Optional[bool] = None


def _direct_supported() -> bool:
    """The installed Triton is one of :data:`DIRECT_TRITON` and its CudaLauncher has the checked signature
    (decided once)."""
    global _direct_ok
    if _direct_ok is None:
        ok = False
        try:
            import inspect

            import triton
            from triton.backends.nvidia.driver import CudaLauncher

            params = list(inspect.signature(CudaLauncher.__call__).parameters)
            ok = (triton.__version__.startswith(DIRECT_TRITON)
                  and params == ["self", "gridX", "gridY", "gridZ", "stream", "function", "args"])
        except Exception:
            ok = False
        _direct_ok = ok
    return _direct_ok


def direct_parts(run) -> Optional[tuple]:
    """(C launch function, cooperative-grid flag, PDL flag) of a compiled kernel's launcher ``run`` where a
    prepared launch may call that function itself (see the module docstring), else None: another Triton, another
    kind of launcher, or a kernel that needs a global or profiling scratch buffer."""
    if not _direct_supported() or type(run).__name__ != "CudaLauncher":
        return None
    if getattr(run, "global_scratch_size", 1) != 0 or getattr(run, "profile_scratch_size", 1) != 0:
        return None
    c_launch = getattr(run, "launch", None)
    coop, pdl = getattr(run, "launch_cooperative_grid", None), getattr(run, "launch_pdl", None)
    if not callable(c_launch) or coop is None or pdl is None:
        return None
    return c_launch, coop, pdl


_converters: dict = {}


def pointer_converter(is_tensor: tuple):
    """A function of ``len(is_tensor)`` positional arguments returning them as a tuple, each one whose flag is set
    replaced by its address (``torch.Tensor.data_ptr``), generated as one expression (no Python call per
    argument); one per pattern of flags."""
    fn = _converters.get(is_tensor)
    if fn is None:
        names = [f"a{i}" for i in range(len(is_tensor))]
        items = "".join((f"_ptr({n}), " if t else f"{n}, ") for n, t in zip(names, is_tensor))
        src = f"def convert({', '.join(names)}):\n    return ({items})\n"
        namespace = {"_ptr": torch.Tensor.data_ptr}
        exec(src, namespace)  # noqa: S102 - source built above from integers only
        fn = _converters[is_tensor] = namespace["convert"]
    return fn


# ------------------------------------------------------------------------------------------- fixed launches
class Launcher:
    """One kernel launch with everything but its tensors fixed: ``Launcher(kernel, grid, device, tail, meta)``
    called with ``*tensors`` launches ``kernel[grid](*tensors, *tail, **meta)`` over tensors on ``device``.

    For callers that launch the same kernel with the same shapes again and again (the prepared inference blocks,
    :mod:`rmeeto.ops.triton.mixer`, :class:`rmeeto.ops.triton.merge.MergeNormPlan`). The first call goes through :func:`launch` (compiling if needed);
    later calls skip :func:`launch`'s specialization key: they call the launcher it cached for the first call's
    key directly. The caller promises that every call's tensors specialise as the first call's did: the same
    dtypes and the same 16-byte alignment of every address (fresh allocations of the caching allocator, views at
    fixed offsets of them, and tensors whose address the caller's own cache key holds), with every tensor on
    ``device`` and None at the same positions. Whenever :func:`launch` would not take its fast path (CPU tensors,
    RMEETO_FAST_LAUNCH=0, a launch hook installed), every call goes through :func:`launch` itself. Where the direct
    path applies (module docstring), a cached call hands Triton's C function the tensors' addresses: nothing then
    checks that they are device memory, which is why a tensor on another device breaks the promise above."""

    __slots__ = ("kernel", "grid", "device", "tail", "meta", "entry", "index", "_g", "_pre_run_hooks", "_direct")

    def __init__(self, kernel, grid: tuple, device: torch.device, tail: tuple, meta: dict):
        self.kernel, self.grid, self.device, self.tail, self.meta = kernel, grid, device, tuple(tail), meta
        self.entry = None
        # Triton's own list (not a copy): hooks added to the kernel later show here
        self._pre_run_hooks = getattr(kernel, "pre_run_hooks", ())
        self.index = device.index
        n = len(grid)
        self._g = (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1)
        self._direct = None  # (C launch, grid x, y, z, function, coop, pdl, packed metadata, converter, tail)

    def __call__(self, *tensors) -> None:
        direct = self._direct
        if direct is not None and direct_ready(self):
            self.raw(*direct[8](*tensors))  # (direct[8]: the tensors' addresses)
            return
        args = tensors + self.tail
        entry = self.entry
        rt = _get_runtime() if entry is not None else None
        if rt is not None and policy.fast_launch() and not self._pre_run_hooks:
            hooks = _launch_hooks(rt)
            if hooks is not None:
                _run(rt, entry, self._g, self.index, rt.get_device(), hooks, args)
                return
        launch(self.kernel, self.grid, self.device, *args, **self.meta)
        if entry is None:
            self.entry = entry = _cached_entry(self.kernel, self.device, args, self.meta)
            if entry is not None and entry[5] is not None:
                c_launch, coop, pdl = entry[5]
                convert = pointer_converter(tuple(isinstance(t, torch.Tensor) for t in tensors))
                self._direct = (c_launch, *self._g, entry[1], coop, pdl, entry[2], convert, self.tail + entry[3])

    def raw(self, *args) -> None:
        """Launch with ``args`` as Triton's C function takes them (each tensor as its address; scalars and None as
        they are), in the positions of the first call's ``*tensors``. Only between a :func:`direct_ready` that
        named this launcher and the end of the caller's launches (the caller checked once, for all its launches,
        what ``__call__`` checks per launch)."""
        c_launch, gx, gy, gz, function, coop, pdl, packed, _, tail = self._direct
        c_launch(gx, gy, gz, _runtime.get_stream(self.index), function, coop, pdl, None, None, packed, None, None,
                 None, *args, *tail)

    def __repr__(self) -> str:
        return f"Launcher({getattr(self.kernel, '__name__', self.kernel)}, grid={self.grid})"


def direct_ready(*launchers: Launcher) -> bool:
    """Whether :meth:`Launcher.raw` may launch every one of ``launchers`` now: each has its direct launch (made by
    its first call), has no pre-run hook, and is on the current device; the switches are on and no launch hook is
    installed. One check for a sequence of launches (a prepared block's)."""
    rt = _runtime  # (the switches' globals read directly: two Python calls less per check)
    if rt is None or not (policy._direct_launch and policy._fast_launch) or _launch_hooks(rt) is None:
        return False
    current = rt.get_device()
    for launcher in launchers:
        if launcher._direct is None or launcher._pre_run_hooks or launcher.index != current:
            return False
    return True


def _cached_entry(kernel, device: torch.device, args: tuple, meta: dict) -> Optional[tuple]:
    """The fast path's cached launcher for this call (after :func:`launch` made it), or None where there is none
    (CPU tensors, fast path off or unavailable, a kind of argument the key does not describe)."""
    if device.type != "cuda" or not policy.fast_launch() or device.index is None:
        return None
    rt = _get_runtime()
    state = _kernels.get(id(kernel)) if rt is not None else None
    if not state:
        return None
    key_function = state.key_function(len(args))
    if key_function is None:
        return None
    try:
        return state.launchers.get(key_function(device.index, meta, *args))
    except _Unsupported:
        return None
