"""The end-to-end R-MeeTo story on the embedded digits set, in a few CPU minutes.

    rmeeto demo --out out/demo          # or: from rmeeto.demo import run_demo; run_demo("out/demo")

1. train a small Vim (``vim_digits_patch4_32``: 32 px, patch 4, 65 tokens, width 64, depth 12) from scratch;
2. evaluate it (accuracy, paper and true GFLOPs, images/s);
3. merge tokens training-free (r tokens at every even layer) and, for contrast, prune the same tokens;
4. re-train the merged model for a few epochs with distillation from the unmerged teacher;
5. write ``report.md``, ``report.json`` and ``demo.png`` into the output folder (checkpoints in
   ``teacher/`` and ``retrain/``);
6. "order" section (on by default, ``DemoSettings(order=False)`` skips it): train a ViT of the same size
   (``vit_digits_patch4_32``: 65 tokens, 0.51M parameters) through the same loop, then score both models
   training-free with the ordered and the unordered merge, pruning, and token shuffling
   (:func:`rmeeto.ablate.run_ablation`; ``order/ablate.csv``, ``order/ablate.png``), and state from those
   numbers whether "order matters more for Mamba than for ViT" holds at this scale, beside the paper's
   ImageNet figures (reference, not reproduced here).

Both trainings go through :func:`rmeeto.train.train`, the loop used for ImageNet re-training. The findings
printed at the end (does merging lose accuracy, does pruning lose more, does re-training recover it) are
computed from the measured numbers; at this toy scale they need not hold, and the report says so when they
don't.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from rmeeto._files import write_atomic
from rmeeto.merge import MergeConfig
from rmeeto.models import get_config
from rmeeto.runtime import check_seed

__all__ = ["DemoSettings", "run_demo", "findings", "order_findings", "run_order_section", "PAPER_ORDER_REFERENCE"]

MODEL = "vim_digits_patch4_32"
VIT_MODEL = "vit_digits_patch4_32"  # the ViT of the order section: same tokens, about the same parameters

# The paper's ImageNet figures (README plot / shared/SPEC.md section 10), shown beside the digits numbers as
# reference only: change of top-1 in points.
PAPER_ORDER_REFERENCE = {
    "ordered -> unordered, after 3-epoch re-training": {
        "DeiT-Ti/S/B": (+0.1, +0.1, -0.1), "Vim-Ti/S/B": (-9.4, -6.6, -3.5)},
    "training-free pruning at 14 / 28 / 42% token reduction": {
        "DeiT-S": (-0.5, -1.2, -2.8), "Vim-S": (-2.2, -2.2, -6.2)},
}


class _MergePruneSettings:
    """The merge and prune configs of a demo's settings (``num_merged`` tokens at every merging layer)."""

    num_merged: int

    @property
    def merge(self) -> MergeConfig:
        return MergeConfig(num_merged=self.num_merged)

    @property
    def prune(self) -> MergeConfig:
        return MergeConfig(num_merged=self.num_merged, mode="prune")

