"""A thin, owned wrapper over llama-cpp-python's low-level C API.

One model, one context, and in it `n_seq` KV sequences (seq_id 0, 1, ...), each
in its own stream of `n_ctx` cells (llama.cpp's non-unified KV cache: a
sequence attends only to its own stream, so it computes exactly what a
one-sequence context would). Input is either token ids or input embeddings
(`batch.embd`), which is how the overlay enters llama.cpp without touching its
weights. A decode can be stopped part-way (`stop_on`): llama.cpp asks an
abort callback after every node of the compute graph, so a kill ends even a
long prefill within one matrix product. A quick decode step (one token, the last
one under `QUICK_STEP_SECONDS`) runs without it and is asked once, before it: the
callback is a Python call at each of the graph's nodes (about 600 for the embedded
model, 3-5% of its step), and such a step ends well within the kill's 100 ms.
"""

import ctypes
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import llama_cpp as C
import llama_cpp.llama_cpp as C_api  # the module the high-level Llama reads its defaults from
import numpy as np

from ..errors import ContextOverflow, ModelFailed
from .backends import device_pointer, load_backends
from .engine_settings import EngineSettings
from .threads import ThreadGovernor


@C.llama_log_callback
def _quiet(level, text, user_data):  # llama.cpp logs to stderr by default; the CLI owns stderr
    pass


# Flash attention is off: with it, the same tokens give different logits when a context is split
# into batches differently or the thread count changes. Without it, every batch of two or more
# tokens computes bit for bit what one whole prefill computes, with any thread count; only a batch
# of a single token (a decode step) rounds differently. The decoder builds on exactly that.
FLASH_ATTENTION = False
QUICK_STEP_SECONDS = 0.04  # a step this quick is asked to stop only before it (docs/design.md: a kill in 100 ms)


class DecodeStopped(Exception):
    """A decode was stopped by its event (`LlamaEngine.stop_on`): the batch it was in is not in the cache, earlier ones are."""


_backend_ready = False
_default_model_params = C.llama_model_default_params


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        C.llama_log_set(_quiet, ctypes.c_void_p(0))
        load_backends()  # a portable build (the appliance image's) picks its CPU variant and any GPU here
        C.llama_backend_init()
        _backend_ready = True


def model_params(settings: EngineSettings = EngineSettings()) -> "C.llama_model_params":
    """Load parameters shared by our runtime and the llama-cpp-python reference.

    Extra buffer types (weight repacking, e.g. for AMX) are off: the AMX path
    crashes on CPUs whose kernel does not grant AMX tile state to the process,
    and plain CPU buffers are what every machine can run.

    The devices are named, never left to llama.cpp: by default it offloads every layer to every card it
    finds, and even with no layer on a card it moves large prompt batches there. On the CPU the list is
    empty; else it is the one card of `settings`.
    """
    params = _default_model_params()
    params.use_extra_bufts = False
    card = settings.gpu.index if settings.gpu is not None and settings.gpu_layers > 0 else None
    params.devices = ctypes.addressof(_device_list(card))
    params.n_gpu_layers = settings.gpu_layers if card is not None else 0
    return params


@cache
def _device_list(card: int | None) -> ctypes.Array:
    """A NULL-terminated device list of one card, or none; cached, so it lives as long as any load reading it."""
    return (ctypes.c_void_p * 2)(device_pointer(card) if card is not None else None, None)


