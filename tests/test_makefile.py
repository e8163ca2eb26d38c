"""The Makefile's plan (`make -n`), on a copy of it beside stand-in files: what `make benchmark` would do."""
import os
import shutil
import subprocess

from tests.conftest import REPO


def test_a_reinstall_keeps_the_data_set_made(tmp_path):
    """A pull that changes pyproject.toml makes `make benchmark` reinstall the venv, and run on the data set it
    made before (remaking it would refuse the existing folder and end the benchmark)."""
    shutil.copy(REPO / "Makefile", tmp_path)
    made = [tmp_path / p for p in (".venv/.installed", "data/proxy-synth/.done", "data/proxy-ffcv/.done")]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    (tmp_path / "pyproject.toml").touch()
    later = made[-1].stat().st_mtime + 60
    os.utime(tmp_path / "pyproject.toml", (later, later))
    plan = subprocess.run(["make", "-n", "benchmark"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "pip install -q -e" in plan, plan                              # the venv is remade
    assert "mlperf-resnet synth" not in plan and "mlperf-resnet prepare" not in plan, plan
    assert "./run_and_time.sh" in plan, plan
