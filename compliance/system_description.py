"""The system description of a submission (OUT/ORG/systems/SYSTEM.json): what this machine shows, with the facts
of a known system (compliance/systems/SYSTEM.json) and the user's fields on top. Used by `package`."""
import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

from compliance import ComplianceError

# Hardware facts of the systems our configs name (config_<SYSTEM>.sh), as NVIDIA published them for DGX A100
# (training_results_v2.0) and DGX H100 (v4.0, "Eos" nodes): they win over what the packaging machine detects.
SYSTEMS_DIR = Path(__file__).resolve().parent / "systems"
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


def _error(where: str, what: str) -> ComplianceError:
    return ComplianceError(f"{where}: {what}")


def _warn(message: str) -> None:
    print(f"mlperf-resnet package: warning: {message}", file=sys.stderr, flush=True)


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
