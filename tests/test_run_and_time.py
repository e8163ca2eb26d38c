"""run_and_time.sh, the MLPerf entry point, end to end on the CPU: five seeds, logs that the official checker
accepts, the summary, a failing seed that does not stop the others, and the dry run."""
import re

from compliance.check import check_log
from compliance.summarize import summarize_dir
from tests.conftest import run_and_time
from tests.test_train import events, run_stop


def test_five_seeds_compliant_logs_and_summary(cpu_benchmark):
    out, results = cpu_benchmark
    assert out.returncode == 0, out.stderr[-4000:]
    logs = sorted(results.glob("result_*.txt"))
    assert [p.name for p in logs] == [f"result_{i}.txt" for i in range(5)]
    seeds = [next(e["value"] for e in events(p) if e["key"] == "seed") for p in logs]
    assert seeds == [100, 101, 102, 103, 104]
    for log in logs:
        assert run_stop(log)["metadata"]["status"] == "success"
        assert next(e for e in events(log) if e["key"] == "cache_clear")["value"] in (True, False)
        for ruleset in ("4.0.0", "2.0.0"):
            assert check_log(log, ruleset)[0], (log, ruleset)
    assert out.stdout.count("PASS") == 5                      # the official checker, once per new log
    summary = summarize_dir(results)
    assert summary["valid"] and len(summary["runs_minutes"]) == 5
    middle = sorted(summary["runs_minutes"])[1:4]
    assert abs(summary["score_minutes"] - sum(middle) / 3) < 1e-9
    assert re.search(r"score", out.stdout, re.I)


def test_a_failing_seed_is_counted_and_the_others_still_run(ffcv_data, tmp_path):
    results = tmp_path / "CPU" / "resnet"
    results.mkdir(parents=True)
    earlier = results / "result_0.txt"
    earlier.write_text("an earlier run's log\n")
    # The third experiment's seed is 2^31, outside the valid range: that experiment fails, the rest go on.
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "3", "SEED": str(2**31 - 2)})
    assert earlier.read_text() == "an earlier run's log\n"
    assert "--seed (SEED): 2147483648 is outside" in out.stderr
    assert "3 experiments, 1 did not reach the target or failed" in out.stderr
    new = sorted(p.name for p in results.glob("result_*.txt"))
    assert new == ["result_0.txt", "result_1.txt", "result_2.txt"]
    assert all(run_stop(results / n)["metadata"]["status"] == "success" for n in new[1:])
    assert out.returncode == 1          # fewer than five runs (and a broken earlier log): no valid result


def test_dry_run_prints_the_launch_command(ffcv_data, tmp_path):
    out = run_and_time({"DATADIR": str(ffcv_data), "LOGDIR": str(tmp_path), "NEXP": "2", "SEED": "5",
                        "DRY_RUN": "1", "DGXNGPU": "8", "BATCHSIZE": "256", "PRECISION": "fp16"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("torchrun --nproc_per_node=8 --nnodes=1 --standalone -m "
                                                   "resnet.train") for line in lines)
    assert "--seed 5 " in lines[0] and "--seed 6 " in lines[1] and "--batch-size 256" in lines[0]
    assert not (tmp_path / "CPU" / "resnet").exists() or not list((tmp_path / "CPU" / "resnet").iterdir())