@dataclass(frozen=True)
class DemoSettings(_MergePruneSettings):
    """Knobs of the demo. The defaults finish in about 5 minutes on 2 CPU cores (4 min 50 s measured: teacher
    3 x ~55 s, re-training 2 x ~51 s, evaluations and report ~20 s), plus about 3 minutes for the order section
    (estimated from its parts on an idle machine: the ViT ~7 s per epoch x 15, then 20 evaluations of the
    360 validation images); ``order=False`` skips it. :meth:`quick` (one epoch each) is a smoke test whose
    numbers mean nothing."""

    teacher_epochs: int = 5  # 3 left the teacher still improving, confounding "re-training recovers"
    retrain_epochs: int = 2
    batch_size: int = 32
    teacher_lr: float = 2.4e-2  # per 512 images: 1.5e-3 at batch 32
    teacher_warmup_epochs: float = 0.3
    retrain_lr: float = 4e-3  # per 512 images: 2.5e-4 at batch 32
    num_merged: int = 8  # tokens merged at each of layers 2, 4, 6, 8, 10
    alpha: float = 0.5
    seed: int = 0
    throughput_batch: int = 64
    order: bool = True  # step 6, the order section (a ViT trained and both models ablated)
    vit_epochs: int = 15
    vit_lr: float = 1.6e-2  # per 512 images: 1e-3 at batch 32
    order_shuffle_rates: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5, 0.7)

    def __post_init__(self):
        for name in ("teacher_epochs", "retrain_epochs", "batch_size", "throughput_batch", "vit_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_merged < 1:
            raise ValueError(f"num_merged must be >= 1, got {self.num_merged}")
        check_seed("seed", self.seed)

    @classmethod
    def quick(cls, **overrides) -> "DemoSettings":
        return cls(**{**dict(teacher_epochs=1, retrain_epochs=1, throughput_batch=32, vit_epochs=1), **overrides})


def _stage(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _measure(model, val_loader, merge_config, settings, progress: bool, desc: str, model_name: str = MODEL) -> dict:
    """Accuracy, paper / true GFLOPs, final token count and throughput of ``model`` (a ``model_name`` model,
    image or video) with ``merge_config`` applied. ``settings`` needs ``throughput_batch``."""
    from rmeeto.evaluate import evaluate, measure_throughput
    from rmeeto.flops import paper_flops, true_flops

    model.eval()
    stats = evaluate(model, val_loader, device="cpu", progress=progress, desc=desc)
    speed = measure_throughput(model, batch_size=settings.throughput_batch,
                               input_size=get_config(model_name).input_size, device="cpu", warmup=1, repeats=3)
    tf = true_flops(model_name, merge_config)
    return {
        "top1": stats["top1"],
        "top5": stats["top5"],
        "val_loss": stats["loss"],
        "paper_gflops": paper_flops(model_name, merge_config),
        "true_gflops": tf["total"],
        "final_tokens": tf["tokens_per_layer"][-1],
        "images_per_s": speed["images_per_s"],
    }


def _training_free_stages(model_name: str, checkpoint: str, val_loader, settings, progress: bool) -> dict[str, dict]:
    """The teacher, merged and pruned rows of the stage table: ``checkpoint`` evaluated as it is, then with
    ``settings.merge`` and ``settings.prune`` applied without training."""
    from rmeeto.evaluate import load_model_for_eval

    stages = {"teacher": _measure(load_model_for_eval(model_name, checkpoint), val_loader, None, settings, progress,
                                  "teacher", model_name)}
    for name, desc, merge in (("merged (training-free)", "merged", settings.merge),
                              ("pruned (training-free)", "pruned", settings.prune)):
        stages[name] = _measure(load_model_for_eval(model_name, checkpoint, merge), val_loader, merge, settings,
                                progress, desc, model_name)
    return stages


def _report(model_name: str, settings, val_images: int, stages: dict, teacher_run, retrain_run,
            seconds: dict) -> dict[str, Any]:
    """The report dict both demos write (``report.json``), up to ``findings``."""
    cfg = get_config(model_name)
    sched = settings.merge.schedule(cfg.arch.num_tokens, cfg.arch.depth, cfg.arch.cls_index)
    report: dict[str, Any] = {
        "model": model_name,
        "settings": dataclasses.asdict(settings),
        "merge_config": settings.merge.to_dict(),
        "merging_layers": [s.layer for s in sched if s.merging],
        "tokens_per_layer_merged": [s.tokens_in for s in sched],
        "val_images": val_images,
        "stages": stages,
        "teacher_history": teacher_run.history,
        "retrain_history": retrain_run.history,
        "seconds": seconds,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    report["findings"] = findings(stages, retrain_run.history, teacher_run.history, val_images)
    return report


def _write_report(out: Path, report: dict, report_md) -> None:
    """``demo.png``, ``report.json`` and ``report.md`` (``report_md(report) -> str``) into ``out``."""
    _plot(out / "demo.png", report["stages"], report["retrain_history"], report["teacher_history"])
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    write_atomic(out / "report.md", report_md(report))


def _layout_md(report: dict, title: str, intro: str, item: str, digits: int, toy_scale: str, files: str,
               extra: list[str]) -> str:
    """``report.md`` of either demo: ``title``, the ``intro`` paragraph, the stage table (per-``item`` units,
    GFLOPs to ``digits`` decimals), the re-training table and findings (``toy_scale``: :func:`_retrain_findings_md`),
    the ``extra`` lines, then :func:`_footer_md` with ``files``."""
    lines = [f"# {title}", "", intro, ""] + _stage_table_md(report, f"{item}s", digits)
    lines += _retrain_findings_md(report, toy_scale) + extra
    return "\n".join(lines + _footer_md(report, item, files))


def _stage_table_md(report: dict, unit: str, digits: int) -> list[str]:
    """The stage table (``unit``: images or clips per second; ``digits``: GFLOPs decimals)."""
    lines = [f"| stage | top-1 (%) | top-5 (%) | paper GFLOPs | true GFLOPs | final tokens | {unit}/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, st in report["stages"].items():
        lines.append(f"| {name} | {st['top1']:.2f} | {st['top5']:.2f} | {st['paper_gflops']:.{digits}f} | "
                     f"{st['true_gflops']:.{digits}f} | {st['final_tokens']} | {st['images_per_s']:.0f} |")
    return lines


def _retrain_findings_md(report: dict, toy_scale: str) -> list[str]:
    """The re-training table and the findings list; ``toy_scale`` names the scale in the caveat printed when a
    claim does not hold."""
    merged = report["stages"]["merged (training-free)"]
    lines = ["", "Re-training (merged student, distilled from the teacher):", "",
             "| epoch | train loss | val top-1 (%) | val top-5 (%) | lr |", "|---:|---:|---:|---:|---:|",
             f"| 0 (training-free) | - | {merged['top1']:.2f} | {merged['top5']:.2f} | - |"]
    for h in report["retrain_history"]:
        lines.append(f"| {h['epoch'] + 1} | {h['train_loss']:.4f} | {h['top1']:.2f} | {h['top5']:.2f} | "
                     f"{h['lr']:.2e} |")
    lines += ["", "## Findings (computed from the numbers above)", ""]
    lines += _findings_md(report["findings"])
    if not all(f["holds"] for f in report["findings"]):
        lines += ["", f"At this toy scale ({toy_scale}) not every claim of the paper reproduces; the numbers are "
                      "reported as measured."]
    return lines


_SECONDS_NAMES = {"data": "data", "teacher": "teacher", "retrain": "re-training"}  # report["seconds"] keys


def _footer_md(report: dict, item: str, files: str) -> list[str]:
    """What the GFLOPs and throughput columns mean (``item``: image or clip), then the wall time of the run and
    of its parts (``report["seconds"]``), then ``files`` (where the outputs are)."""
    parts = ", ".join(f"{_SECONDS_NAMES[k]} {v:.0f} s" for k, v in report["seconds"].items())
    wall = f"Wall time: {report['wall_seconds']:.0f} s ({parts}). Plot: `demo.png`. {files}"
    return ["", (f"GFLOPs are multiply-adds per {item}: *paper* is the official formula (one scan direction, requested "
            "token counts), *true* counts both scan directions on the real schedule. "
            f"{item.capitalize()}s/s: CPU, batch {report['settings']['throughput_batch']}, "
            f"{report['environment']['threads']} thread(s), fp32, 3 timed forwards — a rough indication, noisy on "
            "a shared machine."), "", wall, ""]


def _findings_md(found: list[dict]) -> list[str]:
    return [f"- **{f['claim']}**: {'holds' if f['holds'] else 'does NOT hold here'} — {f['text']}."
            + (f" Note: {f['note']}." if f.get("note") else "") for f in found]


def findings(stages: dict[str, dict], history: list[dict], teacher_history: list[dict] = (),
             val_images: int = 360) -> list[dict]:
    """The paper's three qualitative claims, checked against the numbers: each entry has ``claim``,
    ``holds`` (bool), ``text`` (a sentence with the numbers) and ``note`` (context from other measured numbers
    that bears on the claim, or "")."""
    teacher, merged = stages["teacher"]["top1"], stages["merged (training-free)"]["top1"]
    pruned, retrained = stages["pruned (training-free)"]["top1"], stages["merged + re-trained"]["top1"]
    out = []
    drop = teacher - merged
    out.append({
        "claim": "training-free merging loses accuracy",
        "holds": drop > 0,
        "text": (f"merging without training changed top-1 from {teacher:.2f}% to {merged:.2f}% "
                 f"({-drop:+.2f} points)"),
        "note": "",
    })
    out.append({
        "claim": "pruning the same tokens loses more than merging them",
        "holds": pruned < merged,
        "text": (f"pruning the same tokens gave {pruned:.2f}% vs {merged:.2f}% for merging "
                 f"({pruned - merged:+.2f} points; one validation image is {100 / val_images:.2f} points)"),
        "note": "",
    })
    if drop > 0:
        recovered = (retrained - merged) / drop
        holds = recovered >= 0.5
        text = (f"{len(history)} epoch(s) of re-training with distillation took the merged model from "
                f"{merged:.2f}% to {retrained:.2f}%, recovering {100 * recovered:.0f}% of the {drop:.2f}-point loss")
    else:
        holds = retrained >= merged
        text = (f"there was no loss to recover; re-training moved the merged model from {merged:.2f}% to "
                f"{retrained:.2f}%")
    note = ""
    if len(teacher_history) >= 2:
        gain = teacher_history[-1]["top1"] - teacher_history[-2]["top1"]
        if gain > 0:
            note = (f"the teacher was still improving ({gain:+.2f} points in its last epoch), so part of the "
                    "re-training gain may be plain extra training rather than recovery from merging")
    out.append({"claim": "a short re-training recovers most of the loss", "holds": holds, "text": text,
                "note": note})
    return out


def order_findings(rows: list[dict], val_images: int = 360) -> list[dict]:
    """Whether order matters more for the Vim than for the ViT, from the training-free ablation ``rows``
    (:func:`rmeeto.ablate.run_ablation` rows of :data:`MODEL` and :data:`VIT_MODEL`). Each entry has ``claim``,
    ``holds``, ``text`` and ``note`` (as :func:`findings`); the last entry is the overall statement, which holds
    when both the unordered layout and shuffling cost the Vim more than the ViT."""
    top1 = {(r["model"], r["setting"]): float(r["top1"]) for r in rows if r["training"] == "free"}
    unit = 100 / val_images

    def change(model: str, setting: str) -> float:  # vs the ordered merge of the same model
        return top1[(model, setting)] - top1[(model, "merge ordered")]

    def note(gap: float) -> str:
        if abs(gap) < 2 * unit:
            return (f"the two changes differ by {abs(gap):.2f} points, less than two validation images "
                    f"({2 * unit:.2f} points): not a clear difference")
        return ""

    rates = sorted({float(s.split()[1]) for m, s in top1 if m == MODEL and s.startswith("shuffle ")} - {0.0})
    def compare(claim: str, changes: dict[str, float], text: str) -> dict:
        # text: a format string of the Vim's and the ViT's change, {vim} and {vit}
        vim, vit = changes[MODEL], changes[VIT_MODEL]
        return {"claim": claim, "holds": vim < vit, "text": text.format(vim=vim, vit=vit), "note": note(vim - vit)}

    models = (MODEL, VIT_MODEL)
    shuffled = ", ".join(f"{r:g}" for r in rates)
    out = [
        compare("the unordered merge costs the Vim more than the ViT",
                {m: change(m, "merge unordered") for m in models},
                "ordered -> unordered merge changed top-1 by {vim:+.2f} points for the Vim and {vit:+.2f} for the ViT"),
        compare("shuffling tokens costs the Vim more than the ViT",
                {m: sum(change(m, f"shuffle {r:g}") for r in rates) / max(1, len(rates)) for m in models},
                f"shuffling {shuffled} of the tokens changed top-1 by {{vim:+.2f}} points on average for the Vim "
                "and {vit:+.2f} for the ViT"),
        compare("pruning instead of merging costs the Vim more than the ViT",
                {m: change(m, "prune ordered") for m in models},
                "pruning the same tokens changed top-1 by {vim:+.2f} points for the Vim and {vit:+.2f} for the ViT "
                "(vs the ordered merge)"),
    ]
    both = out[0]["holds"] and out[1]["holds"]
    out.append({
        "claim": "order matters more for Mamba than for ViT",
        "holds": both,
        "text": ("both the unordered layout and shuffling cost the Vim more than the ViT" if both else
                 "the unordered layout and shuffling do not both cost the Vim more than the ViT"),
        "note": (f"unmerged top-1: Vim {top1[(MODEL, 'unmerged')]:.2f}%, ViT {top1[(VIT_MODEL, 'unmerged')]:.2f}%; "
                 f"one validation image is {unit:.2f} points"),
    })
    return out


def run_order_section(out: Path, settings: DemoSettings, vim_checkpoint: str, progress: bool = True,
                      vit_checkpoint: Optional[str] = None, limit: Optional[int] = None) -> dict:
    """Step 6: train :data:`VIT_MODEL` from scratch like the Vim teacher (same loop, data and batch; skipped when
    ``vit_checkpoint`` is given), then run the training-free order ablation of both models into
    ``out / "order"`` (``limit``: score only that many validation images). Returns ``rows``, ``findings``,
    ``vit_history``, ``vit_seconds``, ``ablate_seconds`` and ``reference`` (:data:`PAPER_ORDER_REFERENCE`)."""
    from rmeeto.ablate import AblationSettings, run_ablation

    order_dir = Path(out) / "order"
    t = time.perf_counter()
    vit_history: list[dict] = []
    if vit_checkpoint is None:
        vit_history = _train_vit(order_dir / "vit", settings, progress)
        vit_checkpoint = str(order_dir / "vit" / "best.pth")
    vit_seconds = time.perf_counter() - t
    t = time.perf_counter()
    ablation = AblationSettings(shuffle_rates=settings.order_shuffle_rates, shuffle_seed=settings.seed,
                                batch_size=256, workers=0, device="cpu", limit=limit)
    rows = run_ablation([MODEL, VIT_MODEL], "digits", [vim_checkpoint, vit_checkpoint], order_dir, ablation,
                        progress=progress)
    val_images = rows[0]["n"]
    return {
        "rows": rows,
        "findings": order_findings(rows, val_images),
        "vit_history": vit_history,
        "vit_seconds": vit_seconds,
        "ablate_seconds": time.perf_counter() - t,
        "reference": PAPER_ORDER_REFERENCE,
    }


def _train_vit(out: Path, settings: DemoSettings, progress: bool) -> list[dict]:
    """The ViT from scratch, through the loop and with the settings the Vim teacher uses (its own lr/epochs)."""
    from rmeeto.train import TrainConfig, train

    vit_cfg = TrainConfig(model=VIT_MODEL, data="digits", batch_size=settings.batch_size, seed=settings.seed,
                          workers=0, device="cpu", amp="fp32", progress=progress, warmup_lr=1e-5,
                          epochs=settings.vit_epochs, lr=settings.vit_lr, min_lr=1e-5,
                          warmup_epochs=min(settings.teacher_warmup_epochs, settings.vit_epochs / 2),
                          weight_decay=0.05, drop_path=0.0, alpha=0.0, smoothing=0.1, out=str(out))
    vit_run = train(vit_cfg)
    if vit_run["status"] != "finished":
        raise KeyboardInterrupt  # stopped by a signal: train() saved last.pth
    return vit_run["history"]


def _order_md(order: dict) -> list[str]:
    rows = order["rows"]
    settings = [r["setting"] for r in rows if r["model"] == MODEL]
    by = {(r["model"], r["setting"]): r for r in rows}
    lines = [
        "", "## Order: Vim vs ViT", "",
        f"`{MODEL}` (the teacher above) and `{VIT_MODEL}` (same 65 tokens, about the same parameter count, "
        f"trained from scratch by the same loop for {len(order['vit_history'])} epochs), each merged with its "
        "preset training-free (Vim: at layers 2, 4, ..., 10; ViT: in every block; both end at "
        f"{by[(MODEL, 'merge ordered')]['tokens']} / {by[(VIT_MODEL, 'merge ordered')]['tokens']} tokens). "
        "Shuffle rows shuffle that fraction of the tokens at every merging layer, in evaluation too. "
        "Change = top-1 minus the unmerged model's.", "",
        "| setting | Vim top-1 (%) | Vim change | ViT top-1 (%) | ViT change |", "|---|---:|---:|---:|---:|",
    ]
    for s in settings:
        a, b = by[(MODEL, s)], by[(VIT_MODEL, s)]
        lines.append(f"| {s} | {a['top1']:.2f} | {a['top1_drop']:+.2f} | {b['top1']:.2f} | {b['top1_drop']:+.2f} |")
    lines += ["", "Findings (computed from the numbers above):", ""]
    lines += _findings_md(order["findings"])
    lines += ["", "Paper's ImageNet figures, for reference only (not reproduced by this demo; change of top-1 in "
                  "points):", ""]
    for what, values in order["reference"].items():
        parts = "; ".join(f"{k} {' / '.join(f'{v:+.1f}' for v in vs)}" for k, vs in values.items())
        lines.append(f"- {what}: {parts}")
    lines += ["", f"ViT training {order['vit_seconds']:.0f} s, ablation {order['ablate_seconds']:.0f} s. Table: "
                  "`order/ablate.csv`, figure: `order/ablate.png`."]
    return lines


def _plot(path: Path, stages: dict[str, dict], history: list[dict], teacher_history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"teacher": "o", "merged (training-free)": "s", "pruned (training-free)": "x",
               "merged + re-trained": "*"}
    for name, s in stages.items():
        ax1.scatter(s["true_gflops"] * 1000, s["top1"], marker=markers.get(name, "o"), s=90, label=name)
    ax1.set_xlabel("true MFLOPs per image (multiply-adds)")
    ax1.set_ylabel("val top-1 (%)")
    ax1.set_title("accuracy vs compute")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)

    epochs = [h["epoch"] + 1 for h in history]
    ax2.plot([0] + epochs, [stages["merged (training-free)"]["top1"]] + [h["top1"] for h in history],
             marker="o", label="merged, re-trained with distillation")
    ax2.axhline(stages["teacher"]["top1"], color="k", ls="--", lw=1, label="teacher (unmerged)")
    ax2.axhline(stages["pruned (training-free)"]["top1"], color="tab:red", ls=":", lw=1,
                label="pruned (training-free)")
    ax2.set_xlabel("re-training epoch (0 = training-free)")
    ax2.set_ylabel("val top-1 (%)")
    ax2.set_title("recovery by re-training")
    ax2.set_xticks([0] + epochs)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report_md(report: dict) -> str:
    s = report["settings"]
    arch = get_config(MODEL).arch
    intro = (
        f"Model `{MODEL}` ({arch.num_tokens} tokens: {arch.num_patches} patches + {arch.cls_position} class token), "
        f"digits val split "
        f"({report['val_images']} images). Merging: {s['num_merged']} tokens at each of layers "
        f"{', '.join(map(str, report['merging_layers']))} ({report['tokens_per_layer_merged'][0]} -> "
        f"{report['stages']['merged (training-free)']['final_tokens']} tokens). Teacher trained from scratch "
        f"for {s['teacher_epochs']} epochs; re-training {s['retrain_epochs']} epochs with alpha={s['alpha']}.")
    return _layout_md(report, "R-MeeTo on the digits demo", intro, "image", 4,
                      "1.4k training images, a 12-layer width-64 model, a few CPU minutes",
                      "Checkpoints: `teacher/best.pth`, `retrain/best.pth` (with `last.pth` and `log.jsonl` beside "
                      "them).", _order_md(report["order"]) if report.get("order") else [])


def run_demo(out: str | os.PathLike = "out/demo", settings: Optional[DemoSettings] = None,
             progress: bool = True) -> dict:
    """Run the five steps (module docstring) and write the report into ``out``. Returns the report dict."""
    from torch.utils.data import DataLoader

    from rmeeto import data as rdata
    from rmeeto.train import TrainConfig, train

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = get_config(MODEL)
    val_set = rdata.build_dataset("digits", "val", img_size=cfg.arch.img_size, mean=cfg.mean, std=cfg.std)
    val_loader = DataLoader(val_set, batch_size=256, collate_fn=rdata.collate_skip_none)
    common = dict(model=MODEL, data="digits", batch_size=settings.batch_size, seed=settings.seed, workers=0,
                  device="cpu", amp="fp32", progress=progress, warmup_lr=1e-5)

    # 1. teacher from scratch (no distillation), through the same loop as the re-training
    _stage(f"[1/5] training the teacher from scratch ({settings.teacher_epochs} epochs)")
    teacher_cfg = TrainConfig(**common, epochs=settings.teacher_epochs, lr=settings.teacher_lr, min_lr=1e-5,
                              warmup_epochs=min(settings.teacher_warmup_epochs, settings.teacher_epochs / 2), weight_decay=0.05,
                              drop_path=0.0, alpha=0.0, smoothing=0.1, out=str(out / "teacher"))
    t = time.perf_counter()
    teacher_run = train(teacher_cfg, overwrite=True)  # the demo owns its output folder: a re-run replaces it
    if teacher_run.status != "finished":
        raise KeyboardInterrupt  # stopped by a signal: train() saved teacher/last.pth; nothing more to do
    teacher_seconds = time.perf_counter() - t
    teacher_ckpt = str(out / "teacher" / "best.pth")

    # 2-3. evaluate the teacher, then merge / prune it without training
    _stage("[2/5] evaluating the teacher")
    _stage(f"[3/5] training-free: merging / pruning {settings.num_merged} tokens at every even layer")
    stages = _training_free_stages(MODEL, teacher_ckpt, val_loader, settings, progress)

    # 4. re-train the merged model with distillation from the unmerged teacher
    _stage(f"[4/5] re-training the merged model with distillation ({settings.retrain_epochs} epochs)")
    retrain_cfg = TrainConfig(**common, checkpoint=teacher_ckpt, merge=settings.merge,
                              epochs=settings.retrain_epochs, lr=settings.retrain_lr, min_lr=1e-5,
                              weight_decay=0.05, drop_path=0.0, alpha=settings.alpha, smoothing=0.1,
                              out=str(out / "retrain"))
    t = time.perf_counter()
    retrain_run = train(retrain_cfg, overwrite=True)
    if retrain_run.status != "finished":
        raise KeyboardInterrupt
    retrain_seconds = time.perf_counter() - t
    stages["merged + re-trained"] = _measure(retrain_run.model, val_loader, settings.merge, settings, progress,
                                             "re-trained")

    # 6. order section: a ViT of the same size beside the Vim teacher (before the report, which includes it)
    order = None
    if settings.order:
        _stage(f"[order] training {VIT_MODEL} ({settings.vit_epochs} epochs), then ablating both models")
        order = run_order_section(out, settings, teacher_ckpt, progress)

    # 5. report
    _stage("[5/5] writing the report")
    report = _report(MODEL, settings, len(val_set), stages, teacher_run, retrain_run,
                     {"teacher": teacher_seconds, "retrain": retrain_seconds})
    if order is not None:
        report["order"] = order
    report["wall_seconds"] = time.perf_counter() - t0
    _write_report(out, report, _report_md)
    return report


def format_table(report: dict) -> str:
    """The stage table as plain text (what ``rmeeto demo`` prints)."""
    rows = [("stage", "top-1", "paper GFLOPs", "true GFLOPs", "tokens", "images/s")]
    for name, s in report["stages"].items():
        rows.append((name, f"{s['top1']:.2f}", f"{s['paper_gflops']:.4f}", f"{s['true_gflops']:.4f}",
                     str(s["final_tokens"]), f"{s['images_per_s']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    epochs = ", ".join(f"{h['top1']:.2f}" for h in report["retrain_history"])
    lines.append(f"re-training top-1 per epoch: {epochs}")
    for f in report["findings"] + (report["order"]["findings"] if report.get("order") else []):
        lines.append(f"{'[holds]' if f['holds'] else '[does not hold]'} {f['claim']}: {f['text']}")
    return "\n".join(lines)
