"""`mlperf-resnet check`: the official compliance checker (mlperf-logging 4.1.68, run for real) on reference logs
written with the official mllog API, on deliberately broken copies of them, and on published logs (the repository's
own copies, tests/data/peer_logs). Also the command seam of the compliance package (issue 12)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import compliance
from compliance import ComplianceError, check, package, summarize
from compliance.check import check_log, check_logs, parse_checker_output, resnet_rulesets
from tests.reference_log import PEER_LOGS, edit_events, edit_log, write_reference_log, write_reference_logs

REPO = Path(__file__).resolve().parents[1]
NVIDIA = PEER_LOGS / "NVIDIA" / "dgxa100_ngc22.04_mxnet"


@pytest.fixture(scope="module")
def reference_logs(tmp_path_factory):
    return write_reference_logs(tmp_path_factory.mktemp("reference"))


def _epoch_nums(log: Path) -> dict:
    """{key: [epoch_num or first_epoch_num, ...]} of a log's epoch, block and eval events."""
    found = {}
    for line in log.read_text().splitlines():
        event = json.loads(line.split(":::MLLOG ", 1)[1])
        meta = event["metadata"]
        number = meta.get("epoch_num", meta.get("first_epoch_num"))
        if number is not None:
            found.setdefault(event["key"], []).append(number)
    return found


def test_resnet_rulesets_include_both_rounds_and_not_the_tools_default():
    rulesets = resnet_rulesets()
    assert {"2.0.0", "4.0.0"} <= set(rulesets) and "6.1.0" not in rulesets
    with pytest.raises(ComplianceError, match=r"^--ruleset 6\.1\.0: has no ResNet rules"):
        check_log("result_0.txt", ruleset="6.1.0")


@pytest.mark.parametrize("ruleset", ["4.0.0", "2.0.0"])
def test_reference_logs_pass_without_a_single_warning(reference_logs, ruleset):
    logs = sorted(reference_logs.glob("result_*.txt"))
    assert len(logs) == 5
    assert check_logs(logs, ruleset) == [(True, [])] * 5


def test_reference_logs_number_completed_epochs_like_the_published_ones(reference_logs):
    ours = _epoch_nums(reference_logs / "result_0.txt")  # 16 epochs, evaluated every 4
    assert ours["epoch_start"] == list(range(16)) and ours["epoch_stop"] == list(range(1, 17))
    for key in ("eval_start", "eval_stop", "eval_accuracy", "block_stop"):
        assert ours[key] == [4, 8, 12, 16], key
    assert ours["block_start"] == [0, 4, 8, 12]
    mosaic = _epoch_nums(PEER_LOGS / "MosaicML/8xA100_80GB-methods/result_0.txt")
    assert mosaic["epoch_start"][:2] == [0, 1] and mosaic["epoch_stop"][:2] == [1, 2]
    assert mosaic["eval_accuracy"] == list(range(3, 28, 3))  # after 3, 6, ..., 27 completed epochs
    assert mosaic["block_stop"] == mosaic["eval_accuracy"]
    nvidia = _epoch_nums(NVIDIA / "result_0.txt")  # numbered from 1: epoch k stops with k completed
    assert nvidia["epoch_start"][0] == nvidia["epoch_stop"][0] == 1 and nvidia["eval_accuracy"][-1] == 35
    # Composer's cadence with a last epoch that is no multiple of the interval: it is evaluated too
    odd = _epoch_nums(write_reference_log(reference_logs.parent / "odd.txt", seed=1, minutes=1.0, epochs=10,
                                          eval_every_epochs=4))
    assert odd["eval_accuracy"] == [4, 8, 10] and odd["block_start"] == [0, 4, 8]


@pytest.mark.parametrize("ruleset", ["4.0.0", "2.0.0"])
@pytest.mark.parametrize("broken, expected", [
    # top-1 logged as a percentage: the open ResNet rules want at least one eval_accuracy below 1.0
    (dict(replace=('"key": "eval_accuracy", "value": 0.', '"key": "eval_accuracy", "value": 7')),
     "Failed checks for eval_accuracy : v['value'] < 1.0"),
    (dict(drop_key="run_stop"), "Required EXACTLY_ONE occurrence of 'run_stop' but found 0"),
    (dict(drop_key="cache_clear"), "Required AT_LEAST_ONE occurrence of 'cache_clear' but found 0"),
    (dict(drop_key="submission_benchmark"), "Required EXACTLY_ONE occurrence of 'submission_benchmark'"),
    # the system file's 4.x availability name is not a log value
    (dict(replace=('"value": "onprem"', '"value": "Available on-premise"')),
     "CHECK for 'submission_status' failed in line 6: failed test: v['value'] in"),
    (dict(replace=('"first_epoch_num": 0, ', '')), "CHECK for 'block_start' failed"),
    # a stub: a run that died right after claiming its log
    (dict(keep_lines=7), "Required EXACTLY_ONE occurrence of 'run_start' but found 0"),
])
def test_broken_logs_fail_with_the_rule_they_break(reference_logs, tmp_path, ruleset, broken, expected):
    log = edit_log(reference_logs / "result_0.txt", tmp_path / "result_0.txt", **broken)
    passed, problems = check_log(log, ruleset)
    assert not passed
    assert any(expected in p for p in problems), problems


