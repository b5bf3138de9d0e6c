"""``tuneforge doctor``: the environment, and whether its parts work together.

It reports Python, torch and its build, the devices each device plugin finds, every
installed plugin with its distribution's version and its dependencies' versions; and
checks each distribution's declared requirements (``tuneforge.versions``), the
known-bad combinations (the core's in ``tuneforge.known_bad``, each plugin's through
``tuneforge_doctor_checks``) and that each plugin's heavy modules import.

Everything that imports torch or a heavy module runs in a subprocess with a timeout,
so a crashing import (torch-npu without Ascend's CANN libraries, a flash-attn built
for another torch) is reported instead of taking doctor down. The device probe is
``python -m tuneforge.doctor``: it imports torch and asks each registered ``Device``
record, and prints JSON.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from . import versions
from .known_bad import KNOWN_BAD
from .records import DoctorChecks, KnownBad

AUTOLOAD_ENV = "TORCH_DEVICE_BACKEND_AUTOLOAD"


@dataclass
class Finding:
    verdict: str  # ok / warning / problem
    topic: str
    message: str  # one sentence; for a problem it says how to fix it

    def line(self) -> str:
        return f"{self.verdict:<8} {self.topic}: {self.message}"


# -- recognising import failures ------------------------------------------------------

_CANN_MARKS = ("libhccl", "libascend", "libacl", "libge_runner", "libgraph.so", "libruntime.so", "ascend-toolkit", "cann")


def explain_import_failure(module: str, text: str) -> str | None:
    """A sentence for an import failure doctor recognises (torch-npu's), else None."""
    lowered = text.lower()
    autoload = AUTOLOAD_ENV in text or ("failed to load the backend extension" in lowered and "torch_npu" in lowered)
    cann = "torch_npu" in lowered and any(mark in lowered for mark in _CANN_MARKS)
    if autoload:
        cause = " (torch_npu cannot find Ascend's CANN libraries)" if cann else ""
        return (
            f"import {module} fails because torch loads the installed torch_npu on import and torch_npu does not load here{cause}; "
            f"on a machine without an Ascend NPU uninstall it with pip uninstall -y torch-npu (or set {AUTOLOAD_ENV}=0), "
            f"and on an Ascend machine install the CANN toolkit and source its set_env.sh "
            f"(/usr/local/Ascend/ascend-toolkit/set_env.sh) before running tuneforge."
        )
    if cann:
        return (
            f"import {module} fails because torch_npu cannot find Ascend's CANN libraries; install the CANN toolkit and "
            f"source its set_env.sh (/usr/local/Ascend/ascend-toolkit/set_env.sh), or on a machine without an Ascend NPU "
            f"uninstall it with pip uninstall -y torch-npu."
        )
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


# -- subprocesses ---------------------------------------------------------------------


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env if env is not None else dict(os.environ),
    )


