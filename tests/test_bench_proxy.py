"""bench.proxy --add-runs: earlier runs join the table and the plot only when they used today's config_CPU.sh
flags and other seeds; --composer's part that runs without Composer's venv. (The runs themselves take minutes each:
`make benchmark`'s tests cover the trainer.)"""
import json
import subprocess
import sys

import pytest

from bench import proxy
from bench.proxy import config_flags
from tests.conftest import REPO


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
    pytest.importorskip("matplotlib")
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


# --composer: what runs without Composer's venv (the runs themselves need it: BENCHMARKS.md "Composer's Trainer side
# by side"; the suite never downloads Composer).

@pytest.mark.parametrize("extra", [["--frontier", "1"], ["--variants", "mild"], ["--add-runs", "x.json"]])
def test_composer_refuses_the_other_modes(tmp_path, extra):
    out = _proxy(tmp_path / "out", "--composer", "--seeds", "1", *extra)
    assert out.returncode == 2 and "--composer runs Mild on both trainers" in out.stderr.splitlines()[-1], out.stderr
    assert not (tmp_path / "out").exists()


def test_composer_venv_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = _proxy(tmp_path / "out", "--composer", "--seeds", "1", "--composer-venv", tmp_path / "file" / "venv")
    assert out.returncode != 0 and not (tmp_path / "out").exists()
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
    assert out.stderr.startswith(f"error: --composer: could not make {tmp_path / 'file' / 'venv'} (-m venv exit 1")


def test_composer_venv_is_made_once_and_reused(tmp_path):
    (tmp_path / "composer-pins.txt").write_text("\n".join(proxy.COMPOSER_PINS) + "\n")
    assert proxy.composer_python(tmp_path) == tmp_path / "bin" / "python"   # reused: nothing run, nothing printed


def test_a_composer_run_stops_at_the_first_evaluation_above_the_target():
    evals = [dict(minutes=m, epoch=e, top1=t) for m, e, t in ((0.5, 3, 0.3), (1.0, 6, 0.76), (1.5, 9, 0.9))]
    run = dict(variant="composer-mild", seed=1, **proxy.peer_run(evals, 0.759, 1280))
    assert (run["status"], run["minutes"], run["epoch_at_stop"], run["final_top1"]) == ("success", 1.0, 6, 0.76)
    assert run["evals"] == evals[:2]
    missed = dict(proxy.peer_run(evals, 0.95, 1280), variant="composer-mild", seed=2)
    assert (missed["status"], missed["minutes"], missed["epoch_at_stop"]) == ("aborted", 1.5, 9)
    row = proxy.summarise([run, missed], ["composer-mild"])["composer-mild"]
    assert (row["reached"], row["runs"]) == (1, 2)
    assert row["img_per_s"]["mean"] == pytest.approx(6 * 1280 / 60)      # images trained / second, reached runs only


def test_our_runs_images_per_second_come_from_their_log(tmp_path):
    """Ours: epochs at the stop x the images an epoch trains (train_samples in whole global batches) / seconds."""
    from tests.reference_log import IMAGENET_TRAIN_SAMPLES, write_reference_log
    run = dict(variant="mild", seed=1, **proxy.read_log(write_reference_log(tmp_path / "log.txt", seed=1, minutes=10)))
    assert run["images_per_epoch"] == IMAGENET_TRAIN_SAMPLES // 1024 * 1024
    assert proxy.summarise([run], ["mild"])["mild"]["img_per_s"]["mean"] == pytest.approx(
        run["epoch_at_stop"] * run["images_per_epoch"] / 600)


def test_our_methods_equal_composers_where_recipe_md_says_so():
    """Runs only where Composer is installed (its venv, with pytest added: `.venv-composer/bin/python -m pytest`);
    the findings, and the differences RECIPE.md 12.6 explains, are what --composer records."""
    pytest.importorskip("composer")
    from tests.composer_functional import functional_checks
    found = functional_checks()
    assert found["colout_batch"] == found["mixup_batch"] == found["stochastic_depth_rates"] == 0.0
    assert found["apply_blurpool"] == found["label_smoothed_bce"] == 0.0 and found["resize_sides_that_differ"] == [30]
    assert found["stochastic_depth_eval"] > 1e-3 > 1e-5 > found["stochastic_depth_eval_branch_scaled_as_composer"]
    assert found["sam_step"] < 1e-5
    assert found["randaugment_ours"]["mean_abs_change"] < found["randaugment_composer"]["mean_abs_change"]


def test_a_composer_run_without_our_runs_recipe_is_a_failed_run_not_a_crash(tmp_path):
    run = proxy.composer_run(tmp_path / "no-python", "composer-mild", 7, config_flags(), {}, tmp_path)
    assert run["status"] == "failed" and run["wall_s"] == 0.0
    assert run["error"] == "mild-torchvision-seed7.txt logged no recipe to run"
