"""Shared pieces of the training tests: the tiny model they train, the environment of ``python -m rmeeto``
subprocesses, the run log reader and a writer of small random image folders. Imported by the test files of this
folder as ``from _train_common import ...``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

MODEL = "vim_test_patch4_16"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def subprocess_env(**extra) -> dict:
    """The environment of a child process: this checkout's ``src`` first on PYTHONPATH, one thread per process
    (timing-sensitive steps and bitwise results stay stable), unbuffered output, then ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def read_log(out: Path) -> list[dict]:
    """The records of a run folder's log.jsonl, one per epoch."""
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def write_image_tree(root: Path, gen: torch.Generator, per_class: int, suffix: str, size=lambda i: (20, 20),
                     **save_options) -> None:
    """``root/{train,val}/{a,b}/{i}{suffix}``: ``per_class`` random RGB images per class, image ``i`` of
    ``size(i)`` = (height, width) pixels, drawn from ``gen`` in that order; ``save_options`` go to PIL's save."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (torch.rand(*size(i), 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}{suffix}", **save_options)
