"""argparse value types shared by the commands (rmeeto.cli) and the modules run with ``python -m``
(rmeeto.bench_data): each rejects bad input with a message naming the bound."""

from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int):
    """An argparse type accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        expected = f"expected an integer >= {minimum}"
        return parse_int_at_least(text, minimum, text, expected, expected)

    parse.__name__ = f"int>={minimum}"
    return parse


def parse_int_at_least(digits: str, minimum: int, text: str, not_int: str, too_small: str) -> int:
    """``int(digits)``, refused with ``not_int`` / ``too_small`` (each followed by the user's ``text``) when it
    is not an integer / is below ``minimum``."""
    try:
        value = int(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{not_int}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{too_small}, got {text!r}")
    return value


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)

WORKERS_PER_CORE = 4  # beyond this, more loader processes only cost memory and start-up time


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and job schedulers set)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(text: str) -> int:
    """Data-loading processes: an integer from 0 to WORKERS_PER_CORE x the usable cores (a typo such as 1000
    would start a thousand processes, each with a copy of the dataset)."""
    value, cores = nonneg_int(text), usable_cores()
    if value > WORKERS_PER_CORE * cores:
        raise argparse.ArgumentTypeError(f"{value} data-loading processes for {cores} usable CPU cores; "
                                         f"give at most {WORKERS_PER_CORE * cores}")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer from 0 to :data:`rmeeto.runtime.SEED_MAX`."""
    from rmeeto.runtime import SEED_MAX  # here, not at the top: building a parser imports no torch

    expected = f"expected a seed, an integer from 0 to {SEED_MAX}"
    value = parse_int_at_least(text, 0, text, expected, expected)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return value


def comma_nonneg_ints(text: str) -> list[int]:
    """A comma-separated, non-empty list of integers >= 0 (worker counts '0,2,4', tokens merged '0,4,8') ->
    the integers, duplicates dropped, in the given order."""
    expected = "expected comma-separated integers >= 0"
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return list(dict.fromkeys(parse_int_at_least(v, 0, text, expected, expected) for v in values))


def comma_choices(valid: tuple[str, ...]):
    """An argparse type accepting a comma-separated, non-empty subset of ``valid`` -> the names, duplicates
    dropped, in the given order."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(valid)}, got {text!r}")
        return list(dict.fromkeys(values))

    return parse


def finite_float(text: str) -> float:
    """Any finite number (inf and nan refused); range checks are the caller's."""
    return _number(text, "")


def nonneg_float(text: str) -> float:
    value = _number(text, ">= 0")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    value = nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _number(text: str, bound: str) -> float:
    """``text`` as a finite float; inf and nan are never meaningful for a command's numeric settings."""
    bound = f" {bound}" if bound else ""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number{bound}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, "> 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def unit_float_below_one(text: str) -> float:
    """[0, 1): a probability or fraction that may not be 1 (label smoothing of 1 leaves no signal; drop path 1
    drops every block)."""
    value = _number(text, "in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def open_unit_float(text: str) -> float:
    value = _number(text, "in (0, 1)")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def positive_unit_float(text: str) -> float:
    value = _number(text, "in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def device_name(text: str) -> str:
    """A device flag (auto, cpu, cuda, cuda:N) that exists on this machine; the name itself is returned."""
    from rmeeto.runtime import resolve_device

    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def auto_augment_policy(text: str):
    """A timm auto-augment policy string (``rand-m9-mstd0.5-inc1``, ``augmix-m5``, ``original``...), checked by
    building it now rather than at the first training image; 'none'/'off'/'' -> None."""
    if text.strip().lower() in ("", "none", "off"):
        return None
    from timm.data import auto_augment as aa

    try:
        if text.startswith("rand"):
            aa.rand_augment_transform(text, {})
        elif text.startswith("augmix"):
            aa.augment_and_mix_transform(text, {})
        else:
            aa.auto_augment_transform(text, {})
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise argparse.ArgumentTypeError(f"not a timm auto-augment policy: {text!r} ({detail}); "
                                         "e.g. rand-m9-mstd0.5-inc1, augmix-m5, original, v0") from None
    return text


def class_list_file(text: str) -> tuple[str, ...]:
    """A file of class names, one a line (blank lines and lines starting with '#' ignored), read now so a
    missing, empty or repeating list fails before any work."""
    from pathlib import Path

    try:
        lines = Path(text).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read class list {text}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(f"class list {text} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                         f"at offset {exc.start})") from None
    names = tuple(n.strip() for n in lines if n.strip() and not n.strip().startswith("#"))
    if not names:
        raise argparse.ArgumentTypeError(f"class list {text} names no class (one name per line)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise argparse.ArgumentTypeError(f"class list {text} repeats {name}")
        seen.add(name)
    return names