class LlamaEngine:
    def __init__(self, path: Path, settings: EngineSettings | None = None, n_batch: int = 512, **shorthand):
        """`settings`, or as a shorthand its fields (`n_ctx=256, n_threads=2`; one sequence unless asked)."""
        _init_backend()
        settings = settings or EngineSettings(**{"sequences": 1, **shorthand})
        self.settings = settings
        n_ctx, n_threads, n_seq = settings.n_ctx, settings.n_threads, settings.sequences
        self.model = C.llama_model_load_from_file(str(path).encode(), model_params(settings))
        if not self.model:
            raise ModelFailed(f"{path}: llama.cpp could not load the model")
        self.vocab = C.llama_model_get_vocab(self.model)
        cparams = C.llama_context_default_params()
        # n_ctx is the window of one sequence; non-unified, the context's cells are split evenly among them.
        cparams.n_ctx, cparams.n_seq_max, cparams.kv_unified = n_ctx * n_seq, n_seq, False
        cparams.n_batch, cparams.n_ubatch = n_batch, n_batch  # equal: llama.cpp never splits our batches further
        cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED if FLASH_ATTENTION else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # None: the governor follows the load (threads.py); a number is kept as it is.
        self.governor: ThreadGovernor | None = None
        if n_threads is None:
            self.governor = ThreadGovernor()
            n_threads = self.governor.threads
        self.n_threads = n_threads
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        self.ctx = C.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ModelFailed("llama.cpp could not create a context")
        self.memory = C.llama_get_memory(self.ctx)
        self.n_ctx, self.n_seq, self.n_batch = C.llama_n_ctx_seq(self.ctx), n_seq, n_batch
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.n_embd = C.llama_model_n_embd(self.model)
        self.n_layer = C.llama_model_n_layer(self.model)
        self._logits_row = ctypes.c_float * self.n_vocab
        self._token_batch = C.llama_batch_init(n_batch, 0, 1)
        self._embd_batch = C.llama_batch_init(n_batch, self.n_embd, 1)
        # (n_batch, n_embd) float32 over the batch's embd buffer: a row copied in is one numpy assignment
        self._embd_rows = np.ctypeslib.as_array(self._embd_batch.embd, shape=(n_batch, self.n_embd))
        self._piece = ctypes.create_string_buffer(256)
        self.stopping: threading.Event | None = None  # the event of the `stop_on` block a decode is in, for a shadow engine
        self._stop: tuple | None = None  # in a `stop_on` block: (whether to stop, its abort callback)
        self._installed = None  # the abort callback llama.cpp has now (None: none)
        self._step_seconds = float("inf")  # the last one-token decode's; the first step is asked after every node

    @property
    def batch_invariant(self) -> bool:
        """Whether a context split into batches of two or more gives one whole prefill's logits bit for bit (FLASH_ATTENTION):
        true on the CPU; llama.cpp's CUDA kernels tile by batch shape, so not with any layer on a card."""
        return self.settings.gpu is None or self.settings.gpu_layers == 0

    @contextmanager
    def stop_on(self, event: threading.Event | None) -> Iterator[None]:
        """Inside, a decode stops within one graph node of `event` being set, raising DecodeStopped."""
        if event is None:
            yield
            return
        # llama.cpp calls it after every graph node, on the thread that called llama_decode (ctypes takes
        # the GIL for it: about a microsecond a node), so it is set only while a caller can be stopped.
        interrupted = threading.Event()

        def stop(_data=None) -> bool:
            return event.is_set() or interrupted.is_set()

        with _interrupt_held(interrupted):
            self._stop = (stop, C.ggml_abort_callback(stop))
            self.stopping = event
            try:
                yield
            finally:
                self.stopping = self._stop = None
                self._install(None)

    def set_threads(self, n: int) -> None:
        """Threads for the next decodes (prompt batches and single tokens alike); the numerics do not depend on it."""
        C.llama_set_n_threads(self.ctx, n, n)
        self.n_threads = n

    # -- vocabulary and metadata ------------------------------------------

    def metadata(self, key: str) -> str | None:
        """A metadata value as text, read whole: llama.cpp says its length first."""
        n = C.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if n < 0:
            return None
        buf = ctypes.create_string_buffer(n + 1)
        C.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.raw[:n].decode("utf-8", errors="replace")

    def bos_text(self) -> str:
        """The BOS token's text when the model wants one at the start of a prompt, else ""."""
        return self.token_text(C.llama_vocab_bos(self.vocab)) if C.llama_vocab_get_add_bos(self.vocab) else ""

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (C.llama_token * cap)()
        n = C.llama_tokenize(self.vocab, data, len(data), out, cap, False, special)
        if n < 0:
            raise ModelFailed("tokenizer buffer too small")
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token prints as (control tokens print nothing)."""
        n = C.llama_token_to_piece(self.vocab, self._in_vocab(token), self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    def token_text(self, token: int) -> str:
        n = C.llama_token_to_piece(self.vocab, self._in_vocab(token), self._piece, len(self._piece), 0, True)
        return self._piece.raw[:n].decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return C.llama_vocab_is_eog(self.vocab, self._in_vocab(token))

    def _in_vocab(self, token: int) -> int:
        """`token`, checked here: llama.cpp's vocabulary lookups throw on an id outside it, which aborts the process."""
        if not 0 <= token < self.n_vocab:
            raise ModelFailed(f"token id {token} is outside the vocabulary of {self.n_vocab}")
        return token

    # -- the KV cache: one sequence per seq_id ---------------------------------

    def forget_from(self, pos: int, seq: int = 0) -> None:
        """Drop the positions >= pos that sequence `seq` holds."""
        if not C.llama_memory_seq_rm(self.memory, seq, pos, -1):
            raise ModelFailed(f"llama.cpp could not drop positions >= {pos} of sequence {seq}")

    def forget_all(self) -> None:
        """Empty every sequence."""
        C.llama_memory_clear(self.memory, True)

    def decode_tokens(self, tokens: list[int], pos0: int, all_logits: bool = False, seq: int = 0) -> None:
        """Feed token ids at positions pos0.. of sequence `seq`; logits are kept for the last one (or all, within one batch)."""
        for t in tokens:
            self._in_vocab(t)
        self._decode(len(tokens), pos0, seq, self._token_batch, lambda b, i, j: _set_tokens(b, tokens[i:j]), all_logits)

    def decode_embeddings(self, embeddings: np.ndarray, pos0: int, all_logits: bool = False, seq: int = 0) -> None:
        """Feed input embeddings (n, n_embd) float32 at positions pos0.. of sequence `seq`; logits as for `decode_tokens`."""
        E = np.ascontiguousarray(embeddings, dtype=np.float32)
        if E.ndim != 2 or E.shape[1] != self.n_embd:  # llama.cpp would read n_embd floats a row, past a narrower array
            raise ModelFailed(f"input embeddings for this model are (n, {self.n_embd}), not {E.shape}")

        def fill(_batch, i: int, j: int) -> None:
            self._embd_rows[: j - i] = E[i:j]

        self._decode(len(E), pos0, seq, self._embd_batch, fill, all_logits)

    def _decode(self, n: int, pos0: int, seq: int, batch, fill, all_logits: bool = False) -> None:
        if pos0 + n > self.n_ctx:
            raise ContextOverflow(f"{pos0 + n} tokens exceed the context window of {self.n_ctx}")
        if all_logits and n > self.n_batch:
            raise ContextOverflow(f"scoring {n} positions at once needs n <= {self.n_batch}")
        if self.governor is not None and self.governor.threads_now() != self.n_threads:
            self.set_threads(self.governor.threads)
        for i, j in _chunks(n, self.n_batch):
            fill(batch, i, j)
            for k in range(j - i):
                batch.pos[k] = pos0 + i + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq
                batch.logits[k] = all_logits
            batch.logits[j - i - 1] = j == n
            batch.n_tokens = j - i
            rc = self._run(batch)
            if rc == 2:  # stopped (`stop_on`): llama.cpp has dropped this batch's positions
                raise DecodeStopped(f"the decode at positions {pos0 + i}..{pos0 + j - 1} was stopped")
            if rc != 0:
                raise ModelFailed(f"llama_decode failed with code {rc}")

    def _run(self, batch) -> int:
        """llama_decode, asked to stop as `stop_on` says: after every graph node, or before a quick step only."""
        step = batch.n_tokens == 1
        if self._stop is not None:
            stop, abort = self._stop
            quick = step and self._step_seconds < QUICK_STEP_SECONDS
            if quick and stop():
                return 2  # as llama.cpp says it: stopped, nothing of this batch kept
            self._install(None if quick else abort)
        t = time.perf_counter()
        rc = C.llama_decode(self.ctx, batch)
        if step:
            self._step_seconds = time.perf_counter() - t
        return rc

    def _install(self, abort) -> None:
        if abort is not self._installed:
            C.llama_set_abort_callback(self.ctx, abort if abort is not None else C.ggml_abort_callback(), None)  # NULL: none
            self._installed = abort

    # -- the control vector: one for the whole context --------------------------

    def set_control(self, applied: np.ndarray | None) -> None:
        """Add applied[L - 1] to the output of block L, for every sequence, from the next decode on; None: none.

        `applied` is (n_layer - 1, n_embd), every block from 1 on (`ControlVector.applied`): llama.cpp
        overwrites only the blocks the buffer covers, so a shorter one would leave an earlier vector's
        rows in place. What the KV cache already holds is not recomputed (decoder.py handles that).
        """
        if applied is None:
            rc = C.llama_set_adapter_cvec(self.ctx, None, 0, self.n_embd, -1, -1)
        else:
            data = np.ascontiguousarray(applied, dtype=np.float32)
            if data.shape != (self.n_layer - 1, self.n_embd):
                raise ModelFailed(f"a control vector for this model is ({self.n_layer - 1}, {self.n_embd}), not {data.shape}")
            ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = C.llama_set_adapter_cvec(self.ctx, ptr, data.size, self.n_embd, 1, self.n_layer - 1)
        if rc != 0:
            raise ModelFailed(f"llama_set_adapter_cvec failed with code {rc}")

    def logits_at(self, i: int) -> np.ndarray:
        """Logits (n_vocab,) of the i-th position of the last batch decoded with `all_logits`; a view."""
        row = C.llama_get_logits_ith(self.ctx, i)
        # One array type made once: np.ctypeslib.as_array makes one a call (half of this call's cost).
        return np.frombuffer(self._logits_row.from_address(ctypes.addressof(row.contents)), dtype=np.float32)

    def last_logits(self) -> np.ndarray:
        """Logits (n_vocab,) of the last decoded position; a view valid until the next decode."""
        return self.logits_at(-1)

    def close(self) -> None:
        if self.ctx:
            C.llama_batch_free(self._token_batch)
            C.llama_batch_free(self._embd_batch)
            C.llama_free(self.ctx)
            C.llama_model_free(self.model)
            self.ctx = self.model = None

    def __del__(self):
        self.close()