def test_a_repeated_run_start_is_a_warning_but_a_second_init_fails(reference_logs, tmp_path):
    text = (reference_logs / "result_0.txt").read_text().splitlines(keepends=True)
    run_start = next(line for line in text if '"key": "run_start"' in line)
    log = tmp_path / "result_0.txt"
    log.write_text("".join(text) + run_start)
    passed, problems = check_log(log)
    assert passed and problems == ["Required EXACTLY_ONE occurrence of 'run_start' but found 2"]
    # appending a resumed run's init to the same file breaks the init_start -> init_stop -> run_start order
    log.write_text("".join(text) + "".join(text[:3]))
    passed, problems = check_log(log)
    assert not passed and any("CHECK for 'init_start' failed" in p for p in problems), problems


def test_published_logs_nvidia_aborted_run_fails_the_closed_target_rule():
    verdicts = check_logs(sorted(NVIDIA.glob("result_*.txt")))
    assert [passed for passed, _ in verdicts] == [True, True, False, True, True]
    assert verdicts[2][1] == ["Failed checks for eval_accuracy : v['value'] >= 0.7590 and v['value'] < 1.0"]


def test_parse_checker_output_condenses_messages_and_parse_errors():
    output = "\n".join([
        "INFO - Running compliance on file: x",
        "WARNING -  Found parsing errors:",
        "WARNING -   :::MLLOG {broken",
        "WARNING -    ^^  Expecting property name",
        "WARNING -  Log lines had parsing errors.",
        "------------------------------",
        "CHECK for 'run_stop' failed in line 12:",
        ':::MLLOG {"key": "run_stop"}',
        "failed test: 'status' in v['metadata']",
        "current context[s]={",
        "}",
        "ERROR - FAILED",
    ])
    assert parse_checker_output(output) == [
        "parse error: Expecting property name",
        "Log lines had parsing errors.",
        "CHECK for 'run_stop' failed in line 12: failed test: 'status' in v['metadata']",
    ]


