"""The CPU backend of a portable llama.cpp build, chosen at run time for the CPU it runs on.

The appliance image carries llama.cpp built with `GGML_BACKEND_DL=ON` and `GGML_CPU_ALL_VARIANTS=ON`
(image/build): one CPU backend per instruction-set level (`libggml-cpu-haswell.so`, ...), none linked
in, so a machine whose CPU lacks the build station's instructions still runs it. Such a build loads
no backend by itself (llama.cpp refuses to load a model until one is loaded), and llama-cpp-python
does not bind the loader, so `ggml_backend_load_all_from_path` is called here on the libggml that
llama-cpp-python loaded: it scores every variant in that folder against this CPU and loads the best.

A build with its CPU backend linked in (the default `-march=native` build) already has a backend
registered: nothing is loaded, nothing changes.
"""

import ctypes
from pathlib import Path

import llama_cpp.llama_cpp as C_api


def library_dir() -> Path:
    """Where llama-cpp-python loaded libllama and libggml from (honours its LLAMA_CPP_LIB_PATH)."""
    return Path(C_api._base_path)


def load_cpu_backends() -> int:
    """Load the best CPU variant if no backend is registered yet; returns how many backends are registered."""
    # By its soname, the file libllama loaded: a wheel stores libggml.so and libggml.so.0 as two copies,
    # and opening the other copy would give a second, separate backend registry.
    ggml = ctypes.CDLL(str(library_dir() / "libggml.so.0"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(library_dir()).encode())
    return ggml.ggml_backend_reg_count()
