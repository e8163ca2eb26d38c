"""`mlperf-resnet package`: an MLPerf Training submission tree from a folder of result logs.

    OUT/ORG/benchmarks/resnet/implementations/IMPL/   this repository's code (no .git, .venv, data, results, caches)
    OUT/ORG/results/SYSTEM/resnet/result_*.txt        the logs
    OUT/ORG/systems/SYSTEM.json                       the system description: this machine's, with the
                                                      facts in compliance/systems/SYSTEM.json on top (DGXA100,
                                                      DGXA100_2x8, DGXH100), then --system-json, then --set

Before anything is written, the set is checked as a submission needs it: every log passes the official
compliance checker; a log that says success reached the quality target (ResNet: top-1 above 0.759, --target
for other uses); the set has a score (5 runs, at most one that did not reach the target); every log's
submission_benchmark, submission_org and submission_division agree with the package (a submission_platform
other than --system is reported, not refused: NVIDIA's published logs name the machine there). Each problem is
one error line, and nothing is written. ORG, SYSTEM and IMPL become folder names: letters, digits and . _ - +
only.

The tree is built under a temporary name and moved into place whole; an existing OUT/ORG is never touched.
Then the official `mlperf_logging.package_checker` lints it (it exits 0 even when it finds errors, so its verdict
line is read); the exit status is 1 when it finds errors.
"""
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compliance import ComplianceError, ComplianceErrors
from compliance.check import DEFAULT_RULESET, resnet_rulesets, run_official_tool
from compliance.summarize import TARGET_TOP1, check_target, summarize_dirs

NAME = "package"
HELP = "build an MLPerf submission tree from result logs"

REPO_ROOT = Path(__file__).resolve().parents[1]
# Hardware facts of the systems our configs name (config_<SYSTEM>.sh), as NVIDIA published them for DGX A100
# (training_results_v2.0) and DGX H100 (v4.0, "Eos" nodes): they win over what the packaging machine detects.
SYSTEMS_DIR = Path(__file__).resolve().parent / "systems"
BENCHMARK = "resnet"
# The availability values of ruleset 4.x (the system description checker rejects anything else, e.g. "onprem"),
# by the short names a log's submission_status uses.
STATUS = {"onprem": "Available on-premise", "cloud": "Available cloud", "preview": "Preview",
          "research": "Research, Development, or Internal (RDI)"}
SYSTEM_FIELDS = [
    "submitter", "division", "status", "system_name", "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count",
    "host_processor_frequency", "host_processor_caches", "host_processor_interconnect", "host_memory_capacity",
    "host_storage_type", "host_storage_capacity", "host_networking", "host_networking_topology",
    "host_memory_configuration", "accelerators_per_node", "accelerator_model_name",
    "accelerator_host_interconnect", "accelerator_frequency", "accelerator_on-chip_memories",
    "accelerator_memory_configuration", "accelerator_memory_capacity", "accelerator_interconnect",
    "accelerator_interconnect_topology", "cooling", "hw_notes", "framework", "other_software_stack",
    "operating_system", "sw_notes",
]
INTEGER_FIELDS = ("number_of_nodes", "host_processors_per_node", "accelerators_per_node")  # the summarizer int()s them
# Never part of the code copy: at the top of the repository, or anywhere.
SKIP_TOP = {".git", ".venv", "venv", "data", "results", "build", "dist", "checkpoints"}
SKIP_ANY = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".beton", ".log", ".egg-info", ".pt")
# --org, --system and --impl become folder names in the tree, and the official tools put them in paths and CSV
# files: a leading letter or digit, then letters, digits, . _ - + (no spaces, slashes, quotes, $ ; | & ...).
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
PLAIN_NAME_RULE = ("use 1-64 letters, digits, '.', '_', '-' or '+', starting with a letter or digit "
                   "(no spaces, slashes, quotes or shell characters)")


def _error(where: str, what: str) -> ComplianceError:
    return ComplianceError(f"{where}: {what}")


def _warn(message: str) -> None:
    print(f"mlperf-resnet package: warning: {message}", file=sys.stderr, flush=True)


# ---- the system description -----------------------------------------------------------------------------------
def _cpuinfo() -> list[dict]:
    try:
        blocks = Path("/proc/cpuinfo").read_text().strip().split("\n\n")
    except OSError:
        return []
    return [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))
            for block in blocks]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1024 ** 3:.0f} GB"


def _caches() -> str:
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = (_read(str(index / f)) for f in ("level", "type", "size"))
        if level and size:
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            caches.append(f"L{level}{suffix} {size}")
    return ", ".join(caches)


def _os_name() -> str:
    release = dict(line.split("=", 1) for line in _read("/etc/os-release").splitlines() if "=" in line)
    name = release.get("PRETTY_NAME", "").strip('"') or platform.platform()
    return f"{name} ({platform.system()} {platform.release()})"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _accelerators() -> dict:
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        return {"accelerators_per_node": "0", "accelerator_model_name": "none", "hw_notes": "CPU only"}
    props = torch.cuda.get_device_properties(0)
    return {"accelerators_per_node": str(torch.cuda.device_count()), "accelerator_model_name": props.name,
            "accelerator_memory_capacity": _gb(props.total_memory)}


