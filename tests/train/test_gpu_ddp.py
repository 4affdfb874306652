"""DDP around the CUDA-graphed student (``--ddp-graphs``) on 2 GPUs: the same losses and weights as eager DDP.

Needs 2 CUDA devices (skipped otherwise). The graphed student is captured before DDP wraps it, so the gradient
all-reduce runs after the graphed backward; these tests check that the all-reduce still happens (ranks agree)
and that nothing else changes (fp32, no drop path: the same arithmetic as the eager step).
"""

from __future__ import annotations

import json
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
