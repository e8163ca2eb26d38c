"""`mlperf-resnet package`: a submission tree that the official package checker and result summarizer accept, and
the sets, names and folders it refuses before writing anything (issue 13).

The tree is built from result logs: the reference logs (official mllog API) always, and the logs of a real CPU
training run when tests/conftest.py provides the `cpu_result_logs` fixture (a folder of result_*.txt; it needs
the trainer, so it fails while the trainer does).
"""
import csv as csv_module
import json

import pytest

import compliance
from compliance import ComplianceErrors, package
from compliance.check import run_official_tool
from compliance.package import (REPO_ROOT, STATUS, SYSTEM_FIELDS, SYSTEMS_DIR, apply_overrides, build_package,
                                code_files, package_check)
from compliance.summarize import summarize_dir
from tests.reference_log import edit_events, edit_log, write_reference_log, write_reference_logs

ORG, SYSTEM = "TestOrg", "cpu_box"


def _snapshot(folder) -> dict:
    """Every path below `folder` with its bytes (None for a folder): to show that nothing was written."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def reference_result_logs(tmp_path_factory):
    return write_reference_logs(tmp_path_factory.mktemp("logs"), minutes=(10.0, 11.0, 9.5, 12.0, 10.5),
                                org=ORG, platform=SYSTEM)


# (fixture, org, system, target): the org and system the logs name, the target their runs used
SOURCES = {"reference_result_logs": (ORG, SYSTEM, 0.759), "cpu_result_logs": ("tests", "CPU", 0.1)}


@pytest.fixture(params=list(SOURCES))
def result_logs(request):
    """(folder of result_*.txt, org, system, target) to package; add a fixture's name to SOURCES for others."""
    try:
        return (request.getfixturevalue(request.param), *SOURCES[request.param])
    except pytest.FixtureLookupError:
        pytest.skip(f"no {request.param} fixture (tests/conftest.py) yet")


def test_package_passes_the_official_checkers_and_summarizer(result_logs, tmp_path):
    logs_dir, org_name, system, target = result_logs
    org = build_package(org_name, system, logs_dir, tmp_path / "out", impl="pytorch", target=target)
    assert org == tmp_path / "out" / org_name and not list((tmp_path / "out").glob(f".{org_name}*"))
    for ruleset in ("4.0.0", "2.0.0"):
        assert package_check(org, ruleset) == (True, []), ruleset

    logs = sorted(p.name for p in logs_dir.glob("result_*.txt"))
    assert sorted(p.name for p in (org / f"results/{system}/resnet").iterdir()) == logs
    desc = json.loads((org / f"systems/{system}.json").read_text())
    assert set(SYSTEM_FIELDS) <= set(desc) and desc["status"] in STATUS.values()
    assert (desc["submitter"], desc["system_name"], desc["division"]) == (org_name, system, "open")
    assert int(desc["host_processor_vcpu_count"]) >= 1 and desc["framework"].startswith("PyTorch ")
    impl = org / "benchmarks/resnet/implementations/pytorch"
    for wanted in ("pyproject.toml", "resnet/__init__.py", "resnet/cli.py", "compliance/package.py",
                   "tests/reference_log.py", "tests/data/peer_logs/README.md"):
        assert (impl / wanted).is_file(), wanted
    assert not (impl / "compliance/reference_log.py").exists()  # the fixture is not part of compliance/
    assert (impl / "resnet/data/__init__.py").is_file()  # a package named data is code, ./data is not
    assert not {".git", ".venv", "data", "results"} & {p.name for p in impl.iterdir()}
    assert not list(impl.rglob("__pycache__"))

    # the official result_summarizer reads the tree, and gets our score where every run succeeded (it also times
    # an open run that stopped with status aborted, which we count as not converged)
    csv = tmp_path / "summary.csv"
    assert run_official_tool("result_summarizer", org, "training", "4.0.0", "--csv", csv).returncode == 0
    (official,) = list(csv_module.DictReader(csv.read_text().splitlines()))
    assert (official["availability"], official["accelerators_count"]) == (desc["status"], desc["accelerators_per_node"])
    ours = summarize_dir(org / f"results/{system}/resnet", target=target)
    if all(run["status"] == "success" for run in ours["runs"]):
        assert ours["valid"] and float(official["resnet"]) == pytest.approx(ours["score_minutes"], rel=1e-12)


