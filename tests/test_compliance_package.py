"""`mlperf-resnet package`: a submission tree that the official package checker and result summarizer accept.

The tree is built from result logs: the reference logs (official mllog API) always, and the logs of a real CPU
training run when tests/conftest.py provides the `cpu_result_logs` fixture (a folder of result_*.txt).
"""
import csv as csv_module
import json

import pytest

from compliance.check import run_official_tool
from compliance.package import (REPO_ROOT, STATUS, SYSTEM_FIELDS, SYSTEMS_DIR, apply_overrides, build_package,
                                code_files, package_check)
from compliance.reference_log import write_reference_logs
from compliance.summarize import summarize_dir
from resnet.cli import main


@pytest.fixture(scope="module")
def reference_result_logs(tmp_path_factory):
    return write_reference_logs(tmp_path_factory.mktemp("logs"), minutes=(10.0, 11.0, 9.5, 12.0, 10.5))


@pytest.fixture(params=["reference_result_logs", "cpu_result_logs"])
def result_logs(request):
    """The folder of result_*.txt to package; add a fixture's name to params to package other logs."""
    try:
        return request.getfixturevalue(request.param)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {request.param} fixture (tests/conftest.py) yet")


def test_package_passes_the_official_checkers_and_summarizer(result_logs, tmp_path):
    org = build_package("TestOrg", "cpu_box", result_logs, tmp_path / "out", impl="pytorch")
    assert org == tmp_path / "out" / "TestOrg" and not list((tmp_path / "out").glob(".TestOrg*"))
    for ruleset in ("4.0.0", "2.0.0"):
        assert package_check(org, ruleset) == (True, []), ruleset

    logs = sorted(p.name for p in result_logs.glob("result_*.txt"))
    assert sorted(p.name for p in (org / "results/cpu_box/resnet").iterdir()) == logs
    desc = json.loads((org / "systems/cpu_box.json").read_text())
    assert set(SYSTEM_FIELDS) <= set(desc) and desc["status"] in STATUS.values()
    assert (desc["submitter"], desc["system_name"], desc["division"]) == ("TestOrg", "cpu_box", "open")
    assert int(desc["host_processor_vcpu_count"]) >= 1 and desc["framework"].startswith("PyTorch ")
    impl = org / "benchmarks/resnet/implementations/pytorch"
    for wanted in ("pyproject.toml", "resnet/__init__.py", "resnet/cli.py", "compliance/package.py"):
        assert (impl / wanted).is_file(), wanted
    assert (impl / "resnet/data/__init__.py").is_file()  # a package named data is code, ./data is not
    assert not {".git", ".venv", "data", "results"} & {p.name for p in impl.iterdir()}
    assert not list(impl.rglob("__pycache__"))

    # the official result_summarizer reads the tree, and gets our score where every run succeeded (it also times
    # an open run that stopped with status aborted, which we count as not converged)
    csv = tmp_path / "summary.csv"
    assert run_official_tool("result_summarizer", org, "training", "4.0.0", "--csv", csv).returncode == 0
    (official,) = list(csv_module.DictReader(csv.read_text().splitlines()))
    assert (official["availability"], official["accelerators_count"]) == (desc["status"], desc["accelerators_per_node"])
    ours = summarize_dir(org / "results/cpu_box/resnet")
    if all(run["status"] == "success" for run in ours["runs"]):
        assert ours["valid"] and float(official["resnet"]) == pytest.approx(ours["score_minutes"], rel=1e-12)


