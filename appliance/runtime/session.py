"""A chat session: history, overlay and control-vector state, streaming generation, toggles.

The CLI and the terminal UI both drive this object. The overlay switch is a
flag flip (O(1)); at the next prefill the decoder continues that state's own
KV sequence, reading only what it has not read yet (decoder.py says exactly
what), so the next reply is what a fresh session entirely in that state would
say.

The control vector switches the same way: the decoder keeps one sequence per
(overlay, control vector) state, as many as the engine has.
"""

import codecs
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

from ..errors import ContextOverflow, NoControlVector, NoOverlay
from ..overlay.control import ControlVector
from ..overlay.files import Overlay
from ..trust.builtin import VerifiedModel
from .chat_template import BuiltinTemplate, template_for
from .decoder import Decoder
from .embeddings import EmbeddingTable
from .llama import DecodeStopped, LlamaEngine
from .memory import require_room, runtime_need
from .sampler import NativeSampler, SamplingSettings

N_BATCH = 512  # tokens per llama.cpp batch (and ubatch): what the compute buffer is sized for


class Runtime:
    """A verified model loaded in llama.cpp, with its chat template and a KV sequence per overlay state.

    `sequences=1` keeps one: half the KV memory, and a switch recomputes the whole context.
    """

    def __init__(self, model: VerifiedModel, n_ctx: int = 4096, n_threads: Optional[int] = None, sequences: int = 2):
        self.model = model
        # Refused before llama.cpp maps a byte, under a memory cap it cannot fit (an imported base is in its memfd already)
        weights = 0 if model.fd is not None else model.path.stat().st_size
        require_room(f"base {model.name}", runtime_need(model.path, weights, n_ctx, sequences, N_BATCH))
        self.engine = LlamaEngine(model.path, n_ctx=n_ctx, n_batch=N_BATCH, n_threads=n_threads, n_seq=sequences)
        self.decoder = Decoder(self.engine, lambda: self.embeddings)
        try:
            self.template: BuiltinTemplate = template_for(self.engine)  # never the GGUF's own Jinja (chat_template.py)
        except BaseException:
            self.engine.close()
            raise

    @cached_property
    def embeddings(self) -> EmbeddingTable:
        return EmbeddingTable(self.model.path)

    def close(self) -> None:
        self.engine.close()