def test_what_the_package_checker_lets_through_and_what_it_does_not(reference_result_logs, tmp_path):
    org = build_package(ORG, SYSTEM, reference_result_logs, tmp_path)
    system_file = org / f"systems/{SYSTEM}.json"
    desc = json.loads(system_file.read_text())
    # a log's short status is not a 4.x availability; the 2.0.0 rules did not look at it
    system_file.write_text(json.dumps(desc | {"status": "onprem"}))
    passed, problems = package_check(org, "4.0.0")
    assert not passed and any("Field status contains a non valid value: onprem" in p for p in problems)
    assert package_check(org, "2.0.0") == (True, [])
    system_file.write_text(json.dumps(desc))
    # a benchmark folder with another name is skipped by every check; the tool still says NO ERRORS
    (org / f"results/{SYSTEM}/resnet").rename(org / f"results/{SYSTEM}/resnet50")
    passed, problems = package_check(org)
    assert not passed and problems == ["Skipping benchmark: resnet50"]
    (org / f"results/{SYSTEM}/resnet50").rename(org / f"results/{SYSTEM}/resnet")
    # ResNet takes exactly 5 logs
    (org / f"results/{SYSTEM}/resnet/result_4.txt").unlink()
    passed, problems = package_check(org)
    assert not passed and any("found 4, expected 5" in p for p in problems)


def test_cli_overrides_and_the_package_checker(reference_result_logs, tmp_path, capsys):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"cooling": "air", "other_software_stack": {"cuda": "12.4"}}))
    args = ["--org", ORG, "--system", SYSTEM, "--results", str(reference_result_logs),
            "--out", str(tmp_path / "out"), "--status", "cloud", "--system-json", str(overrides),
            "--set", "host_storage_type=NVMe SSD", "--set", "other_software_stack.driver=550"]
    assert compliance.main(package, args) == 0
    out, err = capsys.readouterr()
    assert out == f"packaged {tmp_path / 'out' / ORG}\npackage_checker training 4.0.0: NO ERRORS\n" and err == ""
    desc = json.loads((tmp_path / f"out/{ORG}/systems/{SYSTEM}.json").read_text())
    assert (desc["status"], desc["cooling"], desc["host_storage_type"]) == ("Available cloud", "air", "NVMe SSD")
    assert desc["other_software_stack"]["cuda"] == "12.4" and desc["other_software_stack"]["driver"] == "550"
    assert "torch" in desc["other_software_stack"]  # merged into the detected table, not replacing it


def test_a_platform_other_than_the_system_is_reported_not_refused(reference_result_logs, tmp_path, capsys):
    # NVIDIA's published logs say submission_platform "1xNVIDIA DGX A100" for the system dgxa100_ngc22.04_mxnet
    argv = ["--org", ORG, "--system", "other_box", "--results", str(reference_result_logs), "--out", str(tmp_path),
            "--no-check"]
    assert compliance.main(package, argv) == 0
    out, err = capsys.readouterr()
    assert out == f"packaged {tmp_path / ORG}\n"
    assert err == ("mlperf-resnet package: warning: the logs say submission_platform 'cpu_box', the package --system "
                   "'other_box'; the results go under results/other_box/ and systems/other_box.json\n")


def _set(folder, **changes):
    """Five reference logs of TestOrg's cpu_box in `folder`, with `changes` applied to some of them."""
    return write_reference_logs(folder, org=ORG, platform=SYSTEM, **changes)


