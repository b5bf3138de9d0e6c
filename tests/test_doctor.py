"""``tuneforge doctor`` on environments built to conflict, and on this one.

A conflicting environment is a folder of ``dist-info`` directories (and a plugin
module) put first on ``PYTHONPATH`` of a real ``tuneforge doctor`` process, so the
real metadata finder, entry points, torch's backend autoload and subprocess imports
are what doctor reads. The only stand-in is ``torch_npu`` (no Ascend runtime exists
here): a module that fails as torch-npu does without Ascend's CANN libraries.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tuneforge import doctor
from tuneforge.api import DoctorChecks, KnownBad
from tuneforge.known_bad import KNOWN_BAD


def fake_dist(site: Path, name: str, version: str, requires=(), entry_points: str = "") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


FAKE_PLUGIN = '''
from tuneforge.api import DoctorChecks, KnownBad, hookimpl

TUNEFORGE_API = "1.0"


@hookimpl
def tuneforge_doctor_checks():
    return DoctorChecks(
        imports={"fakeheavy": "fakeheavy>=1", "fakeabsent": "fakeabsent>=2", "torch_npu": "torch-npu==2.13.0"},
        known_bad=[KnownBad(
            packages={"fakeother": ">=3", "fakeold": "<1.5"},
            why="fakeother 3 calls an API fakeold added in 1.5",
            fix="pip install 'fakeold>=1.5'",
        )],
    )
'''

# Stand-in for torch-npu without Ascend's CANN libraries: importing it fails as the real one does.
STAND_IN_TORCH_NPU = 'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n'


def doctor_process(site: Path, *args, plugins: str):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        TUNEFORGE_LOAD_PLUGINS=plugins,
    )
    env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "doctor", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_conflicting_environment_gets_a_verdict_and_a_fix_for_each_problem(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    fake_dist(
        site, "tuneforge-fakeplug", "1.0", requires=["tuneforge-nowhere>=1", "fakeold>=2", "fakeother"],
        entry_points="[tuneforge]\nfakeplug = fakeplug_plugin\n",
    )
    (site / "fakeplug_plugin.py").write_text(FAKE_PLUGIN)
    fake_dist(site, "fakeold", "1.0")
    fake_dist(site, "fakeother", "3.1")
    (site / "fakeheavy.py").write_text('raise ImportError("fakeheavy.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")\n')
    fake_dist(site, "torch-npu", "2.13.0", entry_points="[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    (site / "torch_npu").mkdir()
    (site / "torch_npu" / "__init__.py").write_text(STAND_IN_TORCH_NPU)

    result = doctor_process(site, plugins="fakeplug")
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr

    def finding(prefix):
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, f"no single line starts with {prefix!r}:\n{result.stdout}"
        return found[0]

    assert finding("problem  tuneforge-fakeplug needs tuneforge-nowhere>=1: ").endswith(
        "tuneforge-nowhere is not installed, but tuneforge-fakeplug needs tuneforge-nowhere>=1; "
        "install it with pip install 'tuneforge-nowhere>=1'."
    )
    assert finding("problem  tuneforge-fakeplug needs fakeold>=2: ").endswith(
        "fakeold 1.0 is installed, but tuneforge-fakeplug needs fakeold>=2; install a version that fits with pip install 'fakeold>=2'."
    )
    assert finding("ok       tuneforge-fakeplug needs fakeother: ").endswith("fakeother 3.1 is installed.")
    assert finding("problem  known bad (fakeplug): ").endswith(
        "fakeother 3.1 and fakeold 1.0 do not work together (fakeother 3 calls an API fakeold added in 1.5); "
        "fix it with pip install 'fakeold>=1.5'."
    )
    assert finding("problem  import fakeheavy (fakeplug): ").endswith(
        "import fakeheavy fails (ImportError: fakeheavy.so: undefined symbol: _ZN3c104cuda9SetDeviceEi); "
        "reinstall it with pip install --force-reinstall 'fakeheavy>=1' (a build that matches the installed torch)."
    )
    assert finding("problem  import fakeabsent (fakeplug): ").endswith(
        "fakeabsent is not installed, but plugin fakeplug needs it; install it with pip install 'fakeabsent>=2'."
    )
    cann = finding("problem  import torch_npu (fakeplug): ")
    assert "torch_npu cannot find Ascend's CANN libraries" in cann and "set_env.sh" in cann
    # torch itself fails on import, through its autoload of torch_npu: recognised from torch's own error text
    autoload = finding("problem  torch: ")
    assert "torch loads the installed torch_npu on import" in autoload
    assert "(torch_npu cannot find Ascend's CANN libraries)" in autoload
    assert "pip uninstall -y torch-npu (or set TORCH_DEVICE_BACKEND_AUTOLOAD=0)" in autoload
    # ... and what works once the autoload is off is still reported, devices included
    assert any(line.startswith("torch ") and "probed with TORCH_DEVICE_BACKEND_AUTOLOAD=0" in line for line in lines)
    assert finding("ok       device cpu (tuneforge.builtin.devices): ").endswith("available.")
    assert finding("ok       plugin fakeplug: ").endswith("tuneforge-fakeplug 1.0 loads.")
    assert "  fakeplug  (tuneforge-fakeplug 1.0): tuneforge-nowhere missing, fakeold 1.0, fakeother 3.1" in lines
    assert lines[-1] == "7 problem(s), 0 warning(s)."
    for line in lines:
        if line.startswith("problem  "):
            assert "pip " in line and line.endswith("."), line  # each problem says how to fix it


def test_this_environment_reports_no_problem_for_the_core_and_json_parses(tmp_path):
    result = doctor_process(tmp_path, "--json", plugins="")
    report = json.loads(result.stdout)
    problems = [f for f in report["findings"] if f["verdict"] == "problem"]
    assert problems == [] and result.returncode == 0, problems
    assert report["torch"]["version"] and report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert {"name": "cpu", "plugin": "tuneforge.builtin.devices", "available": True, "error": None} in report["devices"]
    requirements = {r["name"]: r for r in report["tuneforge"]["requirements"]}
    assert requirements["torch"]["installed"] and requirements["transformers"]["wanted"]
    topics = {f["topic"] for f in report["findings"]}
    assert {"torch", "tuneforge needs torch" + requirements["torch"]["wanted"]} <= topics


def test_the_core_known_bad_combination_is_found_when_installed(tmp_path, monkeypatch):
    (numpy_with_old_torch,) = [entry for entry in KNOWN_BAD if set(entry.packages) == {"torch", "numpy"}]
    assert doctor.known_bad_sentence(numpy_with_old_torch) is None  # not the case here
    fake_dist(tmp_path, "torch", "2.2.2")
    fake_dist(tmp_path, "numpy", "2.0.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert doctor.known_bad_sentence(numpy_with_old_torch) == (
        "torch 2.2.2 and numpy 2.0.1 do not work together (torch wheels before 2.3 were built against NumPy 1 and "
        "cannot use NumPy 2 (tensor.numpy() and torch.from_numpy fail)); fix it with pip install 'numpy<2'."
    )


def test_a_hook_that_raises_or_answers_wrongly_is_a_warning_not_a_crash():
    from tuneforge.api import hookimpl
    from tuneforge.plugins import PluginManager

    class Raising:
        @hookimpl
        def tuneforge_doctor_checks(self):
            raise RuntimeError("boom")

    class Wrong:
        @hookimpl
        def tuneforge_doctor_checks(self):
            return {"imports": {"x": "x"}}

    class Right:
        @hookimpl
        def tuneforge_doctor_checks(self):
            return DoctorChecks(known_bad=[KnownBad(packages={"a": "<1"}, why="w", fix="pip install 'a>=1'")])

    manager = PluginManager()
    for name, plugin in (("raising", Raising()), ("wrong", Wrong()), ("right", Right())):
        manager.register_plugin(plugin, name, f"{name}-dist", "1.0")
    checks, findings = doctor._doctor_checks(manager)
    assert list(checks) == ["right"] and checks["right"].known_bad[0].packages == {"a": "<1"}
    assert sorted((f.verdict, f.topic) for f in findings) == [("warning", "raising"), ("warning", "wrong")]
    assert any("raised RuntimeError: boom" in f.message for f in findings)


def test_the_torch_npu_failures_are_recognised_from_their_text():
    autoload = (
        "RuntimeError: Failed to load the backend extension: torch_npu. "
        "You can disable extension auto-loading with TORCH_DEVICE_BACKEND_AUTOLOAD=0."
    )
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in doctor.explain_import_failure("torch", autoload)
    assert "torch_npu cannot find" not in doctor.explain_import_failure("torch", autoload)  # the cause is not in this text
    cann = "File \".../torch_npu/__init__.py\"\nImportError: libascendcl.so: cannot open shared object file"
    assert "cannot find Ascend's CANN libraries" in doctor.explain_import_failure("torch_npu", cann)
    assert doctor.explain_import_failure("vllm", "ImportError: undefined symbol: _ZN3c10") is None