def describe_system(org: str, system: str, division: str, status: str, storage_path=".") -> dict:
    """systems/<system>.json as far as this machine can tell (every field MLPerf asks for; unknown ones empty)."""
    cpus = _cpuinfo()
    first = cpus[0] if cpus else {}
    sockets = len({c.get("physical id") for c in cpus if "physical id" in c}) or 1
    vcpus = len(cpus) or os.cpu_count() or 1
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    mhz = int(max_khz) / 1000 if max_khz.isdigit() else float(first.get("cpu MHz", 0) or 0)
    meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines() if ":" in line)
    mem_kb = int(meminfo.get("MemTotal", "0 kB").split()[0])
    torch_version = _version("torch")
    desc = dict.fromkeys(SYSTEM_FIELDS, "")
    desc.update({
        "submitter": org, "division": division, "status": status, "system_name": system,
        "number_of_nodes": "1",
        "host_processors_per_node": str(sockets),
        "host_processor_model_name": first.get("model name") or platform.processor() or platform.machine(),
        "host_processor_core_count": first.get("cpu cores") or str(max(1, vcpus // sockets)),
        "host_processor_vcpu_count": str(vcpus),
        "host_processor_frequency": f"{mhz:.0f} MHz" if mhz else "",
        "host_processor_caches": _caches(),
        "host_memory_capacity": _gb(mem_kb * 1024) if mem_kb else "",
        "host_storage_capacity": _gb(shutil.disk_usage(storage_path).total),
        "framework": f"PyTorch {torch_version}" if torch_version else "",
        "other_software_stack": {name: v for name, v in (
            ("python", platform.python_version()), ("torch", torch_version),
            ("torchvision", _version("torchvision")), ("ffcv", _version("ffcv")),
            ("mlperf-logging", _version("mlperf-logging")), ("mlperf-resnet", _version("mlperf-resnet"))) if v},
        "operating_system": _os_name(),
    })
    desc.update(_accelerators())
    return desc


def parse_set(items) -> dict:
    """--set key=value ... (other_software_stack.key=value sets one entry of that table)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _error(f"--set {item}", "expected key=value; e.g. --set cooling=air")
        if key.startswith("other_software_stack."):
            overrides.setdefault("other_software_stack", {})[key.split(".", 1)[1]] = value
        else:
            overrides[key] = value
    return overrides


def merge(base: dict, extra: dict) -> dict:
    """base with extra's fields on top; a table (other_software_stack) is merged entry by entry."""
    merged = dict(base)
    for key, value in extra.items():
        both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both_tables else value
    return merged


def apply_overrides(desc: dict, overrides: dict) -> dict:
    """Fields from the user win (see merge). A short status (onprem, cloud, preview, research) becomes its 4.x
    name; a status no ruleset accepts is an error."""
    for key in overrides:
        if key not in SYSTEM_FIELDS:
            _warn(f"{key} is not one of MLPerf's system fields; kept as given")
    desc = merge(desc, overrides)
    desc["status"] = STATUS.get(desc["status"], desc["status"])
    if desc["status"] not in STATUS.values():
        raise _error(f"status {desc['status']!r}", f"not a 4.0.0 availability; use one of "
                     f"{', '.join(STATUS)} or {', '.join(repr(v) for v in STATUS.values())}")
    for key in INTEGER_FIELDS:
        try:
            int(float(desc[key]))
        except (TypeError, ValueError):
            raise _error(f"{key}={desc[key]!r}", "must be a whole number (the result summarizer counts with it)")
    return desc


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


def check_name(flag: str, value: str) -> str:
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value):
        raise _error(f"{flag} {value!r}", f"not a plain name; {PLAIN_NAME_RULE}")
    return value


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

    keys = ("submission_benchmark", "submission_org", "submission_division", "submission_platform",
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
    for log, ident in identities.items():
        if ident["submission_benchmark"] != BENCHMARK:
            problems.append(f"{log.name}: submission_benchmark {ident['submission_benchmark']!r}, not "
                            f"{BENCHMARK!r}; package ResNet logs only")
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
    for run in summary["runs"]:
        honest_miss = run["compliant"] and run["status"] != "success"  # e.g. aborted: one of five is tolerated
        if run["problems"] and not honest_miss:
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
        check_name(flag, value)
    check_target(target)
    results, out, code = Path(results), Path(out), Path(code)
    org_dir = out / org
    check_out(out, org_dir)
    if not (code / "pyproject.toml").is_file():  # e.g. an installed copy: its parent is site-packages
        raise _error(f"--code {code}", "no pyproject.toml there, so not this repository's checkout; "
                     "pass --code /path/to/the/repository")
    logs = sorted(p for p in results.glob("result_*.txt") if p.is_file()) if results.is_dir() else []
    if not logs:
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
    parser.add_argument("--ruleset", default=DEFAULT_RULESET, choices=resnet_rulesets(),
                        help="ruleset of the compliance and package checks (default %(default)s)")
    parser.add_argument("--target", type=float, default=TARGET_TOP1,
                        help="top-1 a run must be above at success (default %(default)s, the ResNet quality "
                             "target; another value does not make a submission)")
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
    org_dir = build_package(args.org, args.system, args.results, args.out, division=args.division,
                            status=args.status, impl=args.impl, code=args.code, overrides=overrides,
                            ruleset=args.ruleset, target=args.target)
    print(f"packaged {org_dir}")
    if args.no_check:
        return 0
    passed, problems = package_check(org_dir, args.ruleset)
    verdict = "NO ERRORS" if passed else "ERRORS: " + "; ".join(problems)
    print(f"package_checker training {args.ruleset}: {verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    import compliance

    sys.exit(compliance.main(sys.modules[__name__]))
