"""What a run tells its user: log lines on stderr, the progress bar, ``log.jsonl`` and TensorBoard scalars.

Only rank 0 reports. The run folder's ``log.jsonl`` is rewritten from the checkpoint's history when a run
starts, so a resumed run never repeats or loses a line.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from rmeeto.train.config import TrainConfig, TrainError
from rmeeto.train.distributed import Ranks

__all__ = ["RunLog", "check_tensorboard", "format_table", "expected_torch_warnings_quiet"]

# Warnings PyTorch gives on every CUDA training run here that say nothing about the user's run:
EXPECTED_TORCH_WARNINGS = (
    # torch.cuda.make_graphed_callables warms up on a stream of its own, where the parameters' AccumulateGrad
    # nodes are made and then kept by the captured graph: every replayed backward hands them gradients from the
    # training stream, which costs one event wait (inside the measured step rates)
    "The AccumulateGrad node's stream does not match the stream of the node that produced the incoming gradient",
    # the autograd engine's device thread has no CUDA context until its first cuBLAS call sets the primary one
    "Attempting to run cuBLAS, but there was no current CUDA context",
)


@contextlib.contextmanager
def expected_torch_warnings_quiet():
    """Within it, the :data:`EXPECTED_TORCH_WARNINGS` are not shown; every other warning is, and the caller's
    warning filters are back as they were afterwards."""
    with warnings.catch_warnings():
        for message in EXPECTED_TORCH_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
        yield


def check_tensorboard(config: TrainConfig, ranks: Ranks) -> None:
    """Fail before any work when ``--tensorboard`` is asked for without the package."""
    if config.tensorboard and ranks.master:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


class RunLog:
    """Rank 0's reporting. ``log`` works from the start; :meth:`start` opens the run folder's files and the
    progress bar once everything is built (so bad input leaves no folder behind)."""

    def __init__(self, ranks: Ranks):
        self.master = ranks.master
        self.config: Optional[TrainConfig] = None
        self.out: Optional[Path] = None
        self.writer = None
        self.bar = None
        self.show = False

    def log(self, msg: str) -> None:
        if self.master:
            tqdm.write(msg, file=sys.stderr)

    def start(self, config: TrainConfig, history: list, total_steps: int, global_step: int) -> None:
        self.config = config
        self.out = Path(config.out) if config.out is not None else None
        if self.out is not None and self.master:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "log.jsonl", "w") as f:
                for h in history:
                    f.write(json.dumps(h) + "\n")
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
        self.show = config.progress and self.master and sys.stderr.isatty()  # no \r-spam in log files
        self.bar = tqdm(total=total_steps, initial=global_step, desc="train", unit="step", disable=not self.show,
                        dynamic_ncols=True, file=sys.stderr)

    def epoch_start(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{self.config.epochs}")

    def step(self, global_step: int, loss: float, lr: float, images_per_s: float) -> None:
        if self.show:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch_end(self, record: dict) -> None:
        if not self.master:
            return
        self.log(f"epoch {record['epoch'] + 1}/{self.config.epochs}: train loss {record['train_loss']:.4f}, "
                 f"val top1 {record['top1']:.2f} top5 {record['top5']:.2f}"
                 + (f" (ema {record['top1_ema']:.2f})" if "top1_ema" in record else "")
                 + f", {record['images_per_s']:.0f} img/s"
                 + (f" ({record['steady_images_per_s']:.0f} after a first step of {record['first_step_s']:.1f}s"
                    + (f", {record['first_batch_s']:.1f}s of it waiting for data"
                       if record.get("first_batch_s") is not None else "") + ")"
                    if record.get("steady_images_per_s") is not None else "")
                 + f", {record['seconds']:.1f}s")
        if self.out is not None:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k in ("train_loss", "top1", "top5", "val_loss"):
                self.writer.add_scalar(f"epoch/{k}", record[k], record["epoch"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def format_table(history: list[dict]) -> str:
    """The per-epoch history as an aligned text table (printed when a run finishes)."""
    cols = [("epoch", "{:d}"), ("train_loss", "{:.4f}"), ("top1", "{:.2f}"), ("top5", "{:.2f}"),
            ("lr", "{:.2e}"), ("images_per_s", "{:.1f}"), ("seconds", "{:.1f}")]
    if any("top1_ema" in h for h in history):
        cols.insert(4, ("top1_ema", "{:.2f}"))
    rows = [[c for c, _ in cols]]
    for h in history:
        rows.append([fmt.format(h[c]) if h.get(c) is not None else "-" for c, fmt in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
