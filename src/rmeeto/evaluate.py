"""Training-free evaluation: accuracy over a loader, the official throughput protocol, and the model loader
(checkpoint, head size and merge config, including the config a re-trained checkpoint stores).

    from rmeeto.evaluate import evaluate, load_model_for_eval, measure_throughput
    model = load_model_for_eval("vim_small_patch16_224", "vim_s_midclstok_80p5acc.pth",
                                merge_config=MergeConfig.paper("vim_small_patch16_224"))
    retrained = load_model_for_eval("vim_small_patch16_224", "runs/vim_s_r11/best.pth")  # merged as trained
    stats = evaluate(model, loader)                    # {'top1': 80.1, 'top5': ..., 'loss': ..., 'n': 50000, ...}
    speed = measure_throughput(model, batch_size=128, img_size=224, device="cuda", dtype=torch.float16)

:func:`evaluate` is also the validation step of the re-training loop, so it works under ``torch.distributed``
(counts are summed over ranks; sharding the data is the caller's business).
"""

from __future__ import annotations

import copy
import functools
import sys
import time
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from rmeeto.merge import MergeConfig
from rmeeto.metrics import sum_over_ranks, topk_hits
from rmeeto.runtime import autocast, resolve_device, resolve_dtype
from rmeeto.timing import OFFICIAL, measure

__all__ = [
    "evaluate", "measure_throughput", "load_model_for_eval", "stored_merge_config", "resolve_merge_config",
    "checkpoint_num_classes", "check_structure", "build_eval_dataset", "resolve_device", "nonfinite_outputs",
]


def _dist_rank() -> int:
    d = torch.distributed
    return d.get_rank() if d.is_available() and d.is_initialized() else 0


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and _dist_rank() == 0 and sys.stderr.isatty()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: Union[str, torch.device] = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Classification accuracy of ``model`` over ``loader``.

    loader yields ``(images [batch, C, H, W], targets [batch])`` (clips [batch, C, T, H, W] for a video model)
    or ``None`` (a batch whose images were all
    unreadable; skipped). ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the forward under autocast; logits are
    scored in float32. Under an initialised ``torch.distributed`` process group the counts of all ranks are
    summed, so every rank returns the global result.

    Returns ``top1``/``top5`` (percent; top-5 is top-min(5, classes)), ``loss`` (mean cross-entropy), ``n``
    (images scored), ``nonfinite`` (images whose logits hold a NaN or inf: their scores mean nothing),
    ``seconds`` (wall time of the loop on this rank) and ``images_per_s`` (``n / seconds``, data loading
    included). The model's train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    was_training = model.training
    model.eval()
    # float64 so that sums over a 50k-image set stay exact
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, n, nonfinite
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not _progress_enabled(progress), leave=False)
    try:
        for batch in bar:
            if batch is None:
                continue
            images, targets = batch[0], batch[1]
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            hits = topk_hits(logits, targets)
            totals[0] += hits[:, 0].sum()
            totals[1] += hits.any(dim=-1).sum()
            totals[2] += F.cross_entropy(logits, targets, reduction="sum").double()
            totals[3] += targets.numel()
            totals[4] += (~torch.isfinite(logits)).any(dim=-1).sum()  # counted on device: no sync per batch
            if not bar.disable and bar.n % 10 == 0:  # .item() syncs: only now and then, only when shown
                bar.set_postfix(top1=f"{100 * totals[0].item() / max(totals[3].item(), 1):.2f}")
    finally:
        bar.close()
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    correct1, correct5, loss_sum, n, nonfinite = sum_over_ranks(totals).tolist()
    n = int(n)
    denom = max(n, 1)
    return {
        "top1": 100.0 * correct1 / denom,
        "top5": 100.0 * correct5 / denom,
        "loss": loss_sum / denom,
        "n": n,
        "nonfinite": int(nonfinite),
        "images_per_s": n / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
    }


