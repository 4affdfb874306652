"""DDP around the CUDA-graphed student (``--ddp-graphs``) on 2 GPUs: the same losses and weights as eager DDP.

Needs 2 CUDA devices (skipped otherwise). The graphed student is captured before DDP wraps it, so the gradient
all-reduce runs after the graphed backward; these tests check that the all-reduce still happens (ranks agree)
and that nothing else changes (fp32, no drop path: the same arithmetic as the eager step).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

MODEL = "vim_test_patch4_16"
SRC = str(Path(__file__).resolve().parents[2] / "src")

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]

_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch, torch.distributed as dist, torch.nn.functional as F
    from rmeeto import MergeConfig, apply_merge, create_model
    from rmeeto.train.graphs import StudentGraph

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    result = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = create_model("%(model)s", drop_path_rate=0.0).cuda()
        apply_merge(model, MergeConfig(num_merged=2))
        if graphed:
            StudentGraph.for_ddp(model, torch.float32, (8, 3, 16, 16))
            assert "forward" in vars(model), "the student's forward was not replaced by the graph dispatch"
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data: the all-reduce matters
        losses = []
        for step in range(5):
            x = torch.randn(8, 3, 16, 16, generator=gen).cuda()
            y = torch.randint(0, 10, (8,), generator=gen).cuda()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        result["graphed" if graphed else "eager"] = dict(
            losses=losses, params=flat.cpu().tolist(),
            rank_spread=max((c - flat).abs().max().item() for c in copies))
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()
''')


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_graphed_ddp_matches_eager_ddp_step_by_step(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(_WORKER % {"model": MODEL})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    eager, graphed = result["eager"], result["graphed"]
    assert eager["rank_spread"] == 0.0 and graphed["rank_spread"] == 0.0  # gradients were all-reduced
    assert graphed["losses"] == pytest.approx(eager["losses"], rel=1e-4, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(eager["params"], graphed["params"])) < 1e-4


def test_retrain_ddp_graphs_matches_eager_ddp(tmp_path):
    from rmeeto import create_model
    from rmeeto.checkpoint import save_checkpoint

    ckpt = tmp_path / "start.pth"
    torch.manual_seed(0)
    save_checkpoint(create_model(MODEL), ckpt)
    logs = {}
    for name, flag in (("eager", "--no-ddp-graphs"), ("graphed", "--ddp-graphs")):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmeeto",
               "retrain", "--model", MODEL, "--checkpoint", str(ckpt), "--alpha", "0.5", "--epochs", "1", "-b", "32",
               "--drop-path", "0", "--amp", "fp32", "--device", "cuda", "-j", "0", "--no-progress", "--out", str(out),
               flag]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        logs[name] = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    assert logs["graphed"]["train_loss"] == pytest.approx(logs["eager"]["train_loss"], rel=1e-4)
    assert abs(logs["graphed"]["top1"] - logs["eager"]["top1"]) <= 0.5


# ------------------------------------------------------------------------------- the GPU input pipeline under DDP

_PIPELINE_WORKER = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    from rmeeto.train import TrainConfig
    from rmeeto.train.data import build_data
    from rmeeto.train.distributed import init_distributed

    ranks = init_distributed("cuda")
    device = torch.device("cuda", ranks.local_rank)
    cfg = TrainConfig(model="%(model)s", data=sys.argv[1], pipeline="gpu", device="cuda", batch_size=8, workers=2,
                      alpha=0.0, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, progress=False)
    data = build_data(cfg, ranks, device)
    data.sampler.set_epoch(0)
    rows = []
    for k, (images, labels) in enumerate(data.train_loader):
        if k == 3:
            break
        rows.append(dict(images=str(images.device), labels=str(labels.device), n=len(labels),
                         finite=bool(torch.isfinite(images).all()), checksum=float(images.double().sum())))
    keys = [int(index) for index, _ in data.sampler]
    gathered = [None] * ranks.world
    dist.all_gather_object(gathered, dict(rank=ranks.rank, rows=rows, keys=keys))
    if ranks.rank == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()
''')


def _jpeg_data(root: Path) -> Path:
    from rmeeto.bench_data import make_jpegs

    make_jpegs(root / "train", images=96, classes=4, workers=2)
    make_jpegs(root / "val", images=16, classes=4, seed=1, workers=2)
    return root


def test_gpu_pipeline_under_ddp_each_rank_on_its_own_gpu_with_its_own_samples(tmp_path):
    data = _jpeg_data(tmp_path / "data")
    script, out = tmp_path / "pipeline_worker.py", tmp_path / "batches.json"
    script.write_text(_PIPELINE_WORKER % {"model": MODEL})
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(data), str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = json.loads(out.read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert len(r["rows"]) == 3
        assert all(row["images"] == row["labels"] == f"cuda:{r['rank']}" for row in r["rows"])
        assert all(row["finite"] and row["n"] == 8 for row in r["rows"])
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])  # the ranks' shards are disjoint
    assert [row["checksum"] for row in ranks[0]["rows"]] != [row["checksum"] for row in ranks[1]["rows"]]


def test_retrain_with_the_gpu_pipeline_on_two_gpus_keeps_a_finite_loss(tmp_path):
    """The run that stopped with a NaN loss at step 3 (eager DDP, GPU pipeline), at test size: two epochs with
    mixup/cutmix, RandAugment and erasing on 2 GPUs; every epoch's loss finite and every image trained on."""
    data = _jpeg_data(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmeeto",
           "retrain", "--model", MODEL, "--from-scratch", "--data", str(data), "--pipeline", "gpu", "--device",
           "cuda", "--epochs", "2", "-b", "16", "--mixup", "0.8", "--cutmix", "1.0", "--aa", "rand-m9-mstd0.5-inc1",
           "--reprob", "0.25", "-j", "2", "--no-progress", "--out", str(out)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(math.isfinite(r["train_loss"]) and r["skipped_images"] == 0 for r in records)
