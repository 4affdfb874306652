"""Reading, writing and checking Vim checkpoints, safely.

Loading never runs code from the file: ``.pth`` files go through ``torch.load(weights_only=True)``, which refuses
any pickled object other than tensors and plain containers. The one exception allowed is ``argparse.Namespace``
(the official Vim trainer stores its ``args`` as one; it is a plain attribute holder and building it runs no
code). ``.safetensors`` files hold tensors only and need no such care.

Layout (official Vim trainer, kept by :func:`save_checkpoint`)::

    {"model": state_dict, "model_ema": state_dict, "optimizer": ..., "lr_scheduler": ..., "epoch": int,
     "scaler": ..., "args": argparse.Namespace}

Only ``model`` is required. This module is generic: it knows containers, key prefixes and safe I/O, not any
architecture. What a particular model needs to fit another checkpoint (resizing ``pos_embed``, dropping a
classifier for another class count) is that model's *checkpoint filter*: :func:`load_checkpoint` takes it from
``filter_fn=`` or from the model class's ``checkpoint_filter`` attribute (for Vim see
:func:`rmeeto.models.vim.checkpoint_filter_fn`); a model without one gets :func:`plain_filter`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickletools
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from rmeeto._files import write_atomic
from rmeeto._hubpath import resolve as resolve_hub_path
from rmeeto.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "FilterResult",
    "LoadResult",
    "checkpoint_epoch",
    "describe_checkpoint",
    "fit_weights",
    "is_state_dict",
    "load_checkpoint",
    "plain_filter",
    "read_checkpoint",
    "save_checkpoint",
    "strip_prefixes",
    "unwrap_module",
    "unwrap_state_dict",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]  # as rmeeto._typing: this module imports no other rmeeto module

# containers the weights may sit in, in order of preference
_WEIGHT_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile (any nesting order)
_SAFETENSORS_SUFFIX = ".safetensors"
_SAFETENSORS_EMA_PREFIX = "model_ema."  # EMA tensors share the flat safetensors namespace under this prefix
_SAFETENSORS_META_KEY = "rmeeto"  # JSON of the non-tensor top-level entries (epoch, args, ...)




@dataclass
class LoadResult:
    """What :func:`load_checkpoint` did.

    source: the top-level entry the weights came from ("model", "model_ema", "state_dict", ... or "(root)" for a
        bare state dict). missing_keys / unexpected_keys: only non-empty with ``strict=False``.
    pos_embed_resized: (checkpoint tokens, model tokens) when ``pos_embed`` was interpolated, else None.
    head_reset: the classifier was left out (other class count) and re-initialised.
    """

    path: str
    source: str
    num_tensors: int
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    pos_embed_resized: Optional[tuple[int, int]] = None
    head_reset: bool = False
    epoch: Optional[int] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class FilterResult:
    """What a checkpoint filter made of a state dict, for :func:`load_checkpoint`.

    state_dict: the tensors to load, under the model's key names. notes: one line per adaptation (each is
    warned about). skipped: model keys deliberately left out (kept as the model has them, not "missing").
    pos_embed_resized / head_reset: as in :class:`LoadResult` (a reset classifier is re-initialised after
    loading). hint: text appended to a does-not-fit error, e.g. " (the checkpoint looks like <model>)".
    """

    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    skipped: tuple[str, ...] = ()
    pos_embed_resized: Optional[tuple[int, int]] = None
    head_reset: bool = False
    hint: str = ""


# (state dict or checkpoint, target model) -> FilterResult
FilterFn = Callable[[Mapping[str, Any], nn.Module], FilterResult]

# filters for model classes rmeeto does not own (timm's VisionTransformer: rmeeto.models.vit registers one), found
# along the class's MRO, so a merging subclass uses its base's filter
_CLASS_FILTERS: dict[Union[type, str], FilterFn] = {}


def register_checkpoint_filter(cls: Union[type, str], fn: FilterFn) -> None:
    """Make :func:`load_checkpoint` use ``fn`` for ``cls`` and its subclasses (unless they define their own
    ``checkpoint_filter``). ``cls`` may be given by its qualified name (``"module.Class"``), so that a class of
    a package not imported yet (timm's ViT) needs no import to be registered."""
    _CLASS_FILTERS[cls] = fn


_FIT_HINTS: list[Callable[[Mapping[str, Any]], str]] = []


def register_fit_hint(fn: Callable[[Mapping[str, Any]], str]) -> None:
    """Make :func:`load_checkpoint`'s does-not-fit errors end with ``fn(state_dict)`` (e.g. " (the checkpoint looks
    like <model>)"), unless the model's filter gave a ``hint`` of its own. :mod:`rmeeto.models` registers the one
    that knows every registered model; this module imports no model code."""
    _FIT_HINTS[:] = [fn]


def _fit_hint(report: "FilterResult", weights: Mapping[str, Any]) -> str:
    if report.hint or not _FIT_HINTS:
        return report.hint
    return _FIT_HINTS[0](weights)


def _default_filter(model: nn.Module) -> FilterFn:
    own = getattr(type(model), "checkpoint_filter", None)
    if own is not None:
        return own
    for c in type(model).__mro__:
        fn = _CLASS_FILTERS.get(c) or _CLASS_FILTERS.get(f"{c.__module__}.{c.__qualname__}")
        if fn is not None:
            return fn
    return plain_filter


# ----------------------------------------------------------------------------------------------- reading


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception message, for one-line errors."""
    text = str(exc).strip().splitlines()
    line = (text[0] if text else "").split(". ")[0].rstrip(".") or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _local(path: PathLike) -> Path:
    """``path`` as a local file; ``hf-hub:OWNER/REPO/FILE[@REV]`` is downloaded (or read from the hub cache)."""
    return resolve_hub_path(path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")


def _pickle_globals(path: Path) -> Optional[set[str]]:
    """Names of the globals (classes/functions) a pickled file refers to, found by reading the opcodes without
    executing them; None if the file is not a parseable pickle (corrupt, truncated or not a checkpoint).

    Only used to word the error message: what gets loaded is decided by the weights-only unpickler alone."""
    if zipfile.is_zipfile(path):
        try:
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:
            return None
    names: set[str] = set()
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickletools complains about odd string escapes in garbage input
            # a legacy (pre-zip) torch file is several pickles in a row: magic number, protocol, sys info, data
            for n in range(4):
                strings: list[str] = []
                try:
                    for op, arg, _ in pickletools.genops(f):
                        if op.name in ("GLOBAL", "INST"):
                            names.add(str(arg).replace(" ", "."))
                        elif op.name == "STACK_GLOBAL":
                            names.add(".".join(strings[-2:]) if len(strings) >= 2 else "<dynamic global>")
                        elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                            strings.append(arg)
                except Exception:
                    if n == 0:
                        return None
                    break
                if not f.peek(1):
                    break
    except OSError:
        return None
    # torch's own tensor-rebuilding globals are allowed; report the others
    return {name for name in names if not name.startswith(("torch.", "collections.OrderedDict"))}


# weights-only loading is a security boundary only on recent PyTorch: before 2.6 a crafted file runs code
# (CVE-2025-32434), before 2.10 it can corrupt memory (CVE-2026-24747)
SAFE_TORCH = (2, 10)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _check_torch_version(path: Path) -> None:
    if _torch_version() < SAFE_TORCH:
        raise CheckpointError(
            f"refusing to read {path}: PyTorch {torch.__version__} cannot load untrusted .pth files safely "
            f"(CVE-2025-32434, CVE-2026-24747); upgrade to torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]} or use .safetensors")


def _torch_load(path: Path) -> Any:
    _check_torch_version(path)

    def load() -> Any:
        with warnings.catch_warnings():
            # torch warns about pickle protocols other than 2 before deciding; the decision is what matters here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)

    try:
        return load()
    except Exception as first_error:
        error: BaseException = first_error
    # The official trainer pickles its args as argparse.Namespace, which the weights-only unpickler refuses by
    # default. Allow exactly that class (a plain attribute holder) and try again; everything else stays refused.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        try:
            with safe_globals([argparse.Namespace]):
                return load()
        except Exception as second_error:
            error = second_error
    names = _pickle_globals(path)
    if names is None:
        detail = _first_line(error)
        detail = "" if detail.startswith("Weights only load failed") else f" ({type(error).__name__}: {detail})"
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt, truncated or not a PyTorch file{detail}") from None
    names.discard("argparse.Namespace")
    what = f" ({', '.join(sorted(names))})" if names else ""
    raise CheckpointError(
        f"refusing to load {path}: it holds non-tensor objects{what} and unpickling them could run code; "
        "rmeeto only loads weights-only checkpoints"
    ) from None


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file ({_first_line(exc)})") from None
    ckpt: dict[str, Any] = {}
    if _SAFETENSORS_META_KEY in metadata:
        try:
            meta = json.loads(metadata[_SAFETENSORS_META_KEY])
        except (json.JSONDecodeError, RecursionError):
            meta = {}  # not ours (another tool's free text): the tensors are still usable
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {path}: its '{_SAFETENSORS_META_KEY}' metadata holds a "
                                  f"{type(meta).__name__}, not a JSON object of entries")
        # the tensors are authoritative: metadata may not replace the weights with other values
        ckpt.update({k: v for k, v in meta.items() if k not in ("model", "model_ema")})
    model = {k: v for k, v in tensors.items() if not k.startswith(_SAFETENSORS_EMA_PREFIX)}
    ema = {k[len(_SAFETENSORS_EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_SAFETENSORS_EMA_PREFIX)}
    ckpt["model"] = model
    if ema:
        ckpt["model_ema"] = ema
    return ckpt


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """The raw top-level dict of a ``.pth`` (weights-only unpickling) or ``.safetensors`` file, on CPU.

    A safetensors file comes back in the ``.pth`` layout: ``{"model": ..., "model_ema": ... (if stored), plus
    the JSON metadata entries such as "epoch"}``. Raises :class:`CheckpointError` for a missing, corrupt,
    truncated or code-carrying file."""
    path = _local(path)
    _check_file(path)
    if path.suffix == _SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


# ----------------------------------------------------------------------------------------------- mapping


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping whose values are all tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """(state dict, name of the entry it came from)."""
    for key in _WEIGHT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key], key
    if is_state_dict(checkpoint):
        return checkpoint, "(root)"
    keys = ", ".join(map(str, list(checkpoint)[:10])) or "none"
    raise CheckpointError(f"no weights found: expected a 'model' or 'state_dict' entry, top-level keys are {keys}")


def strip_prefixes(key: str) -> str:
    """``key`` without leading ``module.`` (DDP) / ``_orig_mod.`` (torch.compile) prefixes, in any nesting."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def unwrap_module(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def plain_filter(state_dict: Mapping[str, Any], model: nn.Module) -> FilterResult:
    """The filter every model gets: unwrap a ``model`` / ``state_dict`` / EMA container, strip ``module.`` and
    ``_orig_mod.`` prefixes, keep tensors only. Model-specific filters build on it (the input is not modified)."""
    if any(k in state_dict for k in _WEIGHT_KEYS) and not is_state_dict(state_dict):
        state_dict, _ = unwrap_state_dict(state_dict)
    out = {strip_prefixes(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    notes = []
    if len(out) < len(state_dict):
        notes.append(f"{len(state_dict) - len(out)} non-tensor entries of the state dict ignored")
    return FilterResult(out, notes)


# ----------------------------------------------------------------------------------------------- loading


def _key_list(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def checkpoint_epoch(checkpoint: Mapping[str, Any]) -> Optional[int]:
    """The ``epoch`` entry of a checkpoint as an int, or None."""
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None


def fit_weights(model: nn.Module, weights: Mapping[str, Any], where: str, *, strict: bool = True,
                filter_fn: Optional[FilterFn] = None, hint: bool = True) -> tuple[FilterResult, list, list]:
    """Check that ``weights`` load into ``model`` as :func:`load_checkpoint` loads them, without loading: ->
    (the filter's result, missing keys, unexpected keys). ``model`` may live on the meta device. Raises
    :class:`CheckpointError` (its message starting with ``where`` where one is given; ``hint``: ending with the
    registered model the weights look like) for missing or unexpected keys (with ``strict``), a shape that
    differs, or a weight that is not floating point."""
    report = (filter_fn or _default_filter(model))(weights, model)
    own = model.state_dict()
    missing = [k for k in own if k not in report.state_dict and k not in report.skipped]
    unexpected = [k for k in report.state_dict if k not in own]

    def hint_text() -> str:
        return _fit_hint(report, weights) if hint else ""

    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key{'s' * (len(missing) != 1)} ({_key_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) != 1)} ({_key_list(unexpected)})")
        raise CheckpointError(f"{where + ' ' if where else ''}does not match {type(model).__name__}: "
                              f"{'; '.join(parts)}{hint_text()}")
    lead = f"{where}: " if where else ""
    for key, value in report.state_dict.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{lead}{key} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(own[key].shape)}{hint_text()}")
        if key in own and own[key].is_floating_point() and not value.is_floating_point():
            # copy_ would cast silently: int weights truncate to zeros, complex ones lose their imaginary part
            raise CheckpointError(f"{lead}{key} is {str(value.dtype).replace('torch.', '')}, not a "
                                  "floating-point tensor: these are not a model's weights")
    return report, missing, unexpected


def load_checkpoint(
    model: nn.Module, path: PathLike, *, use_ema: bool = False, strict: bool = True, verbose: bool = True,
    filter_fn: Optional[FilterFn] = None,
) -> LoadResult:
    """Load weights from a ``.pth`` or ``.safetensors`` file into ``model`` (in place; DDP/compiled wrappers are
    looked through).

    ``use_ema`` takes the ``model_ema`` entry (error if absent). With ``strict`` every model parameter must be
    present and every checkpoint tensor used, apart from the adaptations of the model's checkpoint filter (for
    Vim: resized ``pos_embed``, re-initialised head), which are warned about. A shape mismatch is always an
    error. ``filter_fn(state_dict, model) -> FilterResult`` overrides the filter of the model class
    (``type(model).checkpoint_filter``, else :func:`plain_filter`). ``verbose`` logs one summary line (logger
    ``rmeeto.checkpoint``, level INFO)."""
    path = _local(path)
    raw = read_checkpoint(path)
    if use_ema:
        if not isinstance(raw.get("model_ema"), Mapping):
            keys = ", ".join(map(str, raw)) or "none"
            raise CheckpointError(f"checkpoint {path} has no 'model_ema' weights (top-level keys: {keys})")
        weights, source = raw["model_ema"], "model_ema"
    else:
        try:
            weights, source = unwrap_state_dict(raw)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from None
    target = unwrap_module(model)
    report, missing, unexpected = fit_weights(target, weights, f"checkpoint {path}", strict=strict,
                                              filter_fn=filter_fn)
    state_dict = report.state_dict
    skip = set(unexpected)  # the keys the model lacks (fit_weights compared them with its state_dict once)
    target.load_state_dict({k: v for k, v in state_dict.items() if k not in skip}, strict=False)
    if report.head_reset:  # re-initialised the timm way, so the result does not depend on the model's history
        head = target.get_classifier()
        with torch.no_grad():
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
    for note in report.notes:
        warnings.warn(f"{path.name}: {note}", stacklevel=2)

    result = LoadResult(
        path=str(path), source=source, num_tensors=len(state_dict), missing_keys=missing,
        unexpected_keys=unexpected, pos_embed_resized=report.pos_embed_resized,
        head_reset=report.head_reset, epoch=checkpoint_epoch(raw), notes=list(report.notes),
    )
    if verbose:
        epoch = f", epoch {result.epoch}" if result.epoch is not None else ""
        _logger.info("loaded %s ('%s', %d tensors%s)", path, source, result.num_tensors, epoch)
    return result


# ----------------------------------------------------------------------------------------------- saving


def _check_weights_only(obj: Any, where: str) -> None:
    """Refuse, at save time, anything ``torch.load(weights_only=True)`` would refuse at load time."""
    if isinstance(obj, (torch.Tensor, str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_weights_only(k, f"{where} key")
            _check_weights_only(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
        return
    if type(obj) is argparse.Namespace:
        _check_weights_only(vars(obj), where)
        return
    raise TypeError(
        f"cannot save {where}: a {type(obj).__module__}.{type(obj).__qualname__} would not load with "
        "weights_only=True; store plain data instead (e.g. dataclasses.asdict, float(x), tensor.tolist())"
    )


def _as_checkpoint(obj: Any, extra: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, nn.Module):
        ckpt = {"model": unwrap_module(obj).state_dict()}
    elif isinstance(obj, Mapping) and "model" in obj:
        ckpt = dict(obj)
    elif is_state_dict(obj):
        ckpt = {"model": dict(obj)}
    else:
        raise TypeError("save_checkpoint expects a module, a state dict, or a dict with a 'model' entry")
    clash = set(ckpt) & set(extra)
    if clash:
        raise ValueError(f"save_checkpoint: {', '.join(sorted(clash))} given twice")
    ckpt.update(extra)
    return ckpt


def _safetensors_bytes(ckpt: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def put(key: str, t: torch.Tensor) -> None:
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen and t.numel():  # safetensors refuses shared memory
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t

    meta: dict[str, Any] = {}
    for name, value in ckpt.items():
        if name in ("model", "model_ema"):
            if not is_state_dict(value):
                raise TypeError(f"save_checkpoint: '{name}' must be a dict of tensors for safetensors")
            prefix = "" if name == "model" else _SAFETENSORS_EMA_PREFIX
            for k, v in value.items():
                put(prefix + strip_prefixes(k), v)
            continue
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        try:
            json.dumps(value)
        except TypeError:
            raise TypeError(
                f"save_checkpoint: '{name}' cannot go in a safetensors file (tensors and JSON metadata only); "
                "save training state to a .pth file"
            ) from None
        meta[name] = value
    return save(tensors, metadata={"format": "pt", _SAFETENSORS_META_KEY: json.dumps(meta)})


def save_checkpoint(obj_or_state: Any, path: PathLike, **extra: Any) -> Path:
    """Write ``{"model": state_dict, **extra}`` atomically; returns the path.

    ``obj_or_state``: a module (wrappers are looked through), a state dict, or a full checkpoint dict with a
    ``model`` entry. ``extra`` adds top-level entries (``epoch=...``, ``optimizer=...``, ``model_ema=...``).
    Everything must be loadable with ``weights_only=True`` (tensors, numbers, strings, lists, dicts,
    ``argparse.Namespace``): anything else raises ``TypeError`` now rather than failing at load time.
    A ``.safetensors`` suffix stores ``model`` (and ``model_ema``) tensors plus JSON metadata.

    The file is written to a temporary file in the same folder, fsynced, then renamed over ``path``, so an
    interrupted save leaves any previous checkpoint intact (:func:`rmeeto._files.write_atomic`)."""
    path = Path(path)
    ckpt = _as_checkpoint(obj_or_state, extra)
    if path.suffix != _SAFETENSORS_SUFFIX:
        _check_weights_only(ckpt, "checkpoint")
    data = _safetensors_bytes(ckpt) if path.suffix == _SAFETENSORS_SUFFIX else None
    if data is not None:
        return write_atomic(path, data)
    return write_atomic(path, lambda f: torch.save(ckpt, f))


# ----------------------------------------------------------------------------------------------- inspection


def describe_checkpoint(path: PathLike, raw: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What any checkpoint holds, without knowing its architecture (``raw``: the already read file, to avoid
    reading it twice; see :func:`rmeeto.models.inspect_checkpoint` for the architecture and matching model).

    Keys: path, format ("torch" / "safetensors"), size_bytes, top_level_keys, weights_key, prefix (stripped
    ``module.`` / ``_orig_mod.``, or ""), num_tensors, num_params, dtype (most common) and dtypes (counts),
    has_ema, epoch, trained_as (``args.model`` of the official trainer, if stored)."""
    path = _local(path)
    raw = read_checkpoint(path) if raw is None else raw
    try:
        weights, source = unwrap_state_dict(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    prefix = ""
    if tensors:
        first = next(iter(tensors))
        prefix = first[: len(first) - len(strip_prefixes(first))]
    dtypes: dict[str, int] = {}
    for t in tensors.values():
        name = str(t.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + 1
    args = raw.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    trained_as = args.get("model") if isinstance(args, Mapping) else None
    return {
        "path": str(path),
        "format": "safetensors" if path.suffix == _SAFETENSORS_SUFFIX else "torch",
        "size_bytes": path.stat().st_size,
        "top_level_keys": [str(k) for k in raw],
        "weights_key": source,
        "prefix": prefix,
        "num_tensors": len(tensors),
        "num_params": int(sum(t.numel() for t in tensors.values())),
        "dtype": max(dtypes, key=dtypes.get) if dtypes else None,
        "dtypes": dtypes,
        "has_ema": isinstance(raw.get("model_ema"), Mapping) and len(raw["model_ema"]) > 0,
        "epoch": checkpoint_epoch(raw),
        "trained_as": trained_as if isinstance(trained_as, str) else None,
    }