def _bad_sets(root):
    """{case: folder of logs} for the refusal table below (each built on demand)."""
    def stub(folder):  # four good runs and a run that died right after claiming its log
        logs = _set(folder)
        edit_log(logs / "result_4.txt", logs / "result_4.txt", keep_lines=7)
        return logs

    def edited(folder):  # an aborted run's log edited to say success
        logs = _set(folder)
        write_reference_log(logs / "result_2.txt", seed=1002, minutes=9.5, converge=False, final_accuracy=0.09,
                            org=ORG, platform=SYSTEM)
        edit_log(logs / "result_2.txt", logs / "result_2.txt", replace=('"status": "aborted"', '"status": "success"'))
        return logs

    def other_benchmark(folder):
        logs = _set(folder)
        edit_log(logs / "result_0.txt", logs / "result_0.txt", replace=('"value": "resnet"', '"value": "bert"'))
        return logs

    def mixed_platforms(folder):
        logs = _set(folder)
        write_reference_log(logs / "result_3.txt", seed=1003, minutes=12.0, org=ORG, platform="other_box")
        return logs

    def timed_backwards(folder):  # run_stop moved a minute before run_start: timed at -1 min before issue 21
        logs = _set(folder)
        return edit_events(logs / "result_2.txt", logs / "result_2.txt", lambda e: [
            {**x, "time_ms": e[17]["time_ms"] - 60_000} if x["key"] == "run_stop" else x for x in e]).parent

    def resumed_start_moved(folder):  # issue 31: a resumed run_start timed 1 s before run_stop was packaged
        logs = _set(folder)

        def move(e):
            start, stop = e[17], next(x for x in e if x["key"] == "run_stop")
            e[17] = {**start, "time_ms": stop["time_ms"] - 1000, "metadata": {"resumed_from_epoch": 0}}
            return e
        return edit_events(logs / "result_2.txt", logs / "result_2.txt", move).parent

    def aborted_and_edited(folder):  # the one tolerated miss, but with a second seed: no longer an honest miss
        logs = _set(folder, converge=[True, False, True, True, True])
        return edit_events(logs / "result_1.txt", logs / "result_1.txt",
                           lambda e: e[:8] + [{**e[7], "value": 4242}] + e[8:]).parent

    def dangling_link(folder):  # a log moved away, its link left behind
        logs = _set(folder)
        (logs / "result_5.txt").symlink_to(folder / "moved.txt")
        return logs

    return {
        "stub": stub,
        "edited": edited,
        "typo_target": lambda f: _set(f, final_accuracy=0.0912, target=0.0759),
        "four_logs": lambda f: _set(f, minutes=(10.0, 11.0, 9.5, 12.0)),
        "two_aborted": lambda f: _set(f, converge=[True, False, True, False, True]),
        "other_org": lambda f: write_reference_logs(f, org="ExampleOrg", platform=SYSTEM),
        "closed": lambda f: _set(f, division="closed"),
        "other_benchmark": other_benchmark,
        "mixed_platforms": mixed_platforms,
        "timed_backwards": timed_backwards,
        "aborted_and_edited": aborted_and_edited,
        "resumed_start_moved": resumed_start_moved,
        "dangling_link": dangling_link,
    }


