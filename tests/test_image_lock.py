"""The image's lock follows the project's pins: the appliance in the image runs what the tests run.

image/requirements.in names the runtime dependencies at pyproject.toml's pins (the training stack
left out), image/requirements.lock pins each of them with a hash, and the llama-cpp-python source
the image compiles is the version pyproject.toml pins.
"""

import re
import tomllib
from pathlib import Path

import pytest
from test_packaging import TRAINING_STACK

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"([A-Za-z0-9_.-]+)==([^\s;]+)")


def _pins(lines) -> dict[str, str]:
    return {m.group(1).lower().replace("_", "-"): m.group(2) for line in lines if (m := PIN.match(line.strip()))}


def test_the_image_pins_are_the_project_pins():
    project = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    wanted = _pins((ROOT / "image" / "requirements.in").read_text().splitlines())
    locked = _pins((ROOT / "image" / "requirements.lock").read_text().splitlines())
    sdist = _pins((ROOT / "image" / "llama-cpp-python.lock").read_text().splitlines())
    runtime = {name: v for name, v in project.items() if name not in TRAINING_STACK and name != "llama-cpp-python"}
    assert {n: wanted.get(n) for n in runtime} == runtime  # every runtime dependency, at the project's pin
    assert {n: locked.get(n) for n in wanted} == wanted  # and each one locked at that pin
    assert sdist == {"llama-cpp-python": project["llama-cpp-python"]}


@pytest.mark.parametrize("lock", ["requirements.lock", "cuda.lock", "cuda-toolkit.lock"])
def test_every_locked_wheel_has_a_hash(lock):
    lines = [line for line in (ROOT / "image" / lock).read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9-]+==\S+ --hash=sha256:[0-9a-f]{64}", line) for line in lines)


def test_the_cuda_compiler_is_the_cuda_version_of_the_runtime_libraries_the_image_carries():
    """image/cuda-module compiles against the runtime libraries of image/cuda.lock with the nvcc of
    image/cuda-toolkit.lock: one CUDA major.minor for all, or the module links what the image lacks."""
    pins = {**_pins((ROOT / "image" / "cuda.lock").read_text().splitlines()),
            **_pins((ROOT / "image" / "cuda-toolkit.lock").read_text().splitlines())}  # fmt: skip
    assert {"nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-cublas"} <= pins.keys()
    assert {".".join(version.split(".")[:2]) for version in pins.values()} == {"13.0"}