class SamplerChain:
    """llama.cpp's sampler chain over an engine's last logits: the stages run in C, no logits row reaches Python.

    Stages are added in the order they apply. The repetition penalty and greedy are not stages here: the
    sampler computes them on the row (`runtime/sampler.py`), tested against llama.cpp's own stages.
    """

    def __init__(self, engine: LlamaEngine):
        self._engine = engine
        self._chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())

    def _add(self, stage) -> "SamplerChain":
        C.llama_sampler_chain_add(self._chain, stage)  # the chain owns the stage from here
        return self

    def temperature(self, t: float) -> "SamplerChain":
        return self._add(C.llama_sampler_init_temp(t))

    def top_k(self, k: int) -> "SamplerChain":
        return self._add(C.llama_sampler_init_top_k(k))

    def top_p(self, p: float) -> "SamplerChain":
        return self._add(C.llama_sampler_init_top_p(p, 1))

    def draw(self, seed: int) -> "SamplerChain":
        # llama.cpp reads 0xFFFFFFFF as "a random seed": fold every seed into the values below it.
        return self._add(C.llama_sampler_init_dist(seed % C.LLAMA_DEFAULT_SEED))

    def sample(self) -> int:
        """The next token from the logits of the engine's last decoded position."""
        return C.llama_sampler_sample(self._chain, self._engine.ctx, -1)

    def close(self) -> None:
        if self._chain:
            C.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self):
        self.close()


