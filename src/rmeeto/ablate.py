"""The paper's "why order matters" ablations for one or two models, as one resumable run.

    rows = run_ablation(["vim_digits_patch4_32", "vit_digits_patch4_32"], data="digits",
                        checkpoints=["vim.pth", "vit.pth"], out="out/ablate")

For every model, each *cell* is one merge setting scored on the evaluation split:

    unmerged                     the baseline every drop is measured against
    merge ordered / unordered    R-MeeTo's order-keeping merge vs the official unordered layout
    prune ordered / unordered    the same tokens dropped instead of merged
    shuffle 0.0 ... 0.7          ordered merge after shuffling that fraction of the tokens at every merging layer
                                 (in evaluation too: the paper's training-free shuffle numbers)

with ``r`` = the model's paper preset (Vim: 5 / 11 at even layers, ViT: every block; ``num_merged`` overrides it).
Each cell is scored training-free and, with ``retrain_epochs > 0``, again after that many epochs of re-training
with distillation from the unmerged model (:func:`rmeeto.train.train`, the loop every re-training uses).

Results go to ``OUT/ablate.csv`` after every cell; a cell already recorded there for the same model, setting,
training, checkpoint (path and contents), data (path, and the evaluation split's files: names, labels, sizes and
modification times) and limit is not recomputed, so an interrupted run picks up where it stopped.
``OUT/ablate.png`` shows the top-1 drop of every setting against the unmerged model, one panel per model side by
side (Vim vs ViT when both are given).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from rmeeto._files import write_atomic
from rmeeto.backbones import is_vit_name, schedule_for
from rmeeto.merge import MergeConfig

__all__ = ["AblationSettings", "Cell", "ablation_cells", "run_ablation", "plot_ablation", "read_rows", "FIELDS"]

SHUFFLE_RATES = (0.0, 0.1, 0.3, 0.5, 0.7)  # Table 5 of the paper (0 = the plain ordered merge)

FIELDS = ("model", "backbone", "setting", "group", "mode", "layout", "shuffle_rate", "num_merged", "training",
          "tokens", "gflops", "top1", "top5", "loss", "n", "top1_drop", "checkpoint", "data", "limit",
          "shuffle_seed", "retrain_lr", "retrain_batch_size", "checkpoint_digest", "data_digest", "train_digest")
# a recorded row answers a cell when these agree (anything else may change the numbers); the settings that do not
# apply to a cell (the shuffle seed of an unshuffled cell, the lr of a training-free one) are left empty
KEY_FIELDS = ("model", "setting", "training", "checkpoint", "data", "limit", "num_merged", "shuffle_seed",
              "retrain_lr", "retrain_batch_size", "checkpoint_digest", "data_digest", "train_digest")


@dataclass(frozen=True)
class AblationSettings:
    """What to run. num_merged: tokens per merging layer (None = each model's paper preset); shuffle_rates:
    fractions for the shuffle cells; retrain_epochs: 0 = training-free only; retrain_lr / retrain_batch_size:
    the re-training's base lr (per 512 images) and batch; batch_size / workers / device / amp: evaluation;
    only: setting names to run (None = all; "unmerged" is always run, every drop is measured against it)."""

    num_merged: Optional[int] = None
    shuffle_rates: tuple[float, ...] = SHUFFLE_RATES
    shuffle_seed: int = 0
    retrain_epochs: int = 0
    retrain_lr: float = 2e-5
    retrain_batch_size: int = 128
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    amp: Optional[str] = None
    limit: Optional[int] = None
    only: Optional[tuple[str, ...]] = None  # run just these settings (names as in the CSV); the baseline always

    def __post_init__(self):
        object.__setattr__(self, "shuffle_rates", tuple(float(s) for s in self.shuffle_rates))
        if any(not 0 <= s <= 1 for s in self.shuffle_rates):
            raise ValueError(f"shuffle rates must lie in [0, 1], got {self.shuffle_rates}")
        if self.num_merged is not None and self.num_merged < 1:
            raise ValueError(f"num_merged must be >= 1 (or None for the paper preset), got {self.num_merged}")
        if self.retrain_epochs < 0:
            raise ValueError(f"retrain_epochs must be >= 0, got {self.retrain_epochs}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


class Cell(NamedTuple):
    """One setting of one model: ``config`` None is the unmerged baseline."""

    setting: str
    group: str  # "baseline", "order" (merge/prune x ordered/unordered) or "shuffle"
    config: Optional[MergeConfig]


def ablation_cells(model_name: str, num_merged: Optional[int] = None,
                   shuffle_rates: Sequence[float] = SHUFFLE_RATES, shuffle_seed: int = 0) -> list[Cell]:
    """The cells of one model (module docstring), in plotting order."""
    base = MergeConfig.paper(model_name)
    if num_merged is not None:  # an explicit count replaces the preset's, and its final-count rule with it
        base = replace(base, num_merged=num_merged, final_tokens=None)
    if base.is_noop:
        raise ValueError(f"{model_name}'s paper preset merges nothing; give num_merged")
    cells = [Cell("unmerged", "baseline", None)]
    for mode in ("merge", "prune"):
        for ordered in (True, False):
            name = f"{mode} {'ordered' if ordered else 'unordered'}"
            cells.append(Cell(name, "order", replace(base, mode=mode, ordered=ordered)))
    for rate in shuffle_rates:
        cfg = replace(base, shuffle_rate=float(rate), shuffle_in_eval=True, shuffle_seed=shuffle_seed)
        cells.append(Cell(f"shuffle {rate:g}", "shuffle", cfg))
    return cells


# ============================================================================================ CSV
def _key(row: dict) -> tuple:
    return tuple(str(row.get(k, "")) for k in KEY_FIELDS)


def read_rows(path: os.PathLike) -> list[dict]:
    """Rows of an ablation CSV (numbers parsed back), [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            for kind, names, missing in ((float, ("shuffle_rate", "gflops", "top1", "top5", "loss", "top1_drop"),
                                          math.nan), (int, ("num_merged", "tokens", "n"), 0)):
                for k in names:
                    try:
                        row[k] = kind(row[k]) if row.get(k) not in (None, "") else missing
                    except ValueError:  # an edited or foreign file: say where, never resume from a guess
                        raise ValueError(f"{path} line {line}: {k} is {row[k]!r}, not a number; fix the line or "
                                         "delete the file to run every cell again") from None
            rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, table.getvalue())  # a kill mid-write never leaves a truncated table behind


# ============================================================================================ running
def _retrain(model_name: str, checkpoint: str, data: str, config: MergeConfig, out: Path, settings: AblationSettings,
             progress: bool, num_classes: Optional[int] = None):
    """Re-train the merged model with distillation from the unmerged one; returns the trained model."""
    try:
        from rmeeto.train import TrainConfig, train
    except ImportError as exc:  # the training loop moved: say what is missing rather than fail obscurely
        raise RuntimeError(f"re-training cells need rmeeto.train.TrainConfig and train ({exc})") from None
    cfg = TrainConfig(model=model_name, data=data, checkpoint=checkpoint, merge=config,
                      epochs=settings.retrain_epochs, batch_size=settings.retrain_batch_size, lr=settings.retrain_lr,
                      drop_path=0.0, device=settings.device, progress=progress, workers=settings.workers,
                      out=str(out), num_classes=num_classes)
    result = train(cfg)
    if result["status"] != "finished":
        raise KeyboardInterrupt  # stopped by a signal: train() saved out/last.pth, a re-run resumes it
    return result["model"]


def run_ablation(models: Sequence[str], data: str = "digits", checkpoints: Optional[Sequence[Optional[str]]] = None,
                 out: os.PathLike = "out/ablate", settings: Optional[AblationSettings] = None,
                 progress: bool = True, num_classes: Optional[Sequence[Optional[int]]] = None) -> list[dict]:
    """Run (or finish) the ablation of ``models`` and return every row of ``OUT/ablate.csv`` for them.

    ``checkpoints``: one per model (None = random weights; re-training cells need one). ``num_classes``: head
    size per model (None = the registry's). Writes the CSV after every cell and the PNG at the end."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from rmeeto.data import collate_skip_none
    from rmeeto.evaluate import build_eval_dataset, evaluate, load_model_for_eval, nonfinite_outputs
    from rmeeto.flops import true_flops
    from rmeeto.merge import apply_merge, remove_merge
    from rmeeto.runtime import resolve_device, resolve_dtype

    settings = settings or AblationSettings()
    models = list(models)
    if not 1 <= len(models) <= 2:
        raise ValueError(f"give one or two models (e.g. a Vim and a ViT), got {len(models)}")
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(models)
    num_classes = list(num_classes) if num_classes is not None else [None] * len(models)
    if len(checkpoints) != len(models) or len(num_classes) != len(models):
        raise ValueError(f"give one checkpoint (or None) per model: {len(models)} model(s), "
                         f"{len(checkpoints)} checkpoint(s)")
    if settings.retrain_epochs and any(c is None for c in checkpoints):
        raise ValueError("re-training cells distil from the unmerged model: every model needs a checkpoint")
    device = resolve_device(settings.device)
    amp = resolve_dtype(settings.amp, device) if settings.amp else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "ablate.csv"
    rows = read_rows(csv_path)
    done = {_key(r): r for r in rows}

    plan = []  # (model index, cell, training)
    trainings = ["free"] + ([f"retrained {settings.retrain_epochs} ep"] if settings.retrain_epochs else [])
    for i, name in enumerate(models):
        cells = ablation_cells(name, settings.num_merged, settings.shuffle_rates, settings.shuffle_seed)
        if settings.only is not None:
            unknown = set(settings.only) - {c.setting for c in cells}
            if unknown:
                raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; the settings are: "
                                 f"{', '.join(c.setting for c in cells)}")
            cells = [c for c in cells if c.config is None or c.setting in settings.only]
        for training in trainings:
            plan += [(i, cell, training) for cell in cells if not (training != "free" and cell.config is None)]

    # the file's contents, not only its path: new weights saved over the same name are another experiment
    digests = [_file_digest(c) if c is not None else "" for c in checkpoints]
    # and the data's files: images added, removed or replaced in the folder make another experiment too (the
    # evaluation split for every row, the training split for re-trained rows: it is what they were trained on)
    data_digest = _data_digest(build_eval_dataset(data, models[0])[0]) if plan else ""
    retrained = next((models[i] for i, _, training in plan if training != "free"), None)
    train_digest = _data_digest(_train_split(data, retrained)) if retrained else ""

    def ident(i: int, cell: Cell, training: str) -> dict:
        cfg, retrained = cell.config, training != "free"
        return {"model": models[i], "setting": cell.setting, "training": training,
                "checkpoint": checkpoints[i] or "", "checkpoint_digest": digests[i], "data": data,
                "data_digest": data_digest, "train_digest": train_digest if retrained else "",
                "limit": "" if settings.limit is None else settings.limit,
                "num_merged": (cfg.num_merged if isinstance(cfg.num_merged, int) else sum(cfg.num_merged)) if cfg
                else 0,
                "shuffle_seed": cfg.shuffle_seed if cell.group == "shuffle" else "",
                "retrain_lr": settings.retrain_lr if retrained else "",
                "retrain_batch_size": settings.retrain_batch_size if retrained else ""}

    # a model with random weights (no checkpoint) is another model on every run: none of its rows is reused
    todo = [p for p in plan if checkpoints[p[0]] is None or _key(ident(*p)) not in done]
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="ablate", unit="cell",
               disable=None if progress else True)
    loaded: dict[int, tuple] = {}  # model index -> (model, loader), built once
    for i, cell, training in todo:
        name = models[i]
        if i not in loaded:
            dataset, _ = build_eval_dataset(data, name, settings.limit)
            loader = DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers,
                                collate_fn=collate_skip_none)
            loaded[i] = (load_model_for_eval(name, checkpoints[i], None, num_classes=num_classes[i], device=device),
                         loader)
        model, loader = loaded[i]
        bar.set_postfix_str(f"{name}: {cell.setting} ({training})")
        if training == "free":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="merging .* is more than", category=UserWarning)
                if cell.config is None:
                    remove_merge(model)
                else:
                    apply_merge(model, cell.config)  # a fresh shuffle generator per cell: reproducible
            scored = model
        else:
            run_dir = out / "retrain" / _run_name(ident(i, cell, training))
            scored = _retrain(name, checkpoints[i], data, cell.config, run_dir, settings, progress, num_classes[i])
            scored = scored.to(device).eval()
        stats = evaluate(scored, loader, device=device, amp_dtype=amp, progress=progress,
                         desc=f"{name} {cell.setting}")
        if stats["n"] == 0:  # a 0 % row would read as a measurement
            raise ValueError(f"no image of {data} could be read; no row recorded")
        if stats["nonfinite"]:
            raise ValueError(f"{name} {cell.setting} ({training}): "
                             f"{nonfinite_outputs(checkpoints[i], stats['nonfinite'], stats['n'])}; no row recorded")
        sched = schedule_for(name, cell.config) if cell.config is not None else []
        cfg = cell.config
        row = {
            **ident(i, cell, training),
            "backbone": "vit" if is_vit_name(name) else "vim",
            "group": cell.group,
            "mode": cfg.mode if cfg else "",
            "layout": ("ordered" if cfg.ordered else "unordered") if cfg else "",
            "shuffle_rate": cfg.shuffle_rate if cfg else 0.0,
            "tokens": sched[-1].tokens_out if sched else _input_tokens(name),
            "gflops": true_flops(name, cfg)["total"],
            "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"], "n": stats["n"],
            "top1_drop": math.nan,
        }
        rows = [r for r in rows if _key(r) != _key(row)] + [row]
        _fill_drops(rows)
        _write_rows(csv_path, rows)
        done[_key(row)] = row
        bar.update(1)
        if scored is not model:
            del scored
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    _fill_drops(rows)
    _write_rows(csv_path, rows)
    by_key = {_key(r): r for r in rows}
    mine = [by_key[_key(ident(*p))] for p in plan]  # plan order, whatever order the cells finished in
    plot_ablation(mine, out / "ablate.png")
    return mine


def _file_digest(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a checkpoint file (an ``hf-hub:`` path: of its cached file)."""
    from rmeeto._hubpath import resolve

    digest = hashlib.sha256()
    with open(resolve(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _data_digest(dataset) -> str:
    """The first 16 hex digits of a SHA-256 over a split's items (path, label, size, modification
    time); "" for data held in memory (the digits, which never change)."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return ""
    digest = hashlib.sha256()
    for path, label in samples:
        try:
            st = os.stat(path)
            facts = (st.st_size, st.st_mtime_ns)
        except OSError:  # gone since listing: reading it will say so; the listing still tells data sets apart
            facts = (-1, -1)
        digest.update(f"{path}\0{label}\0{facts[0]}\0{facts[1]}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _train_split(data: str, model_name: str):
    """The training split of ``data`` as a re-training cell reads it (its listing only, for the digest)."""
    from rmeeto.models import get_config

    arch = get_config(model_name).arch
    if getattr(arch, "num_frames", None) is not None:
        from rmeeto.video import build_clip_dataset

        return build_clip_dataset(data, "train", arch)
    from rmeeto.data import build_dataset

    return build_dataset(data, "train", img_size=arch.img_size)


def _run_name(ident: dict) -> str:
    """The re-training folder of a cell: model and setting, then a digest of everything else that makes the run
    (checkpoint, data, tokens merged, seed, lr, batch, epochs), so that another experiment in the same OUT trains
    afresh rather than meeting (and resuming) a run of other settings."""
    identity = json.dumps({k: str(ident[k]) for k in KEY_FIELDS if k not in ("limit",)}, sort_keys=True)
    return f"{ident['model']}_{ident['setting'].replace(' ', '_')}_{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def _input_tokens(name: str) -> int:
    from rmeeto.models import get_config

    return get_config(name).arch.num_tokens


def _fill_drops(rows: list[dict]) -> None:
    """top1_drop = top-1 of the row - top-1 of the unmerged row of the same model, checkpoint (path and contents),
    data (path and files) and limit (negative = worse), the number the paper's figure plots."""
    def same(r: dict) -> tuple:
        return (r["model"], r["checkpoint"], r.get("checkpoint_digest", ""), r["data"], r.get("data_digest", ""),
                str(r["limit"]))

    base = {same(r): r["top1"] for r in rows if r["setting"] == "unmerged" and r["training"] == "free"}
    for r in rows:
        b = base.get(same(r))
        r["top1_drop"] = float(r["top1"]) - b if b is not None else math.nan


# ============================================================================================ figure
def plot_ablation(rows: list[dict], path: os.PathLike) -> None:
    """One panel per model, side by side (shared y): the top-1 change of every setting against the unmerged
    model, training-free bars and, where recorded, re-trained bars beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == name and r["setting"] != "unmerged"]
        settings = list(dict.fromkeys(r["setting"] for r in mine))
        trainings = list(dict.fromkeys(r["training"] for r in mine))
        width = 0.8 / max(1, len(trainings))
        for k, training in enumerate(trainings):
            by_setting = {r["setting"]: r["top1_drop"] for r in mine if r["training"] == training}
            xs = [j + (k - (len(trainings) - 1) / 2) * width for j in range(len(settings))]
            ys = [by_setting.get(s, math.nan) for s in settings]
            bars = ax.bar(xs, ys, width, label=training)
            for bar, y in zip(bars, ys):
                if not math.isnan(y):
                    ax.annotate(f"{y:+.1f}", (bar.get_x() + bar.get_width() / 2, y), ha="center",
                                va="bottom" if y >= 0 else "top", fontsize=7)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=35, ha="right", fontsize=8)
        backbone = "ViT" if is_vit_name(name) else "Vim"
        base = next((r["top1"] for r in rows if r["model"] == name and r["setting"] == "unmerged"), math.nan)
        ax.set_title(f"{name} ({backbone}; unmerged top-1 {base:.1f}%)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("top-1 change vs unmerged (points)")
    # room beyond the tallest bar and beyond 0 on both sides, so no bar's label runs into a title or the axis
    values = [0.0] + [r["top1_drop"] for r in rows if not math.isnan(r["top1_drop"])]
    lo, hi = min(values), max(values)
    pad = 0.1 * ((hi - lo) or 1.0)
    axes[0][0].set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
