"""`rmeeto bench` and the inference fast path on CPU (the CUDA paths are exercised in tests/test_gpu_model.py)."""

import json
import statistics

import pytest
import torch

import rmeeto
from rmeeto.cli import main
from rmeeto.fast import accelerate


def test_bench_cli_rows_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "vim_test_patch4_16", "--device", "cpu", "--batch-size", "2", "--warmup", "1",
               "--repeats", "2", "--dtype", "fp32", "-r", "3", "--compare", "--train", "--train-repeats", "1",
               "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    # inference and train, each: 2 backends x (unmerged, merged)
    assert [(r["section"], r["backend"], r["merge"] is None) for r in results] == [
        (s, b, m) for s in ("inference", "train") for b in ("reference", "chunked") for m in (True, False)
    ]
    for r in results:
        assert r["images_per_s"] > 0 and r["ms_p10"] <= r["ms_median"] <= r["ms_p90"]
        if r["merge"] is not None:
            assert r["merge"]["num_merged"] == 3
        else:
            assert r["speedup_vs_unmerged"] == 1.0
    assert "images/s" in capsys.readouterr().out


def test_bench_cli_rejects_cuda_without_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "vim_test_patch4_16", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_accelerate_eager_matches_model_and_rejects_graphs_on_cpu():
    model = rmeeto.create_model("vim_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(accelerate(model, "auto")(x), ref)
    with pytest.raises(ValueError, match="CUDA"):
        accelerate(model, "cudagraph")
    with pytest.raises(ValueError, match="choose from"):
        accelerate(model, "turbo")


# ============================================================================================ modes side by side
def _counting_backend(graphs: list, inner: str = "eager"):
    """A torch.compile backend that records each graph it is handed and compiles it with ``inner``."""
    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(inner)(gm, example_inputs)

    return backend


def _failing_backend(gm, example_inputs):
    raise RuntimeError("Inductor could not lower rmeeto::selective_scan\nsecond line of the report")


def test_bench_cli_modes_table_and_json(tmp_path, capsys):
    from rmeeto.bench import INFERENCE_MODES
    from rmeeto.cli.bench import MODES

    assert set(MODES) == set(INFERENCE_MODES)  # the CLI spells them out so that building the parser needs no torch
    out = tmp_path / "bench.json"
    assert main(["bench", "vim_test_patch4_16", "--device", "cpu", "--batch-size", "2", "--warmup", "0",
                 "--repeats", "2", "--dtype", "fp32", "-r", "2", "--modes", "eager,compile",
                 "--compile-backend", "eager", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["modes"] == ["eager", "compile"] and data["compile_backend"] == "eager"
    assert [(r["mode"], r["merge"] is None) for r in data["results"]] == [
        ("eager", True), ("eager", False), ("compile", True), ("compile", False)]
    assert [row["mode"] for row in data["table"]] == ["eager", "compile"]
    for row in data["table"]:
        assert row["merge"]["num_merged"] == 2 and row["section"] == "inference"
        # the CLI's default 5 alternating rounds: the median of the ratios within rounds
        assert len(row["round_ratios"]) == 5
        assert row["merged_over_unmerged"] == statistics.median(row["round_ratios"])
        for side in ("unmerged", "merged"):
            assert row[f"{side}_error"] is None and row[f"{side}_images_per_s"] > 0
            assert row[f"{side}_ms_p10"] <= row[f"{side}_ms_median"] <= row[f"{side}_ms_p90"]
            assert row[f"{side}_first_call_s"] > 0
            assert row[f"{side}_launches"] is None and row[f"{side}_host_launches"] is None  # CPU: not counted
    lines = {line.split()[3]: line.split() for line in printed.splitlines() if line.startswith("vim_test")}
    assert set(lines) == {"eager", "compile"}
    for cells in lines.values():
        assert cells[1] == "r=2" and cells[-2] == "-/-"  # the launches column on CPU
    assert "images/s" in printed and "failed" not in printed


def test_failing_compile_is_reported_per_row_and_the_other_modes_run(tmp_path, capsys):
    from rmeeto.bench import bench_modes, compare_modes

    seen = []
    results = bench_modes("vim_test_patch4_16", rmeeto.MergeConfig(num_merged=2), modes=["compile", "eager"],
                          device="cpu", batch_size=2, dtype="fp32", warmup=0, repeats=1,
                          compile_backend=_failing_backend, on_result=seen.append)
    assert seen == results  # each run reported as it ends, in order
    assert [(r["mode"], r["merge"] is None) for r in results] == [
        ("compile", True), ("compile", False), ("eager", True), ("eager", False)]
    for r in results[:2]:
        assert r["error"].startswith("failed: ") and "Inductor could not lower" in r["error"]
        assert "\n" not in r["error"] and "second line" not in r["error"]
        assert r["images_per_s"] is None and r["speedup_vs_unmerged"] is None and r["backend"] == "chunked"
    for r in results[2:]:
        assert r["error"] is None and r["images_per_s"] > 0
    failed, eager = compare_modes(results)
    assert failed["merged_over_unmerged"] is None and failed["unmerged_error"] == failed["merged_error"]
    assert eager["merged_over_unmerged"] > 0

    # through the CLI: a registered backend that fails; the row says so, the command still succeeds (eager ran)
    torch._dynamo.register_backend(_failing_backend, name="rmeeto_test_failing")
    out = tmp_path / "bench.json"
    assert main(["bench", "vim_test_patch4_16", "--device", "cpu", "--batch-size", "2", "--warmup", "0",
                 "--repeats", "1", "--dtype", "fp32", "-r", "2", "--modes", "compile,eager",
                 "--compile-backend", "rmeeto_test_failing", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    compile_line, eager_line = [line for line in printed.splitlines() if line.startswith("vim_test")]
    assert " eager " in eager_line and "failed" not in eager_line
    assert " compile " in compile_line and compile_line.count("failed: BackendCompilerFailed") == 1
    assert "Inductor could not lower" in compile_line and "2 of 4 runs failed" in printed
    row, eager_row = json.loads(out.read_text())["table"]
    assert eager_row["mode"] == "eager" and eager_row["merged_images_per_s"] > 0
    assert row["unmerged_error"].startswith("failed: ") and row["merged_images_per_s"] is None


def test_rounds_alternate_the_two_models_and_take_the_ratio_within_rounds(monkeypatch):
    """bench_modes(rounds=3): both models built, then timed unmerged, merged, unmerged, ... with ceil(repeats /
    rounds) repeats each; each side's result pools its rounds' repeats; the merged row's speedup (and the table's
    ratio) is the median of the ratios within rounds, not the ratio of the pooled medians."""
    import rmeeto.bench as bench

    order, real = [], bench.measure

    def spy(fn, inputs, **kw):
        timing = real(fn, inputs, **kw)
        order.append((fn, kw["protocol"].repeats))
        return timing

    monkeypatch.setattr(bench, "measure", spy)
    results = bench.bench_modes("vim_test_patch4_16", rmeeto.MergeConfig(num_merged=2), modes=["eager"], rounds=3,
                                device="cpu", batch_size=2, dtype="fp32", warmup=2, repeats=7)
    unmerged, merged = results
    fns = [fn for fn, _ in order]
    assert len(order) == 6 and fns[0] is not fns[1] and fns[0::2] == [fns[0]] * 3 and fns[1::2] == [fns[1]] * 3
    assert {repeats for _, repeats in order} == {3}  # ceil(7 / 3)
    for r in results:
        assert r["error"] is None and r["rounds"] == 3 and r["repeats"] == 9 and len(r["round_ratios"]) == 3
    assert merged["speedup_vs_unmerged"] == statistics.median(merged["round_ratios"]) and unmerged[
        "speedup_vs_unmerged"] == 1.0
    (row,) = bench.compare_modes(results)
    assert row["merged_over_unmerged"] == merged["speedup_vs_unmerged"]
    with pytest.raises(ValueError, match="rounds"):
        bench.bench_modes("vim_test_patch4_16", rmeeto.MergeConfig(num_merged=2), modes=["eager"], rounds=0,
                          device="cpu")
    with pytest.raises(TypeError, match="bogus"):  # the caller's mistake, not a failed run
        bench.bench_inference_rounds("vim_test_patch4_16", rmeeto.MergeConfig(num_merged=2), device="cpu", bogus=1)


@pytest.mark.slow
@pytest.mark.full  # 24 s of the default tier on 2 cores; CI runs it; the GPU tests compile the training step too
def test_train_step_runs_eager_and_compiled_on_cpu():
    from rmeeto.bench import bench_modes

    graphs = []
    results = bench_modes("vim_test_patch4_16", rmeeto.MergeConfig(num_merged=2), modes=["eager", "compile"],
                          train=True, device="cpu", batch_size=2, dtype="fp32", warmup=0, repeats=1,
                          compile_backend=_counting_backend(graphs))
    assert [(r["section"], r["mode"], r["error"]) for r in results] == [("train", m, None) for m in
                                                                          ("eager", "eager", "compile", "compile")]
    assert all(r["images_per_s"] > 0 for r in results)
    # compile mode compiled both the student's and the teacher's forward, for the unmerged and merged student
    assert len(graphs) >= 4


def test_train_step_modes_are_checked():
    from rmeeto.bench import make_train_step

    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_train_step("vim_test_patch4_16", None, device="cpu", mode="cudagraph")
    with pytest.raises(ValueError, match="not valid"):
        make_train_step("vim_test_patch4_16", None, device="cpu", mode="compile+cudagraph")


def test_launch_counts_from_profiler_events():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from rmeeto.bench import Launches

    def ev(key, count, device):
        return SimpleNamespace(key=key, count=count, device_type=device)

    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    events = [ev("cudaLaunchKernel", 40, cpu), ev("cuLaunchKernelEx", 12, cpu), ev("cudaGraphLaunch", 1, cpu),
              ev("cudaMemcpyAsync", 2, cpu), ev("cudaDeviceSynchronize", 1, cpu), ev("cudaEventRecord", 3, cpu),
              ev("ampere_sgemm_128x64_tn", 30, cuda), ev("_selective_scan_fwd_kernel", 22, cuda),
              ev("Memcpy DtoD (Device -> Device)", 2, cuda), ev("Activity Buffer Request", 1, cuda)]
    assert Launches.from_events(events) == Launches(gpu=54, host=55)


def test_bench_cli_mode_flags_are_checked(capsys):
    base = ["bench", "vim_test_patch4_16", "--device", "cpu", "--dtype", "fp32"]
    assert main(base + ["--mode", "eager", "--modes", "eager"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(base + ["--modes", "eager,cudagraph"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main(base + ["--modes", "eager,compile", "--compile-backend", "nope"]) == 2
    assert "'nope' is not a torch.compile backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--modes", "eager,turbo"])
    assert "comma-separated subset" in capsys.readouterr().err


def test_compile_modes_of_accelerate():
    from rmeeto.fast import compile_model

    model = rmeeto.create_model("vim_test_patch4_16").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    torch._dynamo.reset()
    graphs = []
    out = accelerate(model, "compile", compile_backend=_counting_backend(graphs))(x)
    assert graphs and torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="needs the 'inductor' compile backend"):
        compile_model(model, "eager", cudagraphs=True)


def test_bench_data_passes_the_pipeline_options_through(tmp_path, capsys):
    """`rmeeto bench --data DIR --workers ...` times the input pipeline as `rmeeto bench-data` does, with the
    worker counts, batches and image size given; those options without --data, or malformed, are refused."""
    from rmeeto.bench_data import make_jpegs

    make_jpegs(tmp_path / "j", images=6, classes=2, workers=1)
    out = tmp_path / "rows.json"
    rc = main(["bench", "--data", str(tmp_path / "j"), "--device", "cpu", "--workers", "0", "--batch-size", "3",
               "--batches", "2", "--img-size", "32", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["pipeline"], r["workers"], r["images"]) for r in rows] == [("cpu", 0, 6)]
    assert rows[0]["images_per_s"] > 0 and rows[0]["skipped"] == 0
    capsys.readouterr()
    assert main(["bench", "vim_test_patch4_16", "--workers", "2", "--device", "cpu"]) == 2
    assert "--workers time the input pipeline: give --data DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--data", str(tmp_path / "j"), "--workers", "1,x"])
    assert "expected comma-separated integers >= 0, got '1,x'" in capsys.readouterr().err


def test_bench_refuses_unknown_models_and_backends_before_anything_slow(capsys):
    # the model is named even where the default fp16 would also be refused (no CUDA)
    assert main(["bench", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    base = ["bench", "vim_test_patch4_16", "--device", "cpu", "--dtype", "fp32"]
    assert main(base + ["--backend", "nosuch"]) == 2
    assert "--backend nosuch: not a scan backend (choose from auto, reference, chunked" in capsys.readouterr().err
    assert main(base + ["--backend", "triton"]) == 2
    assert "--backend triton cannot run on cpu here (available: auto, reference, chunked)" in capsys.readouterr().err


def test_bench_exits_1_when_every_run_failed(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "vim_test_patch4_16", "--device", "cpu", "--dtype", "fp32", "--batch-size", "2",
               "--warmup", "0", "--repeats", "1", "--rounds", "1", "--img-size", "7", "--json", str(out)])
    assert rc == 1
    assert "2 of 2 runs failed" in capsys.readouterr().out
    assert all("not a multiple of patch_size" in r["error"] for r in json.loads(out.read_text())["results"])


def test_bench_data_refuses_bad_policy_device_and_unreadable_folders(tmp_path, capsys):
    from rmeeto.bench_data import make_jpegs

    make_jpegs(tmp_path / "j", images=4, classes=2, workers=1)
    base = ["bench-data", str(tmp_path / "j"), "--workers", "0", "--batches", "1", "--batch-size", "2"]
    with pytest.raises(SystemExit):
        main(base + ["--aa", "foo"])
    assert "argument --aa: not a timm auto-augment policy: 'foo'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err
    for f in (tmp_path / "j").rglob("*.jpg"):
        f.write_bytes(b"not a jpeg")
    assert main(base + ["--device", "cpu"]) == 2  # a rate of 0 images/s is no measurement
    assert "no image could be read in 1 timed batches of the cpu pipeline" in capsys.readouterr().err


def test_rounds_that_disagree_get_a_note_naming_what_moves_them_in_their_mode():
    """rmeeto bench prints a note under a row whose alternating rounds' ratios differ by more than 10% (session 36's
    eager Vim-S: 1.392, 0.958, 0.941 on a host that slowed down), naming the host for eager / compiled rows and the
    GPU for graphed ones on CUDA, the machine on CPU; none for rounds within 10%, one round, or a failed side."""
    from rmeeto.cli.bench import ROUNDS_DISAGREE, rounds_note

    row = dict(model="vim_small_patch16_224", mode="eager", round_ratios=[1.392, 0.958, 0.941])
    note = rounds_note(row)
    assert note is not None and "0.94-1.39x over 3 rounds" in note and "host" in note and "cudagraph" in note
    graphed = rounds_note(dict(row, mode="cudagraph", round_ratios=[1.3786, 1.4757, 1.52]))
    assert graphed is not None and "GPU" in graphed and "host" not in graphed
    assert rounds_note(dict(row, mode="compile")) is not None
    on_cpu = rounds_note(row, cuda=False)
    assert on_cpu is not None and "machine" in on_cpu and "GPU" not in on_cpu
    for ratios in ([1.40, 1.40 * ROUNDS_DISAGREE * 0.999], [1.39], [], None, [1.2, None]):
        assert rounds_note(dict(row, round_ratios=ratios)) is None, ratios
