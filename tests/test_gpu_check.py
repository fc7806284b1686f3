"""python -m moe_lab.gpu_check: the CPU quick run (what CI runs so the command cannot rot), a
failing step that does not stop the others, and the device helper's environment variables."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_lab.course import gpu_check
from moe_lab.grouped_gemm import path_for
from moe_lab.systems.decisions import decisions_for
from moe_lab.systems.device import DEVICE_ENV, pick_device
from moe_lab.systems.parallel import run_expert_parallel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(DEVICE_ENV, None)
    done = subprocess.run([sys.executable, "-m", "moe_lab.course.gpu_check", "--device", "cpu",
                           "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    return out, done


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quick_cpu_run_passes_and_prints_one_summary(quick_run):
    out, done = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "gpu_check_cpu_quick" / "summary.txt").read_text(encoding="utf-8")
    assert summary.strip() in done.stdout  # the printed table is the saved one
    assert summary.splitlines()[1].startswith("decisions: n/a, native bf16 False, dtype float32")
    rows = {line.split()[0]: line.split()[1] for line in summary.splitlines()[3:]
            if line and not line.startswith((" ", "total", "results"))}
    assert rows == {step: "ok" for step in gpu_check.STEPS}
    # every abbreviated step says so, and how
    for what in ("small shapes", "aot_eager", "00_start_here only", "10 of 400 steps",
                 "needs a GPU"):
        assert "abbreviated: " in summary and what in summary, what
    steps = _load(out / "gpu_check_cpu_quick" / "summary.json")["steps"]
    assert [s["name"] for s in steps] == list(gpu_check.STEPS)


@pytest.mark.slow
def test_quick_cpu_run_writes_each_result_with_its_command(quick_run):
    out, _ = quick_run
    check_dir = out / "gpu_check_cpu_quick"
    files = [out / "bench_cpu_quick.json", out / "lesson05_cpu_quick" / "moe.json",
             *(check_dir / f"{name}.json" for name in
               ("environment", "equality", "compile", "syncs", "parallel", "training", "lessons",
                "summary"))]
    for path in files:
        assert _load(path)["command"].startswith("python -m moe_lab.gpu_check --device cpu --quick")

    bench = _load(out / "bench_cpu_quick.json")
    assert bench["environment"]["dtype"] == "float32"
    sorted_rows = [r for r in bench["results"] if r["strategy"] == "sorted"]
    assert len(sorted_rows) == 2 and all(r["ratio_to_loop"] > 0 for r in sorted_rows)

    equality = _load(check_dir / "equality.json")["cases"]
    assert len(equality) == 16 and all(c["ok"] and c["same_routing"] for c in equality)
    assert {c["dtype"] for c in equality} == {"float32", "bfloat16"}
    compiled = _load(check_dir / "compile.json")
    assert compiled["compile_backend"] == "aot_eager"
    assert all(c["ok"] and c["graphs_compiled"] > 0 for c in compiled["cases"])

    syncs = _load(check_dir / "syncs.json")["tinylm_2_layers_counted"]
    loop = path_for(torch.randn(2, 64), torch.randn(8, 64, 64)) == "segment_loop"
    assert syncs == ({"item": 1, "cpu": 2} if loop else {"item": 1})  # before issue 18: + 4

    environment = _load(check_dir / "environment.json")
    assert environment["grouped_mm_path"] == decisions_for("cpu").grouped_mm_path
    assert environment["compute_capability"] == "n/a" and environment["tf32"] == "False"
    assert {r.get("grouped_mm_path") for r in bench["results"] if r["strategy"] == "sorted"} \
        <= {"cpu_grouped_mm", "segment_loop"}
    assert all(not t["met"] or t["ratio"] <= t["target"] for t in bench["targets"])

    parallel = _load(check_dir / "parallel.json")
    assert parallel["backend"] == "gloo" and max(parallel["errors"].values()) < 1e-4
    assert sum(map(sum, parallel["tokens_sent"])) == 128 * 2  # N * K rows sent

    log = _load(out / "lesson05_cpu_quick" / "moe.json")
    assert log["steps"]["step"] == list(range(1, 11)) and log["device"] == "cpu"
    assert _load(check_dir / "training.json")["runs"]["moe"]["val_loss"] > 0

    (lesson,) = _load(check_dir / "lessons.json")["lessons"]
    assert lesson["lesson"] == "00_start_here" and lesson["ok"]
    # the kernel reported its own peak memory through MOE_LAB_PEAK_MEMORY_FILE
    assert lesson["memory_reported"] and lesson["kernel_max_rss_mb"] > 50
    assert lesson["peak_gpu_mb"] is None


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(run, result):
        raise RuntimeError("on purpose")

    monkeypatch.setitem(gpu_check.STEPS, "bench", broken)
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--steps", "environment,bench,syncs"])
    assert code == 1
    summary = json.loads((tmp_path / "gpu_check_cpu_quick" / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"environment": "ok", "bench": "FAILED", "syncs": "ok"}
    error = (tmp_path / "gpu_check_cpu_quick" / "bench.error.txt").read_text()
    assert "RuntimeError: on purpose" in error
    printed = capsys.readouterr().out
    assert "2 ok, 1 FAILED (bench), 0 skipped" in printed
    bench_row = next(line for line in printed.splitlines() if line.startswith("bench "))
    assert "bench.error.txt" in bench_row  # the FAILED row names its error file


def test_the_first_cuda_error_is_marked_as_the_cause(tmp_path, monkeypatch, capsys):
    def cuda_broken(run, result):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu_check.STEPS, "bench", cuda_broken)
    monkeypatch.setitem(gpu_check.STEPS, "syncs", cuda_broken)
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--steps", "environment,bench,syncs"]) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("bench ", "syncs "))}
    assert "FIRST CUDA ERROR" in rows["bench"]
    assert "after the CUDA error in bench" in rows["syncs"] and "FIRST" not in rows["syncs"]
    summary = json.loads((tmp_path / "gpu_check_cpu_quick" / "summary.json").read_text())
    assert summary["first_cuda_error"] == ["bench"]


def test_a_step_that_checked_nothing_is_skipped_and_counted(tmp_path, capsys):
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--steps", "environment,compile", "--budget", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    compile_row = next(line for line in printed.splitlines() if line.startswith("compile "))
    assert compile_row.split()[1] == "skipped" and "past the --budget" in compile_row
    assert "1 ok, 0 FAILED, 1 skipped (compile)" in printed


def test_missed_bench_targets_are_flagged(tmp_path, monkeypatch, capsys):
    from moe_lab.systems import bench

    tiny = (bench.BenchShape(64, 16, 32, 8, 2),)
    monkeypatch.setattr(bench, "QUICK_SHAPES", tiny)
    monkeypatch.setattr(bench, "TARGETS", {tiny[0]: 1e-9})  # a target nothing meets
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--steps", "bench"]) == 0
    printed = capsys.readouterr().out
    assert "FLAGGED: sorted / dense limit" in printed and "MISSED" in printed
    assert "flagged: bench" in printed
    payload = json.loads((tmp_path / "bench_cpu_quick.json").read_text())
    assert any(not t["met"] and t["target"] == 1e-9 for t in payload["targets"])


def test_installed_with_pip_it_writes_under_the_working_directory(tmp_path, monkeypatch, capsys):
    """Outside a clone (site-packages): results go to ./moe_lab_results, and the lessons step
    says where it looked and how to point it at the notebooks."""
    monkeypatch.setattr(gpu_check, "REPO_DIR", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert not gpu_check.in_a_checkout(gpu_check.REPO_DIR)
    assert gpu_check.main(["--device", "cpu", "--quick", "--steps", "environment,lessons"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "moe_lab_results" / "gpu_check_cpu_quick" / "summary.txt").is_file()
    lessons_row = next(line for line in printed.splitlines() if line.startswith("lessons "))
    assert "skipped" in lessons_row and "pass --lessons" in lessons_row
    notebooks, _ = gpu_check.find_lessons(ROOT / "notebooks")  # --lessons finds them
    assert [nb.name for nb in notebooks][:1] == ["00_start_here.ipynb"]


def test_unknown_step_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "bench,nope"])
    assert "unknown ['nope']" in capsys.readouterr().err


def test_device_comes_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("meta") == torch.device("meta")  # an explicit choice wins
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match="MOE_LAB_DEVICE='cuda' asks for CUDA"):
            pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_expert_parallel_device_is_checked():
    from moe_lab import SparseMoE

    moe = SparseMoE(8, 8, 4, 2).eval()
    with pytest.raises(ValueError, match="device='cuda' needs a CUDA GPU"):
        run_expert_parallel(moe, torch.randn(4, 8), backend="gloo", device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        run_expert_parallel(moe, torch.randn(4, 8), backend="gloo", device="tpu")
