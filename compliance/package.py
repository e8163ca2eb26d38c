"""`mlperf-resnet package`: an MLPerf Training submission tree from a folder of result logs.

    OUT/ORG/benchmarks/resnet/implementations/IMPL/   this repository's code (no .git, .venv, data, results, caches)
    OUT/ORG/results/SYSTEM/resnet/result_*.txt        the logs
    OUT/ORG/systems/SYSTEM.json                       the system description: this machine's, with the
                                                      facts in compliance/systems/SYSTEM.json on top (DGXA100,
                                                      DGXA100_2x8, DGXH100), then --system-json, then --set

The tree is built under a temporary name and moved into place whole; an existing OUT/ORG is never touched.
Then the official `mlperf_logging.package_checker` lints it (it exits 0 even when it finds errors, so its verdict
line is read); the exit status is 1 when it finds errors.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from compliance.check import DEFAULT_RULESET, resnet_rulesets, run_official_tool

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


def _error(where: str, what: str) -> SystemExit:
    return SystemExit(f"mlperf-resnet package: error: {where}: {what}")


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
            print(f"mlperf-resnet package: warning: {key} is not one of MLPerf's system fields; kept as given",
                  file=sys.stderr)
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


def _log_value(log: Path, key: str):
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    return next((ll.value["value"] for ll in parse_file(str(log), ruleset=DEFAULT_RULESET)[0] if ll.key == key), None)


def build_package(org: str, system: str, results, out, *, division: str = "open", status: str | None = None,
                  impl: str = "pytorch", code=REPO_ROOT, overrides: dict | None = None) -> Path:
    """Write OUT/ORG (see the module's doc) and return its path. `status` defaults to the logs'
    submission_status. The system file is what this machine shows, then compliance/systems/<system>.json where
    there is one, then `overrides`. Raises SystemExit with a one-line message on anything it refuses."""
    results, out, code = Path(results), Path(out), Path(code)
    org_dir = out / org
    if org_dir.exists():
        raise _error(str(org_dir), "already exists; choose another --out or remove it first")
    if not (code / "pyproject.toml").is_file():  # e.g. an installed copy: its parent is site-packages
        raise _error(f"--code {code}", "no pyproject.toml there, so not this repository's checkout; "
                     "pass --code /path/to/the/repository")
    logs = sorted(results.glob("result_*.txt"))
    if not logs:
        raise _error(f"--results {results}", "no result_*.txt there; point it at the folder of a system's logs, "
                     "e.g. results/<system>/resnet")
    for flag, value in (("--org", org), ("--system", system), ("--impl", impl)):
        if not value or "/" in value or value.startswith("."):
            raise _error(f"{flag} {value!r}", "must be a plain folder name")
    log_division = _log_value(logs[0], "submission_division")
    if log_division not in (None, division):
        raise _error(f"{logs[0]}", f"logs submission_division {log_division!r} but --division {division!r}; "
                     "they must agree (the system file decides which checks run)")
    status = status or _log_value(logs[0], "submission_status") or "research"
    template = SYSTEMS_DIR / f"{system}.json"
    known = json.loads(template.read_text()) if template.is_file() else {}
    desc = apply_overrides(describe_system(org, system, division, status, storage_path=results),
                           merge(known, overrides or {}))

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{org}.", dir=out))
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def run(args) -> int:
    overrides = {}
    if args.system_json:
        try:
            overrides = json.loads(Path(args.system_json).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _error(f"--system-json {args.system_json}", f"{e}; give a JSON object of system fields")
        if not isinstance(overrides, dict):
            raise _error(f"--system-json {args.system_json}", "not a JSON object; give {\"field\": \"value\", ...}")
    overrides = merge(overrides, parse_set(args.set))
    org_dir = build_package(args.org, args.system, args.results, args.out, division=args.division,
                            status=args.status, impl=args.impl, code=args.code, overrides=overrides)
    print(f"packaged {org_dir}")
    if args.no_check:
        return 0
    passed, problems = package_check(org_dir, args.ruleset)
    verdict = "NO ERRORS" if passed else "ERRORS: " + "; ".join(problems)
    print(f"package_checker training {args.ruleset}: {verdict}")
    return 0 if passed else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("package", help="build an MLPerf submission tree from result logs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--org", required=True, help="submitting organisation (the tree's top folder)")
    p.add_argument("--system", required=True, help="system name: results/<system>/ and systems/<system>.json")
    p.add_argument("--results", required=True, metavar="DIR", help="folder holding the result_*.txt logs")
    p.add_argument("--out", required=True, help="where OUT/ORG is made (refused when OUT/ORG exists)")
    p.add_argument("--division", default="open", choices=["open", "closed"], help="default %(default)s")
    p.add_argument("--status", help=f"availability: {', '.join(STATUS)} or the 4.x names "
                   "(default: the logs' submission_status)")
    p.add_argument("--impl", default="pytorch", help="implementation folder name (default %(default)s)")
    p.add_argument("--code", default=str(REPO_ROOT), help="repository to copy (default: this one)")
    p.add_argument("--system-json", metavar="FILE", help="JSON object of system fields that override the detected ones")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one system field (repeatable; other_software_stack.NAME=VERSION for that table)")
    p.add_argument("--ruleset", default=DEFAULT_RULESET, choices=resnet_rulesets(),
                   help="ruleset of the package check (default %(default)s)")
    p.add_argument("--no-check", action="store_true", help="do not run the official package checker")
    p.set_defaults(func=run)


if __name__ == "__main__":
    from resnet.cli import standalone

    sys.exit(standalone(register))