def nonfinite_outputs(checkpoint, nonfinite: Optional[int] = None, n: Optional[int] = None) -> str:
    """The one wording for a model whose outputs were NaN or inf, naming the weights (``checkpoint``, else random
    ones) and, when counted, how many of ``n`` inputs: callers add what they then did not report."""
    count = f" for {nonfinite} of {n} images" if nonfinite is not None else ""
    source = f"checkpoint {checkpoint}" if checkpoint else "the random weights"
    return f"the model's outputs are not finite (NaN or inf){count}: {source} holds diverged or corrupt weights"


@torch.no_grad()
def measure_throughput(
    model: nn.Module,
    *,
    batch_size: int = 128,
    img_size: int = 224,
    device: Union[str, torch.device] = "cuda",
    dtype: Union[str, torch.dtype] = torch.float32,
    warmup: Optional[int] = None,
    repeats: Optional[int] = None,
    in_chans: int = 3,
    input_size: Optional[tuple[int, ...]] = None,
) -> dict:
    """Inference speed on random input, following the official protocol.

    The input is ``[batch_size, in_chans, img_size, img_size]``, or ``[batch_size, *input_size]`` when
    ``input_size`` is given (a video model's ``(C, T, H, W)``; throughput then counts clips).

    Official (``main.py --throughput``): random [128, 3, 224, 224] input, model and input in half precision
    under autocast, eval mode, no_grad; 100 warm-up forwards, sync, 30 timed forwards, sync. Timed by the
    :data:`rmeeto.timing.OFFICIAL` protocol: those counts on CUDA (one CUDA event pair around the 30); on CPU
    1 warm-up and 3 timed forwards (perf_counter, median forward time), which is enough to compare settings
    but not a benchmark. ``warmup`` / ``repeats`` override the counts on every device. Unlike the release
    nothing else (e.g. a FLOPs formula) runs inside the timed region.

    ``dtype``: a torch.dtype or a :mod:`rmeeto.runtime` name (``"fp16"``, ``"bf16"``; fp16 needs CUDA).
    A non-float32 ``dtype`` is applied to a *copy* of the model (the caller's model is left as it is).
    Returns ``images_per_s``, ``ms_per_image`` and ``peak_mem_mb`` (CUDA peak allocated memory; None on CPU).
    """
    device = resolve_device(device)
    protocol = OFFICIAL.with_counts(warmup, repeats)  # ValueError for repeats < 1
    dtype = resolve_dtype(dtype, device)  # fp16 on CPU is refused there

    was_training = model.training
    net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    net.eval()
    shape = (in_chans, img_size, img_size) if input_size is None else tuple(input_size)
    x = torch.randn(batch_size, *shape, device=device, dtype=dtype)
    try:
        with autocast(device, None if dtype == torch.float32 else dtype):
            timing = measure(net, [x], batch_size=batch_size, device=device, protocol=protocol)
    finally:
        model.train(was_training)
    return {
        "images_per_s": timing.images_per_s,
        "ms_per_image": timing.ms_per_image,
        "peak_mem_mb": timing.peak_mem_mb,
    }