def test_cli_one_line_per_log_nonzero_on_failure_and_nothing_left_in_cwd(reference_logs, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compliance.main(check, [str(reference_logs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS"] * 5
    bad = edit_log(reference_logs / "result_1.txt", tmp_path / "result_9.txt", drop_key="run_start")
    assert compliance.main(check, ["--ruleset", "2.0.0", str(reference_logs / "result_0.txt"), str(bad)]) == 1
    ok, failed = capsys.readouterr().out.splitlines()
    assert ok.startswith("PASS ") and failed.startswith(f"FAIL {bad}: ") and "'run_start'" in failed
    assert list(tmp_path.iterdir()) == [bad]  # the checker's compliance_checker.log went to a scratch folder


@pytest.mark.parametrize("argv, code, stdout, stderr", [
    # (arguments, exit code, stdout lines, stderr line); {d}: a folder without logs
    (["{d}"], 1, [], "mlperf-resnet: error: {d}: no result_*.txt in these folders; pass log files or folders "
                     "that hold result_*.txt"),
    (["{d}/missing.txt"], 1, ["FAIL {d}/missing.txt: no such file"], None),
    (["{d}/folder"], 1, [], "mlperf-resnet: error: {d}/folder: no result_*.txt in these folders; pass log files "
                            "or folders that hold result_*.txt"),  # a folder named like a log is not one
    (["{d}/missing.txt", "--target", "0"], 1, [], "mlperf-resnet: error: --target 0.0: not a top-1 fraction in "
                                                  "(0, 1]; ResNet's quality target is 0.759"),
])
def test_cli_bad_inputs_table(tmp_path, capsys, argv, code, stdout, stderr):
    (tmp_path / "folder" / "result_0.txt").mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    fill = lambda text: text.replace("{d}", str(tmp_path))  # noqa: E731
    assert compliance.main(check, [fill(a) for a in argv]) == code
    out, err = capsys.readouterr()
    assert out.splitlines() == [fill(line) for line in stdout]
    assert err.splitlines() == ([fill(stderr)] if stderr else [])
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    assert check_log(tmp_path / "folder" / "result_0.txt") == (False, [f"{tmp_path}/folder/result_0.txt: not a file"])


def test_cli_gives_the_official_verdict_and_ours_and_fails_on_either(tmp_path):
    """`python -m compliance.check` as a user runs it, on a folder of logs the official checker passes (all but
    the dangling link) and only some of which `package` takes."""
    logs = tmp_path / "logs"
    write_reference_log(logs / "result_0.txt", seed=0, minutes=1.0)
    write_reference_log(logs / "result_1.txt", seed=1, minutes=1.0, final_accuracy=0.41, target=0.4)
    write_reference_log(logs / "result_2.txt", seed=2, minutes=1.0, converge=False)
    edit_log(write_reference_log(tmp_path / "a.txt", seed=3, minutes=1.0), logs / "result_3.txt",
             replace=('"value": "resnet"', '"value": "bert"'))  # the open BERT rules pass it
    edit_events(write_reference_log(tmp_path / "b.txt", seed=4, minutes=1.0), logs / "result_4.txt",
                lambda e: e[:18] + e[17:])  # run_start twice
    (logs / "result_5.txt").symlink_to(tmp_path / "gone.txt")

    def check_cli(*args):
        return subprocess.run([sys.executable, "-m", "compliance.check", *map(str, args)], capture_output=True,
                              text=True, cwd=REPO, timeout=600)

    proc = check_cli(logs)
    official = "official 4.0.0: passed"
    assert proc.returncode == 1 and proc.stderr == ""
    assert proc.stdout.splitlines() == [
        f"PASS {logs}/result_0.txt: {official}; counts for a score: yes",
        f"FAIL {logs}/result_1.txt: {official}; counts for a score: no — success at top-1 0.4100 is not above the "
        "target 0.759",
        f"PASS {logs}/result_2.txt: {official}; counts for a score: no — run_stop status aborted (one such run of "
        "five is tolerated)",
        f"FAIL {logs}/result_3.txt: {official}; counts for a score: no — submission_benchmark 'bert', not 'resnet': "
        "not a ResNet log",
        f"FAIL {logs}/result_4.txt: {official} (warnings: Required EXACTLY_ONE occurrence of 'run_start' but found "
        "2); counts for a score: no — more than one run_start (lines 18, 19)",
        f"FAIL {logs}/result_5.txt: a symlink to {tmp_path}/gone.txt, which does not exist; restore the log or "
        "remove the link",
    ]
    assert not (tmp_path / "gone.txt").exists()
    # summarize's --target: another target counts, and says it is no submission score
    proc = check_cli(logs / "result_0.txt", logs / "result_1.txt", "--target", "0.4")
    assert proc.returncode == 0 and proc.stderr == ""
    yes = "counts for a score: yes, at target 0.4 (not the ResNet quality target 0.759: not a submission score)"
    assert proc.stdout.splitlines() == [f"PASS {logs}/result_{i}.txt: {official}; {yes}" for i in (0, 1)]


def test_reference_log_after_stop_and_aborted_variants_still_pass(tmp_path):
    after = write_reference_log(tmp_path / "a.txt", seed=1, minutes=2.0, after_stop=True)
    aborted = write_reference_log(tmp_path / "b.txt", seed=2, minutes=2.0, converge=False)
    # the open rules do not look at run_stop's status: an aborted open run is compliant (see summarize)
    assert check_logs([after, aborted]) == [(True, []), (True, [])]


# ---- the command seam (issue 12) ------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [check, summarize, package])
def test_command_modules_follow_the_seam(module):
    assert isinstance(module.NAME, str) and isinstance(module.HELP, str) and module.__doc__
    assert callable(module.add_arguments) and callable(module.run)
    assert not hasattr(module, "register") and not hasattr(module, "standalone")
    source = Path(module.__file__).read_text()
    assert "SystemExit" not in source and "import resnet" not in source and "from resnet" not in source
    assert source.rstrip().endswith("sys.exit(compliance.main(sys.modules[__name__]))")


def test_compliance_imports_nothing_from_resnet_and_runs_standalone(tmp_path):
    probe = ("import sys, compliance.check, compliance.summarize, compliance.package; "
             "print(sorted(m for m in sys.modules if m == 'resnet' or m.startswith('resnet.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    assert not (REPO / "compliance" / "reference_log.py").exists()  # a test fixture, not shipped code
    proc = subprocess.run([sys.executable, "-m", "compliance.summarize", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (f"mlperf-resnet: error: {tmp_path}: no result_*.txt in it or below it; pass a folder of "
                           "result logs or a submission tree\n")


@pytest.mark.parametrize("module, argv", [
    (check, ["{d}"]), (summarize, ["{d}"]),
    (package, ["--org", "Org", "--system", "box", "--results", "{d}", "--out", "{d}/out"]),
])
def test_ruleset_and_target_are_one_argument_helper(tmp_path, capsys, module, argv):
    """check, summarize and package take --ruleset and --target alike, and refuse a bad target in one line."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert actions["ruleset"].choices == resnet_rulesets() and actions["ruleset"].default == "4.0.0"
    assert actions["target"].type is float and actions["target"].default == 0.759
    assert compliance.main(module, [a.replace("{d}", str(tmp_path)) for a in argv] + ["--target", "75.9"]) == 1
    assert capsys.readouterr() == ("", "mlperf-resnet: error: --target 75.9: not a top-1 fraction in (0, 1]; "
                                       "ResNet's quality target is 0.759\n")
    assert list(tmp_path.iterdir()) == []