def _finish(process: subprocess.Popen, timeout: float, started: float) -> tuple[int | None, str, str, float]:
    """(exit status or None on timeout, stdout, stderr, seconds)."""
    try:
        out, err = process.communicate(timeout=max(0.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return None, out, err, time.monotonic() - started
    return process.returncode, out, err, time.monotonic() - started


def _probe_command() -> list[str]:
    return ["-m", "tuneforge.doctor"]


# -- the report -----------------------------------------------------------------------


def _requirements_of(distribution: str) -> list[dict]:
    """The declared install requirements of ``distribution`` (no extras') with what is installed."""
    return [
        {"name": r.name, "wanted": str(r.specifier), "installed": _installed(r.name)}
        for r in versions.declared_requirements(distribution)
    ]


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _doctor_checks(manager) -> tuple[dict[str, DoctorChecks], list[Finding]]:
    """Each loaded plugin's ``tuneforge_doctor_checks`` answer, called one plugin at a time."""
    checks, findings = {}, []
    for impl in manager.hook.tuneforge_doctor_checks.get_hookimpls():
        try:
            answer = impl.function()
        except Exception as exc:
            findings.append(Finding(
                "warning", impl.plugin_name,
                f"its tuneforge_doctor_checks raised {type(exc).__name__}: {exc}; its own checks were skipped, "
                f"so report this to its authors.",
            ))
            continue
        if answer is None:
            continue
        if not isinstance(answer, DoctorChecks) or not all(isinstance(k, KnownBad) for k in answer.known_bad):
            findings.append(Finding(
                "warning", impl.plugin_name,
                "its tuneforge_doctor_checks did not return a DoctorChecks of KnownBad entries; its own checks were "
                "skipped, so report this to its authors.",
            ))
            continue
        checks[impl.plugin_name] = answer
    return checks, findings


def known_bad_sentence(entry: KnownBad) -> str | None:
    """The problem sentence when every package of ``entry`` is installed in its range, else None."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    installed = []
    for name, wanted in entry.packages.items():
        version = _installed(name)
        try:
            if version is None or not SpecifierSet(wanted).contains(version, prereleases=True):
                return None
        except InvalidSpecifier:
            return None
        installed.append(f"{name} {version}")
    fix = entry.fix.rstrip(".")
    return f"{' and '.join(installed)} do not work together ({entry.why}); fix it with {fix}."


def diagnose(timeout: float = 120.0) -> dict:
    """Everything doctor knows, as a JSON-able dict with its ``findings``."""
    from . import __version__
    from .plugins import get_plugin_manager
    from .registry import get_registry

    started = time.monotonic()
    probe = _start(_probe_command())
    manager = get_plugin_manager()
    get_registry()  # fills in what each plugin registers, and sets aside a plugin whose hooks fail
    checks, findings = _doctor_checks(manager)

    imports = {}  # module -> (owner plugin, what to install, process)
    for plugin, answer in checks.items():
        for module, requirement in answer.imports.items():
            if module not in imports:
                imports[module] = (plugin, requirement, _start(["-c", f"import {module}"]))

    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        "tuneforge": {"version": __version__, "requirements": _requirements_of("tuneforge")},
        "torch": None,
        "devices": [],
        "plugins": [],
    }

    # Plugins, their distributions and their dependencies.
    for info in manager.infos.values():
        if info.builtin:
            continue
        report["plugins"].append({
            "name": info.name, "distribution": info.distribution, "version": info.version, "error": info.error,
            "registers": info.registers, "requirements": _requirements_of(info.distribution),
            "imports": dict(checks[info.name].imports) if info.name in checks else {},
        })
        if info.error:
            findings.append(Finding(
                "problem", f"plugin {info.name}",
                f"{info.distribution} {info.version} failed to load ({info.error}); upgrade it with "
                f"pip install --upgrade {info.distribution}, or uninstall it with pip uninstall -y {info.distribution}.",
            ))
        else:
            findings.append(Finding("ok", f"plugin {info.name}", f"{info.distribution} {info.version} loads."))

    # Declared requirement ranges.
    for owner, requirement in versions._requirements():
        sentence = versions._check(owner, requirement)
        name = f"{requirement.name}{requirement.specifier}"
        if sentence:
            findings.append(Finding("problem", f"{owner} needs {name}", sentence))
        else:
            findings.append(Finding("ok", f"{owner} needs {name}", f"{requirement.name} {_installed(requirement.name)} is installed."))
    for sentence in versions._transformers_minimums():
        findings.append(Finding("problem", "transformers", sentence))

    # Known-bad combinations.
    for owner, entries in [("tuneforge", KNOWN_BAD), *((plugin, answer.known_bad) for plugin, answer in checks.items())]:
        for entry in entries:
            sentence = known_bad_sentence(entry)
            if sentence:
                findings.append(Finding("problem", f"known bad ({owner})", sentence))

    # torch, its build and the devices.
    status, out, err, seconds = _finish(probe, timeout, started)
    findings += _read_probe(report, status, out, err, timeout)
    if report["torch"] is None and AUTOLOAD_ENV in err:
        # Ask again with the autoload off: what works once it is set, and whether torch_npu imports at all.
        again = _start(_probe_command(), env=dict(os.environ, **{AUTOLOAD_ENV: "0"}))
        status, out, err, _ = _finish(again, timeout, time.monotonic())
        if status == 0:
            findings += _read_probe(report, status, out, err, timeout)[1:]  # the devices; torch's own line is the problem above
            report["torch"]["probed_with"] = f"{AUTOLOAD_ENV}=0"

    # Heavy imports.
    for module, (plugin, requirement, process) in imports.items():
        status, out, err, seconds = _finish(process, timeout, started)
        topic = f"import {module} ({plugin})"
        if status == 0:
            findings.append(Finding("ok", topic, f"imports in {seconds:.1f} s."))
        elif status is None:
            findings.append(Finding(
                "problem", topic,
                f"import {module} did not finish in {timeout:.0f} s; run python -c 'import {module}' to see where it "
                f"hangs, and reinstall it with pip install --force-reinstall '{requirement}'.",
            ))
        elif f"No module named '{module.split('.')[0]}'" in err:
            findings.append(Finding(
                "problem", topic, f"{module} is not installed, but plugin {plugin} needs it; install it with pip install '{requirement}'."
            ))
        else:
            sentence = explain_import_failure(module, err) or (
                f"import {module} fails ({_last_line(err)}); reinstall it with pip install --force-reinstall '{requirement}' "
                f"(a build that matches the installed torch)."
            )
            findings.append(Finding("problem", topic, sentence))

    report["findings"] = [asdict(finding) for finding in findings]
    report["problems"] = sum(finding.verdict == "problem" for finding in findings)
    report["warnings"] = sum(finding.verdict == "warning" for finding in findings)
    return report


def _read_probe(report: dict, status, out: str, err: str, timeout: float) -> list[Finding]:
    if status is None:
        return [Finding(
            "problem", "torch",
            f"import torch did not finish in {timeout:.0f} s; run python -c 'import torch' to see where it hangs, "
            f"and reinstall it with pip install --force-reinstall torch.",
        )]
    if status != 0:
        if "No module named 'torch'" in err:
            return [Finding(
                "problem", "torch",
                "torch is not installed; install it with pip install torch (https://pytorch.org shows the command for your CUDA).",
            )]
        sentence = explain_import_failure("torch", err) or (
            f"import torch fails ({_last_line(err)}); reinstall it with pip install --force-reinstall torch."
        )
        return [Finding("problem", "torch", sentence)]
    probed = json.loads(out.strip().splitlines()[-1])
    report["torch"], report["devices"] = probed["torch"], probed["devices"]
    findings = [Finding("ok", "torch", f"torch {probed['torch']['version']} ({build_of(probed['torch'])}) imports.")]
    for device in probed["devices"]:
        topic = f"device {device['name']} ({device['plugin']})"
        if device.get("error"):
            findings.append(Finding("warning", topic, f"asking whether it is available raised {device['error']}; it is treated as not available."))
        else:
            findings.append(Finding("ok", topic, "available." if device["available"] else "not available here."))
    return findings


def build_of(torch_info: dict) -> str:
    if torch_info.get("cuda"):
        return f"CUDA {torch_info['cuda']} build"
    if torch_info.get("hip"):
        return f"ROCm {torch_info['hip']} build"
    return "CPU build"


def render(report: dict) -> list[str]:
    """The report as lines for a person: the environment, then one line per finding."""
    python = report["python"]
    lines = [f"Python {python['version']} ({python['executable']})", f"tuneforge {report['tuneforge']['version']}"]
    torch_info = report["torch"]
    if torch_info:
        how = f", probed with {torch_info['probed_with']}" if torch_info.get("probed_with") else ""
        lines.append(f"torch {torch_info['version']} ({build_of(torch_info)}{how})")
        devices = ", ".join(
            f"{d['name']} [{d['plugin']}] {'available' if d['available'] else 'not available'}" for d in report["devices"]
        )
        lines.append(f"devices: {devices or 'none registered'}")
    else:
        lines.append("torch: does not import (see below)")
    lines.append("plugins:" if report["plugins"] else "plugins: none installed beyond the core's own")
    for plugin in report["plugins"]:
        deps = ", ".join(f"{r['name']} {r['installed'] or 'missing'}" for r in plugin["requirements"]) or "no dependencies"
        lines.append(f"  {plugin['name']}  ({plugin['distribution']} {plugin['version']}): {deps}")
    lines.append("")
    lines += [Finding(**finding).line() for finding in report["findings"]]
    lines.append("")
    lines.append(f"{report['problems']} problem(s), {report['warnings']} warning(s).")
    return lines


def _probe() -> dict:
    """Run in the probe subprocess: torch's version and build, and each Device record's answer."""
    import torch

    from .registry import get_registry

    registry = get_registry()
    devices = []
    for device in sorted(registry.all("devices"), key=lambda d: -d.priority):
        entry = {"name": device.name, "plugin": registry.provider("devices", device.name), "available": False, "error": None}
        try:
            entry["available"] = bool(device.is_available())
        except Exception as exc:  # a device plugin's failure is reported, never fatal
            entry["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        devices.append(entry)
    build = {"version": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}
    return {"torch": build, "devices": devices}


if __name__ == "__main__":
    print(json.dumps(_probe()))