@dataclass
class Reply:
    text: str
    tokens: list[int]
    finish: str  # "stop" (end of turn), "length" (max tokens or window full), "cancelled"
    overlay_on: bool
    settings: SamplingSettings
    prompt: list[int]  # the context tokens the reply was conditioned on (after the window policy)
    prefill_tokens: int  # of those, how many had to be computed (not in the cache)
    dropped_turns: int  # oldest turns left out to fit the context window
    seconds: float  # from first to last generated token
    prefill_seconds: float
    control_on: bool = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Session:
    runtime: Runtime
    overlay: Optional[Overlay] = None
    system_prompt: Optional[str] = None  # None: none (the model sees only the turns)
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    history: list[dict] = field(default_factory=list)  # {"role": "user"|"assistant", "content": str}
    overlay_on: bool = False
    first_turn: int = 0  # turns before this index no longer fit the context window
    control: Optional[ControlVector] = None
    control_on: bool = False
    preset: Optional[str] = None  # the name of the prompt preset the system prompt came from, if any

    # -- the overlay switch --------------------------------------------------

    def conditioning(self) -> dict:
        """What besides the model and overlay shapes the next reply: the provenance of a journal record."""
        return {
            "settings": self.settings.as_dict(),
            "system_prompt": self.system_prompt,
            "preset": self.preset,
            "chat_template": self.runtime.template.name,
        }

    def set_overlay(self, on: bool) -> None:
        if on and self.overlay is None:
            raise NoOverlay("no overlay is installed")
        self.overlay_on = on

    def toggle(self) -> bool:
        self.set_overlay(not self.overlay_on)
        return self.overlay_on

    def set_control(self, on: bool) -> None:
        if on and self.control is None:
            raise NoControlVector("no control vector is installed")
        self.control_on = on

    def toggle_control(self) -> bool:
        self.set_control(not self.control_on)
        return self.control_on

    # -- generation ------------------------------------------------------------

    def generate(
        self,
        user_text: str,
        max_tokens: int = 256,
        on_text: Optional[Callable[[str], None]] = None,
        cancel: Optional[threading.Event] = None,
        settings: Optional[SamplingSettings] = None,
        on_start: Optional[Callable[[], None]] = None,
    ) -> Reply:
        """Answer `user_text`, streaming decoded text to `on_text`; the exchange joins the history.

        `on_start` runs once the prompt is known to fit the window, before anything is decoded (the
        caller journals the user's message there); if it raises, the turn is not taken.
        """
        settings = settings or self.settings
        self.history.append({"role": "user", "content": user_text})
        t0 = time.perf_counter()
        prompt, dropped = self._fit_window(max_tokens)
        if on_start is not None:
            try:
                on_start()
            except BaseException:
                self.history.pop()
                raise
        decoder, engine = self.runtime.decoder, self.runtime.engine
        overlay = self.overlay.params if self.overlay_on and self.overlay is not None else None
        control = self.control if self.control_on else None
        sampler, utf8 = NativeSampler(engine, settings, prompt), codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated: list[int] = []
        text: list[str] = []
        finish = "length"
        room = min(max_tokens, engine.n_ctx - len(prompt))
        t1 = None
        # `cancel` is read between tokens, and by llama.cpp after every graph node of a forward pass:
        # a long prefill stops part-way (the next prefill drops what it had computed: decoder.py, rule 6).
        try:
            with engine.stop_on(cancel):
                if control is None:  # the form every decoder takes, the UI's divergence audit included
                    decoder.prefill(prompt, overlay)
                else:
                    decoder.prefill(prompt, overlay, control)
                t1 = time.perf_counter()
                while len(generated) < room:
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    token = sampler()  # from the logits the decoder's last prefill or step left in the engine
                    if engine.is_end_of_generation(token):
                        finish = "stop"
                        break
                    generated.append(token)
                    piece = utf8.decode(engine.piece(token))
                    if piece:
                        text.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    if len(generated) < room:  # the last token needs no forward pass
                        decoder.step(token)
        except DecodeStopped:
            finish = "cancelled"
        finally:
            sampler.close()
        prefill_tokens = decoder.last_prefill_tokens
        t1 = t1 or time.perf_counter()  # stopped in the prefill: no reply tokens, no reply time
        tail = utf8.decode(b"", final=True)
        if tail:
            text.append(tail)
            if on_text is not None:
                on_text(tail)

        reply = Reply(
            text="".join(text),
            tokens=generated,
            finish=finish,
            overlay_on=self.overlay_on,
            settings=settings,
            prompt=list(prompt),
            prefill_tokens=prefill_tokens,
            dropped_turns=dropped,
            seconds=time.perf_counter() - t1,
            prefill_seconds=t1 - t0,
            control_on=control is not None,
        )
        self.history.append({"role": "assistant", "content": reply.text})
        return reply

    def drop_last_exchange(self) -> tuple[str, str]:
        """Take the last prompt and its reply back out of the history (regenerate, edit and resend): their texts."""
        if len(self.history) - self.first_turn < 2 or self.history[-1]["role"] != "assistant":
            raise ValueError("the history does not end with an exchange the model still sees")
        reply, prompt = self.history.pop(), self.history.pop()
        return prompt["content"], reply["content"]

    def messages(self) -> list[dict]:
        """What the model sees: the system prompt and the turns that still fit."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return system + self.history[self.first_turn :]

    def _fit_window(self, max_tokens: int) -> tuple[list[int], int]:
        """Tokens of the prompt; drops the oldest exchanges (never the system prompt) until it fits.

        Room is kept for min(max_tokens, a quarter of the window) reply tokens.
        """
        engine = self.runtime.engine
        room = engine.n_ctx - min(max_tokens, engine.n_ctx // 4)
        dropped = 0
        while True:
            tokens = engine.tokenize(self.runtime.template.render(self.messages()))
            if len(tokens) <= room:
                return tokens, dropped
            if self.first_turn >= len(self.history) - 1:
                self.history.pop()  # the failed turn does not join the history
                raise ContextOverflow(
                    f"the system prompt and this message need {len(tokens)} tokens; the window has room for {room}"
                )
            self.first_turn += 2  # one user turn and its reply
            dropped += 1
