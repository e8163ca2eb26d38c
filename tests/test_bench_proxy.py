"""bench.proxy --add-runs: earlier runs join the table and the plot only when they used today's config_CPU.sh
flags and other seeds. (The runs themselves take minutes each: `make benchmark`'s tests cover the trainer.)"""
import json
import subprocess
import sys

import pytest

from bench.proxy import config_flags
from tests.conftest import REPO

pytest.importorskip("matplotlib")


def _proxy_json(path, seeds, minutes, flags=None):
    """A proxy.json as bench.proxy writes it: Mild and the Baseline, one run per seed."""
    runs = [dict(variant=v, seed=seed, status="success", minutes=m * scale, exit_code=0, epoch_at_stop=18,
                 final_top1=0.8, evals=[dict(minutes=m * scale / 2, epoch=9, top1=0.5),
                                        dict(minutes=m * scale, epoch=18, top1=0.8)])
            for seed, m in zip(seeds, minutes) for v, scale in (("mild", 1), ("baseline", 2))]
    path.write_text(json.dumps(dict(config_flags=config_flags() if flags is None else flags, runs=runs)))
    return path


def _proxy(*args):
    return subprocess.run([sys.executable, "-m", "bench.proxy", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_add_runs_tabulates_earlier_runs_together(tmp_path):
    a = _proxy_json(tmp_path / "a.json", [1, 2], [0.5, 0.7])
    b = _proxy_json(tmp_path / "b.json", [3, 4], [0.6, 0.6])
    out = _proxy(tmp_path / "out", "--variants", "mild", "baseline", "--seeds", "--add-runs", a, b)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "out" / "proxy.json").read_text())
    assert result["seeds"] == [1, 2, 3, 4] and len(result["runs"]) == 8
    mild, baseline = result["table"]["mild"], result["table"]["baseline"]
    assert mild["reached"] == mild["runs"] == 4 and mild["minutes"]["mean"] == pytest.approx(0.6)
    assert baseline["time_vs_mild"] == pytest.approx(2.0)
    assert (tmp_path / "out" / "proxy.png").stat().st_size > 10_000
    assert "Mild is 2.00x faster than the Baseline" in out.stdout
    assert result["metadata"]["git_commit"] and result["metadata"]["versions"]["torch"]   # bench.common.run_metadata


@pytest.mark.parametrize("case", ["other flags", "same seed twice", "a seed about to run", "not a proxy.json",
                                  "nothing to do"])
def test_add_runs_refusals(tmp_path, case):
    a = _proxy_json(tmp_path / "a.json", [1, 2], [0.5, 0.7])
    args, expected = {
        "other flags": (["--seeds", "--add-runs", _proxy_json(tmp_path / "c.json", [3], [0.6], ["--epochs", "9"])],
                        "other config_CPU.sh flags"),
        "same seed twice": (["--seeds", "--add-runs", a, _proxy_json(tmp_path / "b.json", [2], [0.6])],
                            "seed 2 would be counted twice"),
        "a seed about to run": (["--seeds", "1", "--add-runs", a], "seed 1 would be counted twice"),
        "not a proxy.json": (["--seeds", "--add-runs", tmp_path], "not a proxy.json"),
        "nothing to do": (["--seeds"], "nothing to do"),
    }[case]
    out = _proxy(tmp_path / "out", "--variants", "mild", "baseline", *args)
    assert out.returncode == 2 and expected in out.stderr.splitlines()[-1], out.stderr
    assert not (tmp_path / "out").exists()
