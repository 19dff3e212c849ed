"""Run inside the image build (Containerfile): the build fails unless the image can do its job offline.

1. the only network interface is `lo` (the build runs with --network=none: nothing was fetched);
2. the runtime's libraries import (llama_cpp, textual, gnupg, cryptography, the appliance's CLI);
3. llama.cpp registers a CPU backend: the portable build found a variant this CPU runs;
4. `appliance --version` runs from the installed console script;
5. with --cuda (the CUDA variant, Containerfile.cuda): the CUDA module is beside the CPU variants and
   every library it links resolves inside the image except the driver's `libcuda.so.1` (if it links it), which the
   host passes in (CDI); with no driver here, llama.cpp offers no card and says why.
"""

import os
import subprocess
import sys

interfaces = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
if not interfaces:  # /sys may be absent in a build container: /proc/net/dev lists the same
    with open("/proc/net/dev") as f:
        interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
if interfaces != ["lo"]:
    sys.exit(f"selftest: network interfaces {interfaces}: the build must run with --network=none")

import cryptography  # noqa: E402, F401
import gnupg  # noqa: E402, F401
import llama_cpp  # noqa: E402, F401
import textual  # noqa: E402, F401

import appliance.cli.main  # noqa: E402, F401
from appliance.runtime.backends import CUDA_MODULE, gpus, library_dir, load_backends, no_gpu_reason  # noqa: E402

if load_backends() < 1:
    sys.exit("selftest: llama.cpp registered no CPU backend")

if "--cuda" in sys.argv[1:]:
    module = library_dir() / CUDA_MODULE
    if not module.is_file():
        sys.exit(f"selftest: the CUDA variant has no {module}")
    # Its siblings (libggml-base) are in the process when llama.cpp loads it; the rest must resolve from the image.
    siblings = {**os.environ, "LD_LIBRARY_PATH": str(library_dir())}
    ldd = subprocess.run(["ldd", str(module)], capture_output=True, text=True, check=True, env=siblings).stdout
    missing = sorted(line.split()[0] for line in ldd.splitlines() if "not found" in line)
    if set(missing) - {"libcuda.so.1"}:
        sys.exit(f"selftest: {CUDA_MODULE} cannot resolve {missing} (only the host's libcuda.so.1 may be missing)")
    if gpus():
        sys.exit("selftest: a card answered inside the image build")
    print(f"selftest: cuda: {CUDA_MODULE} links resolve{' but the driver' if missing else ''}; here: {no_gpu_reason()}")

version = subprocess.run([os.path.join(sys.prefix, "bin", "appliance"), "--version"], capture_output=True, text=True, check=True)
print(f"selftest: ok: interfaces {interfaces}; {version.stdout.strip()}")