@contextmanager
def _interrupt_held(interrupted: threading.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) sets `interrupted` inside the block, and is raised again as it ends.

    On the main thread Python runs pending signal handlers inside the abort callback: that is how
    the kill-switch's flag is set mid-prefill in `ask`. A handler that raises there (SIGINT's
    KeyboardInterrupt) would be lost in the callback, so SIGINT stops the decode instead, and is
    delivered to its own handler once the decode has returned.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # handlers run on the main thread only (and one installed outside Python cannot be put back)
        return
    signal.signal(signal.SIGINT, lambda _signum, _frame: interrupted.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if interrupted.is_set():
            signal.raise_signal(signal.SIGINT)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[i, j) spans of at most `size` covering n; never a last span of one token after others (see FLASH_ATTENTION)."""
    spans = [(i, min(n, i + size)) for i in range(0, n, size)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] == 1:
        (a, b), (_, c) = spans[-2], spans[-1]
        spans[-2:] = [(a, b - 1), (b - 1, c)]
    return spans


def _set_tokens(batch, tokens: list[int]) -> None:
    for k, t in enumerate(tokens):
        batch.token[k] = t


def reference_llama(path: Path, settings: EngineSettings = EngineSettings(), **kwargs) -> "C.Llama":
    """llama-cpp-python's own high-level `Llama`, loaded with our model params (on `settings`' device): the yardstick in tests and bench."""
    _init_backend()
    kwargs["flash_attn"] = FLASH_ATTENTION  # as our context has it
    kwargs["n_gpu_layers"] = settings.gpu_layers if settings.gpu is not None else 0  # Llama sets it over our params
    C_api.llama_model_default_params = lambda: model_params(settings)
    try:
        return C.Llama(str(path), verbose=False, **kwargs)
    finally:
        C_api.llama_model_default_params = _default_model_params
