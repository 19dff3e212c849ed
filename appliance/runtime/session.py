"""A chat session: history, the items loaded beside the base and their switches, streaming generation.

The CLI and the terminal UI both drive this object. An overlay or a control vector
(`overlay.loadable`) is held by kind and switched by kind; a switch is a flag flip
(O(1)); at the next prefill the decoder continues that state's own KV sequence,
reading only what it has not read yet (decoder.py says exactly what), so the next
reply is what a fresh session entirely in that state would say.

A reply is `generate`: the prompt fitted to the window and journalled by the caller (`on_start`), then
`tokens`, the decode loop (prefill, sample, step; a generator of the reply's tokens), with the text
assembled on top from their bytes (`Utf8Text`) and streamed as it comes.
"""

import codecs
import threading
import time
from collections.abc import Callable, Collection, Generator
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

from ..errors import ContextOverflow
from ..overlay.loadable import BY_KIND, Loadable
from ..trust.builtin import VerifiedModel
from .chat_template import BuiltinTemplate, template_for
from .decoder import Decoder
from .embeddings import EmbeddingTable
from .engine_settings import EngineSettings
from .llama import DecodeStopped, LlamaEngine
from .memory import gguf_shape, require_room, runtime_need
from .sampler import NativeSampler, SamplingSettings

N_BATCH = 512  # tokens per llama.cpp batch (and ubatch): what the compute buffer is sized for


class Runtime:
    """A verified model loaded in llama.cpp, with its chat template and a KV sequence per overlay state.

    `sequences=1` keeps one: half the KV memory, and a switch recomputes the whole context.
    """

    def __init__(self, model: VerifiedModel, settings: Optional[EngineSettings] = None, **shorthand):
        """`settings` (engine_settings.py), or as a shorthand its fields (`n_ctx=2048`)."""
        self.model = model
        self.settings = settings or EngineSettings(**shorthand)
        # Refused before llama.cpp maps a byte, under a memory cap it cannot fit (an imported base is in its memfd already)
        weights = 0 if model.fd is not None else model.path.stat().st_size
        shape = model.shape if model.shape is not None else gguf_shape(model.path)  # an imported base's, kept at import
        need = runtime_need(shape, weights, self.settings.n_ctx, self.settings.sequences, N_BATCH)
        require_room(f"base {model.name}", need)
        self.engine = LlamaEngine(model.path, self.settings, n_batch=N_BATCH)
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
    on: frozenset[str]  # the kinds switched on while it was made
    settings: SamplingSettings
    prompt: list[int]  # the context tokens the reply was conditioned on (after the window policy)
    prefill_tokens: int  # of those, how many had to be computed (not in the cache)
    dropped_turns: int  # oldest turns left out to fit the context window
    seconds: float  # from first to last generated token
    prefill_seconds: float

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Decoding:
    """How one run of the decode loop went (`Session.tokens`)."""

    finish: str = "length"  # "stop" (end of turn), "length" (max tokens or window full), "cancelled"
    prefilled_at: Optional[float] = None  # perf_counter() when the prefill was done (None: stopped in it)


class Utf8Text:
    """A reply's text assembled from its tokens' bytes: a character split across tokens is held back until it is
    whole, each decoded piece streamed to `on_text` as it comes."""

    def __init__(self, on_text: Optional[Callable[[str], None]]):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._on_text = on_text
        self._pieces: list[str] = []

    def add(self, data: bytes, final: bool = False) -> None:
        piece = self._utf8.decode(data, final=final)
        if piece:
            self._pieces.append(piece)
            if self._on_text is not None:
                self._on_text(piece)

    def __str__(self) -> str:
        return "".join(self._pieces)


@dataclass
class Session:
    runtime: Runtime
    items: dict[str, Loadable] = field(default_factory=dict)  # loaded beside the base, by kind
    system_prompt: Optional[str] = None  # None: none (the model sees only the turns)
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    history: list[dict] = field(default_factory=list)  # {"role": "user"|"assistant", "content": str}
    on: set[str] = field(default_factory=set)  # the kinds switched on (each one loaded)
    first_turn: int = 0  # turns before this index no longer fit the context window
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

    @classmethod
    def switched_on(cls, runtime: Runtime, *items: Optional[Loadable], **fields) -> "Session":
        """A session with `items` loaded and switched on (None: left out)."""
        loaded = {item.KIND: item for item in items if item is not None}
        return cls(runtime, items=loaded, on=set(loaded), **fields)

    def is_on(self, kind: str) -> bool:
        return kind in self.on

    def set_on(self, kind: str, on: bool) -> None:
        """Switch the item of `kind` on or off from the next reply; on needs one loaded."""
        if on and kind not in self.items:
            raise BY_KIND[kind].NOT_INSTALLED(f"no {BY_KIND[kind].NOUN} is installed")
        if on:
            self.on.add(kind)
        else:
            self.on.discard(kind)

    def toggle(self, kind: str) -> bool:
        self.set_on(kind, not self.is_on(kind))
        return self.is_on(kind)

    def unload(self) -> None:
        """Everything off and let go (the caller zeroes what it loaded)."""
        self.on.clear()
        self.items.clear()

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
        on, run, text = frozenset(self.on), Decoding(), Utf8Text(on_text)
        room = min(max_tokens, self.runtime.engine.n_ctx - len(prompt))
        generated: list[int] = []
        with closing(self.tokens(prompt, on, settings, room, cancel, run)) as tokens:
            for token in tokens:
                generated.append(token)
                text.add(self.runtime.engine.piece(token))
        text.add(b"", final=True)
        t1 = run.prefilled_at or time.perf_counter()  # stopped in the prefill: no reply tokens, no reply time
        reply = Reply(
            text=str(text),
            tokens=generated,
            finish=run.finish,
            on=on,
            settings=settings,
            prompt=list(prompt),
            prefill_tokens=self.runtime.decoder.last_prefill_tokens,
            dropped_turns=dropped,
            seconds=time.perf_counter() - t1,
            prefill_seconds=t1 - t0,
        )
        self.history.append({"role": "assistant", "content": reply.text})
        return reply

    def tokens(
        self,
        prompt: list[int],
        on: Collection[str],
        settings: SamplingSettings,
        room: int,
        cancel: Optional[threading.Event],
        run: "Decoding",
    ) -> Generator[int, None, None]:
        """The decode loop: `prompt` prefilled with the items of the kinds `on`, then each sampled reply token, until
        end of turn (not yielded), `room` tokens or `cancel`; `run` says how it ended and when the prefill did."""
        decoder, engine = self.runtime.decoder, self.runtime.engine
        sampler = NativeSampler(engine, settings, prompt)
        generated = 0
        # `cancel` is read between tokens, and by llama.cpp after every graph node of a forward pass:
        # a long prefill stops part-way (the next prefill drops what it had computed: decoder.py, rule 6).
        try:
            with engine.stop_on(cancel):
                decoder.prefill(prompt, [self.items[kind] for kind in on])
                run.prefilled_at = time.perf_counter()
                while generated < room:
                    if cancel is not None and cancel.is_set():
                        run.finish = "cancelled"
                        return
                    token = sampler()  # from the logits the decoder's last prefill or step left in the engine
                    if engine.is_end_of_generation(token):
                        run.finish = "stop"
                        return
                    generated += 1
                    yield token
                    if generated < room:  # the last token needs no forward pass
                        decoder.step(token)
        except DecodeStopped:
            run.finish = "cancelled"
        finally:
            sampler.close()

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