def test_what_the_package_checker_lets_through_and_what_it_does_not(reference_result_logs, tmp_path):
    org = build_package("TestOrg", "cpu_box", reference_result_logs, tmp_path)
    system_file = org / "systems/cpu_box.json"
    desc = json.loads(system_file.read_text())
    # a log's short status is not a 4.x availability; the 2.0.0 rules did not look at it
    system_file.write_text(json.dumps(desc | {"status": "onprem"}))
    passed, problems = package_check(org, "4.0.0")
    assert not passed and any("Field status contains a non valid value: onprem" in p for p in problems)
    assert package_check(org, "2.0.0") == (True, [])
    system_file.write_text(json.dumps(desc))
    # a benchmark folder with another name is skipped by every check; the tool still says NO ERRORS
    (org / "results/cpu_box/resnet").rename(org / "results/cpu_box/resnet50")
    passed, problems = package_check(org)
    assert not passed and problems == ["Skipping benchmark: resnet50"]
    (org / "results/cpu_box/resnet50").rename(org / "results/cpu_box/resnet")
    # ResNet takes exactly 5 logs
    (org / "results/cpu_box/resnet/result_4.txt").unlink()
    passed, problems = package_check(org)
    assert not passed and any("found 4, expected 5" in p for p in problems)


def test_cli_overrides_refusals_and_one_line_errors(reference_result_logs, tmp_path, capsys):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"cooling": "air", "other_software_stack": {"cuda": "12.4"}}))
    args = ["package", "--org", "Org", "--system", "box", "--results", str(reference_result_logs),
            "--out", str(tmp_path / "out"), "--status", "cloud", "--system-json", str(overrides),
            "--set", "host_storage_type=NVMe SSD", "--set", "other_software_stack.driver=550", "--no-check"]
    assert main(args) == 0
    assert capsys.readouterr().out == f"packaged {tmp_path / 'out' / 'Org'}\n"
    desc = json.loads((tmp_path / "out/Org/systems/box.json").read_text())
    assert (desc["status"], desc["cooling"], desc["host_storage_type"]) == ("Available cloud", "air", "NVMe SSD")
    assert desc["other_software_stack"]["cuda"] == "12.4" and desc["other_software_stack"]["driver"] == "550"
    assert "torch" in desc["other_software_stack"]  # merged into the detected table, not replacing it

    refusals = [
        (args, "already exists"),
        ([*args[:7], "--out", str(tmp_path / "o1"), "--set", "accelerators_per_node=two"], "must be a whole number"),
        ([*args[:7], "--out", str(tmp_path / "o2"), "--status", "onprem-ish"], "not a 4.0.0 availability"),
        ([*args[:7], "--out", str(tmp_path / "o3"), "--division", "closed"], "must agree"),
        ([*args[:6], str(tmp_path), "--out", str(tmp_path / "o4")], "no result_*.txt there"),
        ([*args[:7], "--out", str(tmp_path / "o5"), "--set", "nokey"], "expected key=value"),
        ([*args[:7], "--out", str(tmp_path / "o6"), "--code", str(tmp_path)], "not this repository's checkout"),
    ]
    for argv, message in refusals:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        text = str(exc.value.code)
        assert text.startswith("mlperf-resnet package: error: ") and message in text and "\n" not in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Org"]


def test_cli_runs_the_package_checker(reference_result_logs, tmp_path, capsys):
    argv = ["package", "--org", "Org", "--system", "box", "--results", str(reference_result_logs),
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "package_checker training 4.0.0: NO ERRORS"


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


def test_apply_overrides_maps_short_status():
    desc = dict.fromkeys(SYSTEM_FIELDS, "") | {"number_of_nodes": "1", "host_processors_per_node": "1",
                                               "accelerators_per_node": "0"}
    assert [apply_overrides(desc, {"status": s})["status"] for s in STATUS] == list(STATUS.values())
    assert apply_overrides(desc, {"status": "Preview"})["status"] == "Preview"


def test_known_systems_fill_in_what_this_machine_cannot_show(reference_result_logs, tmp_path):
    org = build_package("Org", "DGXA100", reference_result_logs, tmp_path, overrides={"status": "preview"})
    desc = json.loads((org / "systems/DGXA100.json").read_text())
    assert (desc["accelerators_per_node"], desc["accelerator_model_name"]) == ("8", "NVIDIA A100-SXM4-80GB")
    assert (desc["status"], desc["system_name"], desc["hw_notes"]) == ("Preview", "DGXA100", "")
    assert desc["framework"].startswith("PyTorch ")  # software still from this machine
    for template in SYSTEMS_DIR.glob("*.json"):
        assert set(json.loads(template.read_text())) <= set(SYSTEM_FIELDS), template.name
