"""llama.cpp's backends in a portable build: the CPU variant for this CPU, and the CUDA backend where a card answers.

The appliance image carries llama.cpp built with `GGML_BACKEND_DL=ON` and `GGML_CPU_ALL_VARIANTS=ON`
(image/build): one CPU backend per instruction-set level (`libggml-cpu-haswell.so`, ...) and, in the
GPU build, `libggml-cuda.so`, none linked in, so one install runs on a machine whose CPU lacks the
build station's instructions and on one with no card or no NVIDIA driver. Such a build loads no
backend by itself (llama.cpp refuses to load a model until one is loaded), and llama-cpp-python
does not bind the loader, so `ggml_backend_load_all_from_path` is called here on the libggml that
llama-cpp-python loaded: it scores every CPU variant in that folder against this CPU and loads the
best, and loads the CUDA backend if its library and the host's driver load and it finds a device.

A build with its CPU backend linked in (the default `-march=native` build) already has a backend
registered: nothing is loaded, nothing changes, and it has no GPU.
"""

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llama_cpp.llama_cpp as C_api

CUDA_MODULE = "libggml-cuda.so"
_GPU = 1  # GGML_BACKEND_DEVICE_TYPE_GPU (ggml-backend.h): a card with its own memory


@dataclass(frozen=True)
class Gpu:
    index: int  # among the registered devices, as llama_model_params.devices takes them
    name: str  # ggml's ("CUDA0")
    description: str  # the card's ("NVIDIA H100 80GB HBM3")
    free: int  # bytes of device memory free now
    total: int


def library_dir() -> Path:
    """Where llama-cpp-python loaded libllama and libggml from (honours its LLAMA_CPP_LIB_PATH)."""
    return Path(C_api._base_path)


@cache
def _ggml() -> ctypes.CDLL:
    # By its soname, the file libllama loaded: a wheel stores libggml.so and libggml.so.0 as two copies,
    # and opening the other copy would give a second, separate backend registry.
    ggml = ctypes.CDLL(str(library_dir() / "libggml.so.0"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for f in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
        f.restype, f.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype, ggml.ggml_backend_dev_type.argtypes = ctypes.c_int, [ctypes.c_void_p]
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    return ggml


def load_backends() -> int:
    """Load the best CPU variant and any GPU backend if no backend is registered yet; returns how many are registered."""
    ggml = _ggml()
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path(str(library_dir()).encode())
    return ggml.ggml_backend_reg_count()


def gpus() -> list[Gpu]:
    """The cards llama.cpp can offload to, with their free memory now (none in a CPU-only build); backends loaded first."""
    load_backends()
    ggml = _ggml()
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        if ggml.ggml_backend_dev_type(dev) != _GPU:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name, description = ggml.ggml_backend_dev_name(dev), ggml.ggml_backend_dev_description(dev)
        found.append(Gpu(i, name.decode(), description.decode(errors="replace"), free.value, total.value))
    return found


def device_pointer(index: int) -> int:
    """The ggml device handle of registered device `index` (for llama_model_params.devices)."""
    return _ggml().ggml_backend_dev_get(index)


def has_gpu_backend() -> bool:
    """Whether this build carries the CUDA backend (the GPU image's does; the CPU image's and a native build do not)."""
    return (library_dir() / CUDA_MODULE).exists()


def no_gpu_reason() -> str:
    """Why `gpus()` is empty, in a few words."""
    if not has_gpu_backend():
        return "this build of llama.cpp has no GPU backend"
    return f"{CUDA_MODULE} found no usable card (no NVIDIA driver, or no device passed to this container)"