CHECKER = "fails compliance 4.0.0: "
REFUSALS = [
    # (case: the input, the error lines; {d}: the test's folder, {r}: the --results folder). The exit code is 1.
    ("org with a space", ["--org", "My Org"], None,
     ["--org: 'My Org' is not a plain name (1-64 letters, digits, '.', '_', '-' or '+', starting with a letter "
      "or digit); use e.g. My_Org"]),
    ("org with shell characters", ["--org", "x;rm -rf ~"], None, ["--org: 'x;rm -rf ~' is not a plain name ("]),
    ("org with a command substitution", ["--org", "$(reboot)"], None, ["--org: '$(reboot)' is not a plain name ("]),
    ("org with a newline", ["--org", "Org\nx"], None, ["--org: 'Org\\nx' is not a plain name ("]),
    ("org that climbs out", ["--org", "../Org"], None, ["--org: '../Org' is not a plain name ("]),
    ("empty org", ["--org", ""], None, ["--org: '' is not a plain name ("]),
    ("system with a slash", ["--system", "a/b"], None, ["--system: 'a/b' is not a plain name ("]),
    ("impl starting with a dot", ["--impl", ".hidden"], None, ["--impl: '.hidden' is not a plain name ("]),
    ("--out names a file", ["--out", "{d}/a_file"], None,
     ["--out {d}/a_file: is a file, not a folder; name a folder (created when missing)"]),
    ("--out under a file", ["--out", "{d}/a_file/sub"], None,
     ["--out {d}/a_file/sub: {d}/a_file is a file, not a folder; name a folder (created when missing)"]),
    ("OUT/ORG exists", ["--out", "{d}/out"], None,
     ["{d}/out/TestOrg: already exists; choose another --out or remove it first"]),
    ("--target 0", ["--target", "0"], None,
     ["--target 0.0: not a top-1 fraction in (0, 1]; ResNet's quality target is 0.759"]),
    ("unknown status", ["--status", "onprem-ish"], None, ["status 'onprem-ish': not a 4.0.0 availability; "]),
    ("non-numeric field", ["--set", "accelerators_per_node=two"], None,
     ["accelerators_per_node='two': must be a whole number (the result summarizer counts with it)"]),
    ("--set without =", ["--set", "nokey"], None, ["--set nokey: expected key=value; e.g. --set cooling=air"]),
    ("--code not the repository", ["--code", "{d}"], None, ["--code {d}: no pyproject.toml there"]),
    ("--system-json not JSON", ["--system-json", "{d}/a_file"], None, ["--system-json {d}/a_file: Expecting value"]),
    ("no logs", ["--results", "{d}"], None, ["--results {d}: no result_*.txt there; "]),
    ("division disagrees", ["--division", "closed"], None,
     [f"result_{i}.txt: submission_division 'open' but --division 'closed'; they must agree (the system file "
      "decides which checks run)" for i in range(5)] + ["--results {r}: 5 problem(s); nothing was packaged"]),
    # the sets (issue 13: a stub among four good logs used to be packaged with NO ERRORS)
    ("a stub among good logs", [], "stub",
     [f"result_4.txt: no run_start; no run_stop; {CHECKER}Required EXACTLY_ONE occurrence of 'init_stop' but "
      "found 0; Required EXACTLY_ONE occurrence of 'run_start' but found 0; ",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("a log edited to say success at 0.09", [], "edited",
     ["result_2.txt: success at top-1 0.0900 is not above the target 0.759",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("five runs at chance after a mistyped target", [], "typo_target",
     [f"result_{i}.txt: success at top-1 0.0912 is not above the target 0.759" for i in range(5)]
     + ["--results {r}: the set has no score: 5 of 5 runs did not converge (one is tolerated)",
        "--results {r}: 6 problem(s); nothing was packaged"]),
    ("four logs", [], "four_logs",
     ["--results {r}: the set has no score: fewer than 5 runs (found 4)",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("two runs that did not converge", [], "two_aborted",
     ["--results {r}: the set has no score: 2 of 5 runs did not converge (one is tolerated)",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("logs of another org", [], "other_org",
     [f"result_{i}.txt: submission_org 'ExampleOrg' but --org 'TestOrg'; package with the org the runs logged, "
      "or train again with SUBMISSION_ORG=TestOrg (a result log is never edited)" for i in range(5)]
     + ["--results {r}: 5 problem(s); nothing was packaged"]),
    ("logs of another division", [], "closed",
     [f"result_{i}.txt: submission_division 'closed' but --division 'open'; " for i in range(5)]
     # the closed rules for an SGDW optimiser point at a file mlperf-logging 4.1.68 lacks: the checker crashes
     + [f"result_{i}.txt: {CHECKER}FileNotFoundError: " for i in range(5)]
     + ["--results {r}: the set has no score: 5 of 5 runs did not converge (one is tolerated)",
        "--results {r}: 11 problem(s); nothing was packaged"]),
    ("a log of another benchmark", [], "other_benchmark",
     ["result_0.txt: submission_benchmark 'bert', not 'resnet': not a ResNet log",
      "--results {r}: 1 problem(s); nothing was packaged"]),  # (it passes the checker's open BERT rules)
    ("a log timed backwards", [], "timed_backwards",
     ["result_2.txt: time goes back: run_stop (line 71) is timed 60.0 s before run_start (line 18)",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("a resumed run_start timed 1 s before run_stop", [], "resumed_start_moved",
     ["result_2.txt: time goes back: block_start (line 19) is timed 569.0 s before run_start (line 18)",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("an aborted run's edited log", [], "aborted_and_edited",
     ["result_1.txt: run_stop status aborted; more than one seed (lines 8, 9)",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("a dangling result link", [], "dangling_link",
     ["result_5.txt: a symlink to {r}/moved.txt, which does not exist; restore the log or remove the link",
      "--results {r}: 1 problem(s); nothing was packaged"]),
    ("--target 1.0: accepted, reached by no run", ["--target", "1.0"], None,
     [f"result_{i}.txt: success at top-1 0.7612 is not above the target 1" for i in range(5)]
     + ["--results {r}: the set has no score: 5 of 5 runs did not converge (one is tolerated)",
        "--results {r}: 6 problem(s); nothing was packaged"]),
    ("logs of two platforms", [], "mixed_platforms",
     ["--results {r}: the logs disagree on submission_platform (cpu_box, other_box); a set is five runs of one "
      "system", "--results {r}: 1 problem(s); nothing was packaged"]),
]


@pytest.mark.parametrize("case, extra, bad_set, lines", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_table(reference_result_logs, tmp_path, capsys, case, extra, bad_set, lines):
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "out" / ORG).mkdir(parents=True)
    results = _bad_sets(tmp_path)[bad_set](tmp_path / "set") if bad_set else reference_result_logs
    argv = ["--org", ORG, "--system", SYSTEM, "--results", str(results), "--out", str(tmp_path / "new"), *extra]
    fill = lambda text: text.replace("{d}", str(tmp_path)).replace("{r}", str(results))  # noqa: E731
    argv = [fill(a) for a in argv]
    before, logs_before = _snapshot(tmp_path), _snapshot(results)

    assert compliance.main(package, argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    got = err.splitlines()
    assert len(got) == len(lines), got
    for line, want in zip(got, lines):
        assert line.startswith(f"mlperf-resnet: error: {fill(want)}"), (line, want)
    assert _snapshot(tmp_path) == before and _snapshot(results) == logs_before  # nothing written or overwritten
    assert not (tmp_path / "new").exists()


def test_refusals_raise_every_problem_to_library_callers(tmp_path):
    logs = _set(tmp_path / "set", converge=[True, False, True, False, True])
    edit_log(logs / "result_0.txt", logs / "result_0.txt", keep_lines=7)
    with pytest.raises(ComplianceErrors) as raised:
        build_package(ORG, SYSTEM, logs, tmp_path / "out")
    assert raised.value.problems[0].startswith(f"result_0.txt: no run_start; no run_stop; {CHECKER}")
    assert raised.value.problems[1:] == [
        f"--results {logs}: the set has no score: 3 of 5 runs did not converge (one is tolerated)",
        f"--results {logs}: 2 problem(s); nothing was packaged"]
    assert not (tmp_path / "out").exists()


def test_an_honest_miss_is_packaged_and_a_low_target_is_said_to_be_no_submission(tmp_path, capsys):
    one_aborted = _set(tmp_path / "a", converge=[True, True, False, True, True])  # one of five is tolerated
    assert compliance.main(package, ["--org", ORG, "--system", SYSTEM, "--results", str(one_aborted),
                                     "--out", str(tmp_path / "o1"), "--no-check"]) == 0
    chance = _set(tmp_path / "b", final_accuracy=0.0912, target=0.0759)
    assert compliance.main(package, ["--org", ORG, "--system", SYSTEM, "--results", str(chance),
                                     "--out", str(tmp_path / "o2"), "--no-check", "--target", "0.0759"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"packaged {tmp_path / 'o1' / ORG}", f"packaged {tmp_path / 'o2' / ORG}"]
    assert err == ("mlperf-resnet package: warning: --target 0.0759 is not the ResNet quality target 0.759: this "
                   "tree is not a submission\n")


def test_code_copy_leaves_out_environments_data_results_and_caches(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("README.md", "resnet/a.py", "tests/test_a.py", ".venv/bin/python", ".git/HEAD", "data/x.beton",
                "results/CPU/resnet/result_0.txt", "resnet/__pycache__/a.pyc", ".pytest_cache/v",
                "out/Org/results/x.txt", "build/lib/a.py", "notes.log"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    assert [str(p) for p in code_files(repo, exclude=repo / "out")] == ["README.md", "resnet/a.py",
                                                                         "tests/test_a.py"]
    files = {str(p) for p in code_files(REPO_ROOT)}  # this repository, through git
    assert {"pyproject.toml", "compliance/package.py", "resnet/cli.py"} <= files
    assert not any(f.startswith((".venv/", ".git/", "data/", "results/")) for f in files)


@pytest.mark.parametrize("value, message", [
    ("Acme Inc", "--org: 'Acme Inc' is not a plain name (1-64 letters, digits, '.', '_', '-' or '+', starting with "
                 "a letter or digit); use e.g. Acme_Inc"),
    ("../Org", "--org: '../Org' is not a plain name (1-64 letters, digits, '.', '_', '-' or '+', starting with a "
               "letter or digit); use e.g. Org"),
    ("a" * 65, None), ("", None), ("-x", None), ("Org\nx", None), ("Orgé", None), (None, None),
    ("NVIDIA", ""), ("dgxa100_ngc22.04_mxnet", ""), ("8xA100_80GB-methods", ""), ("c++", ""), ("a" * 64, ""),
])
def test_check_plain_name_is_the_one_rule_for_names(value, message):
    """compliance.check_plain_name: what package applies to --org/--system/--impl and the trainer to --org and
    --platform before training. "" in the table: accepted (MLCommons' own names are)."""
    assert package.check_plain_name is compliance.check_plain_name
    if message == "":
        assert compliance.check_plain_name("--org", value) is None
        return
    with pytest.raises(compliance.ComplianceError) as raised:
        compliance.check_plain_name("--org", value)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"--org: {value!r} is not a plain name (")
    assert message is None or text == message


def test_apply_overrides_maps_short_status():
    desc = dict.fromkeys(SYSTEM_FIELDS, "") | {"number_of_nodes": "1", "host_processors_per_node": "1",
                                               "accelerators_per_node": "0"}
    assert [apply_overrides(desc, {"status": s})["status"] for s in STATUS] == list(STATUS.values())
    assert apply_overrides(desc, {"status": "Preview"})["status"] == "Preview"


def test_known_systems_fill_in_what_this_machine_cannot_show(tmp_path):
    logs = write_reference_logs(tmp_path / "logs", org="Org", platform="DGXA100")
    org = build_package("Org", "DGXA100", logs, tmp_path, overrides={"status": "preview"})
    desc = json.loads((org / "systems/DGXA100.json").read_text())
    assert (desc["accelerators_per_node"], desc["accelerator_model_name"]) == ("8", "NVIDIA A100-SXM4-80GB")
    assert (desc["status"], desc["system_name"], desc["hw_notes"]) == ("Preview", "DGXA100", "")
    assert desc["framework"].startswith("PyTorch ")  # software still from this machine
    for template in SYSTEMS_DIR.glob("*.json"):
        assert set(json.loads(template.read_text())) <= set(SYSTEM_FIELDS), template.name
