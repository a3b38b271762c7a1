"""benchmarks/gpu.sh works before a GPU is lent (its --smoke toy run on the CPU), and the quiet-measurement
helper of benchmarks/_timing.py marks or refuses timings taken on a busy machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
SECTIONS = ("curve", "jets", "curvature", "certify-mlp", "certify-resnet18", "surface")

sys.path.insert(0, str(ROOT / "benchmarks"))
import _timing  # noqa: E402

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")


def _run(args: list[str], out: Path, limit: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLI_BENCH_OUT": str(out), "PYTHON": sys.executable, "MLI_COMMIT": "test"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)


def _results(proc: subprocess.CompletedProcess, out: Path) -> str:
    files = list(out.glob("smoke-*.txt"))
    assert len(files) == 1, (files, proc.stdout[-2000:], proc.stderr[-2000:])
    assert f"results: {files[0]}" in proc.stdout
    return files[0].read_text()


@needs_bash
@pytest.mark.parametrize("mode", [[], ["--smoke"]])
def test_gpu_sh_lists_every_section(tmp_path, mode):
    proc = _run([*mode, "--list"], tmp_path, 30)
    assert proc.returncode == 0, proc.stderr
    for name in SECTIONS:
        assert f"  {name} " in proc.stdout
    assert ("--device cuda" in proc.stdout) == (not mode)
    assert not list(tmp_path.iterdir())  # --list runs nothing, writes nothing


@needs_bash
def test_gpu_sh_rejects_unknown_section(tmp_path):
    assert _run(["--smoke", "--only", "nope"], tmp_path, 30).returncode == 2


@needs_bash
def test_gpu_sh_smoke_one_section(tmp_path):
    proc = _run(["--smoke", "--only", "surface"], tmp_path, 120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = _results(proc, tmp_path)
    for needle in ("commit: test", "load average before:", "load average after:", "torch:", "== section surface", "== end surface: ok"):
        assert needle in text


@needs_bash
@pytest.mark.slow
def test_gpu_sh_smoke_every_section(tmp_path):
    proc = _run(["--smoke"], tmp_path, 1200)  # about 1 min quiet; minutes on a shared 2-core machine
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = _results(proc, tmp_path)
    for name in SECTIONS:
        assert f"== section {name} " in text
        assert f"== end {name}: ok" in text


def test_load_report_verdict(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 2.0, 3.0))
    r = _timing.load_report(cores=2)
    assert (r.one, r.five, r.quiet, r.verdict) == (0.9, 2.0, True, "quiet")
    monkeypatch.setattr(os, "getloadavg", lambda: (1.1, 0.2, 0.1))
    r = _timing.load_report(cores=2)
    assert not r.quiet and "NOT QUIET" in str(r)
    assert _timing.load_report(cores=4).quiet


def test_quiet_run_marks_or_refuses(monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    with _timing.quiet_run(require=False):
        print("figures")
    out = capsys.readouterr().out
    assert out.index("before the timings") < out.index("figures") < out.index("after the timings")
    assert "the figures above are NOT QUIET" in out
    with pytest.raises(SystemExit) as exc:
        with _timing.quiet_run(require=True):
            raise AssertionError("must not run")
    assert exc.value.code == 3
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