# ============================================================================================ loading
def _inspect(checkpoint) -> dict:
    """:func:`rmeeto.models.inspect_checkpoint`, read once per file version (official files are large and a
    command asks about one file several times)."""
    from rmeeto._hubpath import resolve

    st = resolve(checkpoint).stat()
    return _inspect_version(str(checkpoint), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _inspect_version(checkpoint: str, mtime_ns: int, size: int) -> dict:
    from rmeeto.models import inspect_checkpoint

    return inspect_checkpoint(checkpoint)


def _stored_entry(checkpoint, key: str):
    """A small top-level entry (``merge_config``, ``config``) of a ``rmeeto retrain`` checkpoint, or None. The file
    is read once per file version for all such entries (a command asks for several)."""
    if checkpoint is None or key not in _inspect(checkpoint)["top_level_keys"]:
        return None
    from rmeeto._hubpath import resolve

    st = resolve(checkpoint).stat()
    return _stored_entries_version(str(checkpoint), st.st_mtime_ns, st.st_size).get(key)


@functools.lru_cache(maxsize=4)
def _stored_entries_version(checkpoint: str, mtime_ns: int, size: int) -> dict:
    from rmeeto.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    return {k: ckpt.get(k) for k in ("merge_config", "config")}


def check_structure(checkpoint, model_name: str) -> None:
    """CheckpointError when the checkpoint's weights have another structure (backbone, width, depth, patch,
    channels) than the registered ``model_name``: a mismatch would otherwise surface as whatever is compared
    first (a class count, one tensor's shape). Read off the shapes, no model built."""
    from rmeeto.backbones import is_vit_name
    from rmeeto.checkpoint import CheckpointError
    from rmeeto.models import get_config

    info = _inspect(checkpoint)
    arch = get_config(model_name).arch
    backbone = "vit" if is_vit_name(model_name) else "vim"
    looks = f" (it looks like {info['model']})" if info.get("model") else " (no registered model has its shapes)"
    if info.get("backbone", backbone) != backbone:
        names = {"vim": "Vim", "vit": "ViT"}
        raise CheckpointError(f"checkpoint {checkpoint} holds {names[info['backbone']]} weights, {model_name} is a "
                              f"{names[backbone]}{looks}")
    differ = [f"{k} {info['arch'][k]} (the model's: {getattr(arch, k)})"
              for k in ("embed_dim", "depth", "patch_size", "in_chans")
              if info["arch"].get(k) is not None and info["arch"][k] != getattr(arch, k)]
    if differ:
        raise CheckpointError(f"checkpoint {checkpoint} does not have {model_name}'s structure: "
                              f"{', '.join(differ)}{looks}")


def checkpoint_num_classes(checkpoint, use_ema: bool = False) -> int:
    """Number of classes of the checkpoint's classifier (reads the file weights-only, builds no model).
    Raises :class:`~rmeeto.checkpoint.CheckpointError` for a file without a classifier, or without
    ``model_ema`` weights when ``use_ema``."""
    from rmeeto.checkpoint import CheckpointError

    info = _inspect(checkpoint)
    if use_ema and not info["has_ema"]:
        raise CheckpointError(f"checkpoint {checkpoint} has no 'model_ema' weights (drop use_ema / --ema)")
    n = info["arch"]["num_classes"]
    if not n:
        raise CheckpointError(f"checkpoint {checkpoint} has no classifier (head.weight); it cannot be evaluated")
    return int(n)


def stored_merge_config(checkpoint) -> Optional[MergeConfig]:
    """The :class:`MergeConfig` a ``rmeeto retrain`` checkpoint was trained with (its top-level
    ``merge_config`` entry), or None (no checkpoint, an official file, or an unmerged run). Raises
    :class:`~rmeeto.checkpoint.CheckpointError` if the stored entry is not a valid MergeConfig."""
    from rmeeto.checkpoint import CheckpointError

    stored = _stored_entry(checkpoint, "merge_config")
    if stored is None:
        return None
    try:
        if not isinstance(stored, dict):  # a string or a list: a damaged entry, not "unmerged"
            raise TypeError(f"a {type(stored).__name__}, not a dict")
        config = MergeConfig.from_dict(stored)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} has an unusable merge_config ({exc}); "
                              "give a merge config explicitly") from None
    return None if config.is_noop else config


def stored_classes(checkpoint) -> Optional[list[str]]:
    """The class names (in label order) a ``rmeeto retrain`` run on an image folder stored in its checkpoints'
    config, or None (no checkpoint, an official file, digits / synthetic / clip data)."""
    config = _stored_entry(checkpoint, "config")
    classes = config.get("classes") if isinstance(config, dict) else None
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) and c for c in classes):
        return list(classes)
    return None


def resolve_merge_config(merge_config: Union[str, MergeConfig, None], checkpoint=None) -> Optional[MergeConfig]:
    """``"auto"`` -> the config stored in ``checkpoint`` (:func:`stored_merge_config`; None when there is none);
    None or a no-op MergeConfig -> None (unmerged); a MergeConfig (or its dict) -> itself."""
    if isinstance(merge_config, str):
        if merge_config != "auto":
            raise ValueError(f"merge_config must be 'auto', None or a MergeConfig, got {merge_config!r}")
        return stored_merge_config(checkpoint)
    if isinstance(merge_config, dict):
        merge_config = MergeConfig.from_dict(merge_config)
    if merge_config is None or merge_config.is_noop:
        return None
    if not isinstance(merge_config, MergeConfig):
        raise ValueError(f"merge_config must be 'auto', None or a MergeConfig, got {type(merge_config).__name__}")
    return merge_config


