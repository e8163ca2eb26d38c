"""`mlperf-resnet package`: an MLPerf Training submission tree from a folder of result logs.

    OUT/ORG/benchmarks/resnet/implementations/IMPL/   this repository's code (no .git, .venv, data, results, caches)
    OUT/ORG/results/SYSTEM/resnet/result_*.txt        the logs
    OUT/ORG/systems/SYSTEM.json                       the system description: this machine's, with the
                                                      facts in compliance/systems/SYSTEM.json on top (DGXA100,
                                                      DGXA100_2x8, DGXH100), then --system-json, then --set

Before anything is written, the set is checked as a submission needs it: every log passes the official
compliance checker and our log rules (compliance/rules.py: a ResNet log, in MLPerf's order, one run, time that
does not go back; `check` shows both verdicts); a log that says success reached the quality target (ResNet:
top-1 above 0.759, --target for other uses); the set has a score (5 runs, at most one that did not reach the
target); no result_*.txt is a dangling link; every log's submission_org and submission_division agree with the
package (a submission_platform other than --system is reported, not refused: NVIDIA's published logs name the
machine there). Each problem is one error line, and nothing is written. ORG, SYSTEM and IMPL become folder
names: compliance.check_plain_name.

The tree is built under a temporary name and moved into place whole; an existing OUT/ORG is never touched.
Then the official `mlperf_logging.package_checker` lints it (it exits 0 even when it finds errors, so its verdict
line is read); the exit status is 1 when it finds errors.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compliance import ComplianceError, ComplianceErrors, check_plain_name
from compliance.check import DEFAULT_RULESET, add_scoring_arguments, run_official_tool, scoring_arguments
from compliance.logs import BENCHMARK, TARGET_TOP1, check_target, result_logs
from compliance.summarize import summarize_dirs
from compliance.system_description import (STATUS, SYSTEM_FIELDS, SYSTEMS_DIR, apply_overrides,  # noqa: F401 (tests)
                                           describe_system, merge, parse_set)

NAME = "package"
HELP = "build an MLPerf submission tree from result logs"

REPO_ROOT = Path(__file__).resolve().parents[1]
# Never part of the code copy: at the top of the repository, or anywhere.
SKIP_TOP = {".git", ".venv", "venv", "data", "results", "build", "dist", "checkpoints"}
SKIP_ANY = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".beton", ".log", ".egg-info", ".pt")


def _error(where: str, what: str) -> ComplianceError:
    return ComplianceError(f"{where}: {what}")


def _warn(message: str) -> None:
    print(f"mlperf-resnet package: warning: {message}", file=sys.stderr, flush=True)


# ---- the tree -----------------------------------------------------------------------------------------------------
def code_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """The repository's files, relative to root: what git tracks plus what it does not ignore (every file when
    root is no git checkout), less data, results, environments, caches and `exclude` (the output folder)."""
    try:
        git = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        listed = subprocess.run(git, capture_output=True, text=True, check=True).stdout.split("\0")
        files = [Path(f) for f in listed if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    exclude = exclude.resolve() if exclude else None
    keep = []
    for rel in files:
        path = root / rel
        if (rel.parts[0] in SKIP_TOP or SKIP_ANY.intersection(rel.parts)
                or any(part.endswith(SKIP_SUFFIXES) for part in rel.parts) or not path.is_file()
                or (exclude and (path.resolve() == exclude or exclude in path.resolve().parents))):
            continue
        keep.append(rel)
    return sorted(keep)


def check_out(out: Path, org_dir: Path) -> None:
    """Refuse an --out that cannot hold the tree before anything is written."""
    if out.exists() and not out.is_dir():
        raise _error(f"--out {out}", "is a file, not a folder; name a folder (created when missing)")
    if org_dir.exists() or org_dir.is_symlink():
        raise _error(str(org_dir), "already exists; choose another --out or remove it first")
    existing = next(p for p in (out, *out.parents) if p.exists())  # the part of --out that exists already
    if not existing.is_dir():
        raise _error(f"--out {out}", f"{existing} is a file, not a folder; name a folder (created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _error(f"--out {out}", f"{existing} is not writable; choose a folder you can write to")


def _log_identity(log: Path) -> dict:
    """The submission_* values a log states (None for a key it does not have)."""
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    keys = ("submission_org", "submission_division", "submission_platform",
            "submission_status")
    found = dict.fromkeys(keys)
    try:
        loglines = parse_file(str(log), ruleset=DEFAULT_RULESET)[0]
    except OSError:
        return found  # unreadable: the compliance check reports it
    for ll in loglines:
        if ll.key in found and found[ll.key] is None and isinstance(ll.value, dict):
            found[ll.key] = ll.value.get("value")
    return found


def set_problems(results: Path, logs: list[Path], org: str, system: str, division: str,
                 ruleset: str = DEFAULT_RULESET, target: float = TARGET_TOP1) -> tuple[list[str], list[str], dict]:
    """(problems, warnings, what the logs agree on) for packaging `logs` as ORG's SYSTEM. A problem is a reason to
    refuse the set; a warning is printed and the set packaged."""
    problems, warnings = [], []
    identities = {log: _log_identity(log) for log in logs}
    for log, ident in identities.items():  # (a benchmark other than resnet: the log rules refuse it)
        if ident["submission_org"] != org:
            problems.append(f"{log.name}: submission_org {ident['submission_org']!r} but --org {org!r}; "
                            f"package with the org the runs logged, or train again with SUBMISSION_ORG={org} "
                            "(a result log is never edited)")
        if ident["submission_division"] not in (None, division):
            problems.append(f"{log.name}: submission_division {ident['submission_division']!r} but --division "
                            f"{division!r}; they must agree (the system file decides which checks run)")
    agreed = {}
    for key in ("submission_platform", "submission_status"):
        values = sorted({str(ident[key]) for ident in identities.values()})
        if len(values) > 1:
            problems.append(f"--results {results}: the logs disagree on {key} ({', '.join(values)}); a set is "
                            "five runs of one system")
        agreed[key] = next(iter(identities.values()))[key] if len(values) == 1 else None
    if agreed["submission_platform"] not in (None, system):
        warnings.append(f"the logs say submission_platform {agreed['submission_platform']!r}, the package "
                        f"--system {system!r}; the results go under results/{system}/ and systems/{system}.json")

    summary = summarize_dirs([results], ruleset, target=target)[0]
    problems += summary["unreadable"]
    for run in summary["runs"]:  # a run that ended without reaching the target (aborted) is not refused
        if run["refused"]:
            problems.append(f"{run['file']}: {'; '.join(run['problems'])}")
    if not summary["valid"]:
        problems.append(f"--results {results}: the set has no score: {summary['reason']}")
    if target != TARGET_TOP1:
        warnings.append(f"--target {target:g} is not the ResNet quality target {TARGET_TOP1}: this tree is not a "
                        "submission")
    return problems, warnings, agreed


def build_package(org: str, system: str, results, out, *, division: str = "open", status: str | None = None,
                  impl: str = "pytorch", code=REPO_ROOT, overrides: dict | None = None,
                  ruleset: str = DEFAULT_RULESET, target: float = TARGET_TOP1) -> Path:
    """Write OUT/ORG (see the module's doc) and return its path. `status` defaults to the logs'
    submission_status. The system file is what this machine shows, then compliance/systems/<system>.json where
    there is one, then `overrides`. Raises ComplianceError (ComplianceErrors: every problem of the set) on
    anything it refuses, before anything is written."""
    for flag, value in (("--org", org), ("--system", system), ("--impl", impl)):
        check_plain_name(flag, value)
    check_target(target)
    results, out, code = Path(results), Path(out), Path(code)
    org_dir = out / org
    check_out(out, org_dir)
    if not (code / "pyproject.toml").is_file():  # e.g. an installed copy: its parent is site-packages
        raise _error(f"--code {code}", "no pyproject.toml there, so not this repository's checkout; "
                     "pass --code /path/to/the/repository")
    logs, dangling = result_logs(results) if results.is_dir() else ([], [])
    if not logs and not dangling:
        raise _error(f"--results {results}", "no result_*.txt there; point it at the folder of a system's logs, "
                     "e.g. results/<system>/resnet")
    problems, warnings, agreed = set_problems(results, logs, org, system, division, ruleset, target)
    if problems:
        raise ComplianceErrors([*problems, f"--results {results}: {len(problems)} problem(s); nothing was packaged"])
    for warning in warnings:
        _warn(warning)
    status = status or agreed["submission_status"] or "research"
    template = SYSTEMS_DIR / f"{system}.json"
    known = json.loads(template.read_text()) if template.is_file() else {}
    desc = apply_overrides(describe_system(org, system, division, status, storage_path=results),
                           merge(known, overrides or {}))

    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{org}.", dir=out))
    except OSError as e:
        raise _error(f"--out {out}", f"cannot create the tree there ({e.strerror or e}); choose a writable folder")
    try:
        impl_dir = tmp / "benchmarks" / BENCHMARK / "implementations" / impl
        for rel in code_files(code, exclude=out):
            (impl_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(code / rel, impl_dir / rel)
        result_dir = tmp / "results" / system / BENCHMARK
        result_dir.mkdir(parents=True)
        for log in logs:
            shutil.copy2(log, result_dir / log.name)
        (tmp / "systems").mkdir()
        (tmp / "systems" / f"{system}.json").write_text(json.dumps(desc, indent=4) + "\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, org_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _error(f"--out {out}", f"writing the tree failed ({e.strerror or e}); nothing was left there")
        raise
    return org_dir


def package_check(org_dir, ruleset: str = DEFAULT_RULESET) -> tuple[bool, list[str]]:
    """The official package checker on OUT/ORG. It exits 0 whatever it finds, so the verdict is its last line
    (PACKAGE CHECKER FOUND NO ERRORS / FOUND ERRORS). Its ERROR lines come back as problems; so does a benchmark
    folder it skipped (a wrongly named folder is checked by nothing, which the tool lets pass)."""
    proc = run_official_tool("package_checker", Path(org_dir), "training", ruleset)
    output = proc.stdout + proc.stderr
    problems = [line.partition(" - ")[2].strip() for line in output.splitlines() if line.startswith("ERROR - ")]
    problems += [line.partition(" - ")[2].strip() for line in output.splitlines() if "Skipping benchmark" in line]
    passed = proc.returncode == 0 and "PACKAGE CHECKER FOUND NO ERRORS" in output and not problems
    if not passed and not problems:
        tail = [line for line in output.splitlines() if line.strip()]
        problems = [tail[-1] if tail else f"package_checker exited with status {proc.returncode}"]
    return passed, problems


def add_arguments(parser) -> None:
    parser.add_argument("--org", required=True, help="submitting organisation (the tree's top folder; letters, "
                        "digits, . _ - +)")
    parser.add_argument("--system", required=True, help="system name: results/<system>/ and systems/<system>.json")
    parser.add_argument("--results", required=True, metavar="DIR", help="folder holding the result_*.txt logs")
    parser.add_argument("--out", required=True, help="folder where OUT/ORG is made (refused when OUT/ORG exists)")
    parser.add_argument("--division", default="open", choices=["open", "closed"], help="default %(default)s")
    parser.add_argument("--status", help=f"availability: {', '.join(STATUS)} or the 4.x names "
                        "(default: the logs' submission_status)")
    parser.add_argument("--impl", default="pytorch", help="implementation folder name (default %(default)s)")
    parser.add_argument("--code", default=str(REPO_ROOT), help="repository to copy (default: this one)")
    parser.add_argument("--system-json", metavar="FILE",
                        help="JSON object of system fields that override the detected ones")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one system field (repeatable; other_software_stack.NAME=VERSION for that "
                             "table)")
    add_scoring_arguments(parser, "the compliance and package checks")
    parser.add_argument("--no-check", action="store_true", help="do not run the official package checker")


def run(args) -> int:
    overrides = {}
    if args.system_json:
        try:
            overrides = json.loads(Path(args.system_json).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _error(f"--system-json {args.system_json}", f"{e}; give a JSON object of system fields")
        if not isinstance(overrides, dict):
            raise _error(f"--system-json {args.system_json}", "not a JSON object; give {\"field\": \"value\", ...}")
    overrides = merge(overrides, parse_set(args.set))
    ruleset, target = scoring_arguments(args)
    org_dir = build_package(args.org, args.system, args.results, args.out, division=args.division,
                            status=args.status, impl=args.impl, code=args.code, overrides=overrides,
                            ruleset=ruleset, target=target)
    print(f"packaged {org_dir}")
    if args.no_check:
        return 0
    passed, problems = package_check(org_dir, ruleset)
    verdict = "NO ERRORS" if passed else "ERRORS: " + "; ".join(problems)
    print(f"package_checker training {ruleset}: {verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    import compliance

    sys.exit(compliance.main(sys.modules[__name__]))
