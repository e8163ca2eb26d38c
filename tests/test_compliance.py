"""`mlperf-resnet check`: the official compliance checker (mlperf-logging 4.1.68, run for real) on reference logs
written with the official mllog API, on deliberately broken copies of them, and on published logs."""
from pathlib import Path

import pytest

from compliance.check import check_log, check_logs, parse_checker_output, resnet_rulesets
from compliance.reference_log import write_reference_log, write_reference_logs
from resnet.cli import main

PEER_LOGS = Path(__file__).resolve().parents[1].parent / "shared" / "peer_logs" / "v2.0"
NVIDIA = PEER_LOGS / "NVIDIA" / "dgxa100_ngc22.04_mxnet"


@pytest.fixture(scope="module")
def reference_logs(tmp_path_factory):
    return write_reference_logs(tmp_path_factory.mktemp("reference"))


def _edit(src: Path, dst: Path, replace=None, drop_key=None) -> Path:
    """A copy of a log with one key's lines dropped or one string replaced."""
    lines = src.read_text().splitlines(keepends=True)
    if drop_key:
        lines = [line for line in lines if f'"key": "{drop_key}"' not in line]
    text = "".join(lines)
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    dst.write_text(text)
    return dst


def test_resnet_rulesets_include_both_rounds_and_not_the_tools_default():
    rulesets = resnet_rulesets()
    assert {"2.0.0", "4.0.0"} <= set(rulesets) and "6.1.0" not in rulesets
    with pytest.raises(ValueError, match="no ResNet rules"):
        check_log("result_0.txt", ruleset="6.1.0")


@pytest.mark.parametrize("ruleset", ["4.0.0", "2.0.0"])
def test_reference_logs_pass_without_a_single_warning(reference_logs, ruleset):
    logs = sorted(reference_logs.glob("result_*.txt"))
    assert len(logs) == 5
    assert check_logs(logs, ruleset) == [(True, [])] * 5


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
])
def test_broken_logs_fail_with_the_rule_they_break(reference_logs, tmp_path, ruleset, broken, expected):
    log = _edit(reference_logs / "result_0.txt", tmp_path / "result_0.txt", **broken)
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
    assert main(["check", str(reference_logs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS"] * 5
    bad = _edit(reference_logs / "result_1.txt", tmp_path / "result_9.txt", drop_key="run_start")
    assert main(["check", "--ruleset", "2.0.0", str(reference_logs / "result_0.txt"), str(bad)]) == 1
    ok, failed = capsys.readouterr().out.splitlines()
    assert ok.startswith("PASS ") and failed.startswith(f"FAIL {bad}: ") and "'run_start'" in failed
    assert list(tmp_path.iterdir()) == [bad]  # the checker's compliance_checker.log went to a scratch folder


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^mlperf-resnet check: error: .*no result_\*\.txt"):
        main(["check", str(tmp_path)])
    passed, problems = check_log(tmp_path / "missing.txt")
    assert not passed and problems == [f"{tmp_path / 'missing.txt'}: no such file"]


def test_reference_log_after_stop_and_aborted_variants_still_pass(tmp_path):
    after = write_reference_log(tmp_path / "a.txt", seed=1, minutes=2.0, after_stop=True)
    aborted = write_reference_log(tmp_path / "b.txt", seed=2, minutes=2.0, converge=False)
    # the open rules do not look at run_stop's status: an aborted open run is compliant (see summarize)
    assert check_logs([after, aborted]) == [(True, []), (True, [])]