def load_model_for_eval(
    model_name: str,
    checkpoint: Optional[str] = None,
    merge_config: Union[str, MergeConfig, None] = "auto",
    num_classes: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    use_ema: bool = False,
) -> nn.Module:
    """Build a registered model, load ``checkpoint`` (weights only, no pickled code), apply the merge config
    and return the model in eval mode on ``device``.

    merge_config: ``"auto"`` (default) merges as the checkpoint was re-trained (the ``merge_config`` that
    ``rmeeto retrain`` stores; unmerged for an official file or no checkpoint); a
    :class:`~rmeeto.merge.MergeConfig` applies that one; None or a no-op config leaves the model unmerged.
    The config applied is ``model.merge_config`` afterwards (None when unmerged).
    ``num_classes`` overrides the registry's head size (e.g. for a checkpoint fine-tuned on another label set);
    a checkpoint whose classifier does not fit raises :class:`~rmeeto.checkpoint.CheckpointError` (loading
    would otherwise re-initialise the head)."""
    from rmeeto.merge import apply_merge
    from rmeeto.models import create_model

    config = resolve_merge_config(merge_config, checkpoint)
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(model_name, **overrides)
    if checkpoint is not None:
        from rmeeto.checkpoint import CheckpointError, load_checkpoint

        result = load_checkpoint(model, checkpoint, use_ema=use_ema)
        if result.head_reset:  # a freshly initialised classifier would score at chance: refuse
            raise CheckpointError(
                f"checkpoint {checkpoint} has a classifier for another number of classes than the model's "
                f"{model.num_classes}; pass num_classes to match it"
            )
    if config is not None:
        apply_merge(model, config)
    return model.to(resolve_device(device)).eval()


MAX_CLIP_CLASSES = 100_000  # a bound on a clip list's labels (Kinetics-700 has 700): beyond it, a wrong column


def build_eval_dataset(data: str, model_name: str, limit: Optional[int] = None, *, test_views: bool = False,
                       list_sep: str = "auto", classes: Optional[Sequence[str]] = None):
    """The evaluation split of ``data`` preprocessed for the registered model ``model_name`` (its input size,
    mean/std, crop). An image model reads ``"digits"`` or an image folder; a video model a clip data folder
    (:func:`rmeeto.video.build_clip_dataset`: ``data/val.csv`` or ``.txt``, ``list_sep`` its separator), one
    centre clip per video, or with ``test_views`` the 12 views of the official test (items [12, C, T, H, W],
    from ``data/test.*`` if present, else the val list). ``limit`` keeps N evenly spread items (an image folder
    is sorted by class, so the first N would cover only the first classes). Returns (dataset, class names; for
    clips the labels ``"0" .. str(max label)``); ValueError for bad input. ``classes``: the class names that number
    an image folder's labels (a trained run's list, :func:`stored_classes`; a folder not in it is an error);
    default: the folder's own, sorted."""
    from torch.utils.data import Subset

    from rmeeto.data import build_dataset
    from rmeeto.models import get_config

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cfg = get_config(model_name)
    if getattr(cfg.arch, "num_frames", None) is not None:
        from rmeeto.video import build_clip_dataset

        dataset = build_clip_dataset(data, "test" if test_views else "val", cfg.arch, sep=list_sep, mean=cfg.mean,
                                     std=cfg.std)
        top = max(dataset.targets)
        if top >= MAX_CLIP_CLASSES:  # checked before the names are made: 10^20 of them would never finish
            raise ValueError(f"{data}: its clip list has the label {top}, more than any classifier here takes "
                             f"({MAX_CLIP_CLASSES:,} classes at most); is the label column the right one?")
        classes = [str(i) for i in range(top + 1)]
    else:
        if test_views:
            raise ValueError(f"multi-view testing is for video models; {model_name} takes images")
        size = cfg.input_size[-1]
        dataset = build_dataset(data, "val", img_size=size, mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct,
                                classes=classes)
        classes = list(dataset.classes)
    if limit is not None and limit < len(dataset):
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    return dataset, classes
