"""The wheel is the product: built from this tree and installed outside it, it initialises and answers.

The build runs on a copy of the tree (setuptools leaves `build/` and `*.egg-info` where it builds,
and a stale `build/lib` can slip removed files into a wheel). The fresh venv gets the wheel and
nothing of the checkout; the heavy dependencies (torch, llama-cpp, the embedded model) come from
the running environment through a `.pth` line, which adds that site-packages folder to `sys.path`
without running the `.pth` files in it, so an editable install of the checkout there stays inert.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip"]
TRAINING_STACK = ("torch", "transformers", "peft", "matplotlib")  # pyproject's dependencies that image/requirements.in leaves out
pytestmark = pytest.mark.slow


def _source_files() -> list[str]:
    """What a clone holds, plus files not yet added: tracked and untracked, less what git ignores."""
    git = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and os.path.lexists(ROOT / name)]


def _copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, the files the wheel was built from)."""
    tmp = tmp_path_factory.mktemp("build")
    files = _source_files()
    _copy_tree(files, tmp / "src")
    _run(*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", ".", cwd=tmp / "src")
    (wheel,) = (tmp / "dist").glob("appliance-*.whl")
    return wheel, files


def test_the_wheel_holds_every_file_of_the_package(built):
    wheel, files = built
    wanted = {f for f in files if f.startswith("appliance/") and "__pycache__" not in f}
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    assert wanted - shipped == set()
    # the data the appliance reads at run time, named so a reader sees what is at stake
    for name in (
        "appliance/manifests/smollm2-135m-instruct-q4_1.json",
        "appliance/manifests/appliance-manifest.schema.json",
        "appliance/ui/appliance.tcss",
        "appliance/demo/field-manual.jsonl",
        "appliance/demo/overlay/overlay.json",
        "appliance/demo/overlay/overlay.safetensors",
        "appliance/demo/control/control.json",
        "appliance/demo/control/control.safetensors",
    ):
        assert name in shipped


def test_the_installed_wheel_inits_the_demo_and_answers_outside_the_checkout(built, tmp_path):
    wheel, _ = built
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # pip from this environment installs into the fresh venv (`--python`): it sees none of this one
    _run(*PIP, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "appliance-deps.pth").write_text("".join(f"{d}\n" for d in deps))
    # The appliance image installs the runtime lock only (image/requirements.in), not the build
    # station's training stack: shadow that stack here (the venv's own folder comes first on
    # sys.path), so init, the chat's theme and ask prove they never import it.
    for name in TRAINING_STACK:
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"raise ImportError('{name} is not in the appliance image')\n")

    passphrase = tmp_path / "passphrase"
    passphrase.write_text("wheel passphrase\n")
    away = tmp_path / "elsewhere"  # the cwd: the checkout is neither here nor on sys.path
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "APPLIANCE_PASSPHRASE_FILE")}
    env |= {"APPLIANCE_HOME": str(tmp_path / "home"), "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def run(*cmd) -> subprocess.CompletedProcess:
        return _run(*cmd, cwd=away, env=env)

    code = "import appliance, appliance.ui.app as ui, pathlib; print(appliance.__file__, pathlib.Path(ui.__file__).parent / ui.ApplianceApp.CSS_PATH)"
    package, theme = map(Path, run(python, "-c", code).stdout.split())
    assert package.is_relative_to(venv) and theme.is_file()

    appliance = venv / "bin" / "appliance"  # the console script the wheel declares
    init = run(appliance, "init", "--demo", "--passphrase-file", passphrase)
    assert "verified against the built-in manifest" in init.stdout and "installed overlay field-manual-demo" in init.stdout
    assert "control-vector radio-operator v1" in init.stdout
    question = ["Will the supply convoy arrive tomorrow?", "--max-tokens", "4", "--temperature", "0"]
    reply = run(appliance, "ask", *question, "--passphrase-file", passphrase)
    assert reply.stdout.strip()
