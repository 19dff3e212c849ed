"""One set of engine settings: where llama.cpp computes, and with what.

The runtime, the divergence meter's shadow engine and the chat all take one frozen `EngineSettings`,
so the shadow computes exactly where and how the reply did. GPU layers are asked for as a number,
`all` or `auto` (`GpuRequest`; `--gpu-layers` on chat and ask, kept as a vault setting) and resolved
once, against the cards llama.cpp found, by `resolve`:
  1. 0 layers, or no card: the CPU, and no GPU device is even given to llama.cpp (with a card present
     llama.cpp would otherwise still move large prompt batches to it);
  2. a number: that many layers on the first card, the output layer first, then the blocks from the
     last down (llama.cpp's order; `n_layer + 1` is every layer, as `all` says);
  3. `auto`: every layer that fits in the card's free memory beside the KV cache and a compute reserve;
  4. with any layer on a card, one KV sequence: there the decoder keeps nothing between prefills (llama.cpp's
     CUDA kernels are not batch-invariant, decoder.py rule 4), so a second sequence would only hold VRAM.
A request for the GPU that finds no card falls back to the CPU with one line saying why (`resolve`'s
note; `auto` in a build without the CUDA backend says nothing: the CPU is all it has); `--gpu-layers`
given on the command line is refused instead (`require_gpu`, exit 2), before anything is opened.

The GGUF probe at import never takes these: it runs on the CPU (`EngineSettings()`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import UsageError
from .backends import Gpu, gpus, has_gpu_backend, no_gpu_reason

GPU_LAYERS_SETTING = "gpu_layers"  # vault setting: the last `--gpu-layers` chat or ask was given
DEFAULT_GPU_LAYERS = "auto"
COMPUTE_RESERVE = 1 << 30  # bytes of device memory kept for llama.cpp's compute buffers under `auto`

GpuRequest = Union[int, str]  # a layer count, "all" or "auto"


class NoGpu(UsageError):
    """`--gpu-layers` asked for the GPU on a machine where llama.cpp found no usable card."""


@dataclass(frozen=True)
class EngineSettings:
    n_ctx: int = 4096  # the window of one sequence
    n_threads: Optional[int] = None  # None: the thread governor follows the load (threads.py)
    sequences: int = 2  # KV sequences, one per overlay/control state the decoder keeps
    gpu_layers: int = 0  # layers on the card; 0: the CPU alone
    gpu: Optional[Gpu] = None  # the card they are on

    def replace(self, **changes) -> "EngineSettings":
        return EngineSettings(**{**self.__dict__, **changes})

    def device(self, n_layer: int) -> dict:
        """What a reply was computed on, for its provenance: the CPU, or the card and how many of `n_layer + 1` layers."""
        if self.gpu is None or self.gpu_layers == 0:
            return {"name": "cpu"}
        return {"name": self.gpu.description, "gpu_layers": min(self.gpu_layers, n_layer + 1), "of": n_layer + 1}


def device_line(kept: object) -> str:
    """`status`'s line: the card chat and ask would compute on (or the CPU, and why), and the kept `--gpu-layers`."""
    cards = gpus()
    where = (
        f"{cards[0].description}, {cards[0].free >> 20} of {cards[0].total >> 20} MiB free"
        if cards
        else f"cpu ({no_gpu_reason()})"
    )
    return f"device:  {where}; --gpu-layers {kept}"


def parse_request(text: str) -> GpuRequest:
    """`--gpu-layers`'s value: a count >= 0, `all` or `auto`."""
    if text in ("all", "auto"):
        return text
    if text.isdigit() and int(text) <= 100_000:
        return int(text)
    raise ValueError(f"{text!r} is not a layer count, 'all' or 'auto'")


def require_gpu(request: GpuRequest) -> None:
    """A request typed on the command line: one for the GPU on a machine with no usable card is refused."""
    if request != 0 and request != "auto" and not gpus():
        raise NoGpu(f"--gpu-layers {request}: {no_gpu_reason()}; --gpu-layers 0 computes on the CPU")


def resolve(request: GpuRequest, model_path: Path, base: EngineSettings) -> tuple[EngineSettings, Optional[str]]:
    """`base` with the layers and card `request` comes to on this machine, and a note when it falls back to the CPU."""
    if request == 0:
        return base.replace(gpu_layers=0, gpu=None), None
    cards = gpus()
    if not cards:
        # `auto` in a build with no GPU backend is the CPU by design: nothing to say
        quiet = request == "auto" and not has_gpu_backend()
        return base.replace(gpu_layers=0, gpu=None), None if quiet else f"computing on the CPU: {no_gpu_reason()}"
    card, on_card = cards[0], base.replace(sequences=1)  # rule 4
    if request == "all":
        return on_card.replace(gpu_layers=_all_layers(), gpu=card), None
    if request == "auto":
        layers = layers_that_fit(model_path, on_card, card.free)
        note = None if layers else f"computing on the CPU: no layer fits the {card.free >> 20} MiB free on {card.description}"
        return (on_card.replace(gpu_layers=layers, gpu=card), None) if layers else (base.replace(gpu_layers=0, gpu=None), note)
    return on_card.replace(gpu_layers=int(request), gpu=card), None


def _all_layers() -> int:
    return 1 << 20  # llama.cpp caps it at n_layer + 1


def layers_that_fit(model_path: Path, settings: EngineSettings, free: int) -> int:
    """How many layers (of n_layer + 1, the output layer last) fit in `free` bytes beside the KV cache and the reserve."""
    from gguf import GGUFReader  # reads the tensor table only (memory-mapped)

    reader = GGUFReader(model_path)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")

    def number(key: str) -> int:
        return int(reader.fields[f"{arch}.{key}"].parts[-1][0])

    n_layer, n_embd, n_head = number("block_count"), number("embedding_length"), number("attention.head_count")
    n_head_kv = number("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in reader.fields else n_head
    per_block = [0] * n_layer
    other = 0  # the output layer (token embeddings stay on the CPU)
    for t in reader.tensors:
        if t.name.startswith("blk."):
            per_block[int(t.name.split(".")[1])] += int(t.n_bytes)
        elif not t.name.startswith("token_embd"):
            other += int(t.n_bytes)
    # K and V, f16, for every cell of every sequence, per block
    kv_per_block = 2 * 2 * settings.n_ctx * settings.sequences * n_embd // n_head * n_head_kv
    room = free - COMPUTE_RESERVE
    layers = 0
    # llama.cpp puts layers n_layer + 1 - gpu_layers .. n_layer on the card: the output layer first, then the
    # blocks from the last down, each with its KV cache
    for need in [other, *(b + kv_per_block for b in reversed(per_block))]:
        if need > room:
            break
        room -= need
        layers += 1
    return layers
