"""The generation engine: prefill and decode over any runtime that implements `CausalLM`.

The contract a runtime implements (runtime/recompute.py's `RecomputeLM` does it for any
full-sequence logits function; the ONNX Runtime session and a cached reference backend
are to):

``vocab_size: int``
    Width of the logits.
``max_positions: int | None``
    Positions a row may hold (prompt plus new tokens); None when unbounded (ALiBi).
``new_cache(batch, max_len) -> cache``
    Key/value state for `batch` rows of up to `max_len` positions each, allocated once:
    nothing grows while generating. The engine never looks inside it.
``forward(cache, rows, input_ids, past_lens) -> logits``
    `rows`: the cache rows to run, distinct and ascending (a list of ints);
    `input_ids`: int64 ``[len(rows), seq]``, the rows' new tokens; `past_lens`: int64
    ``[len(rows)]``, the positions each row already holds. Runs the new tokens at
    positions ``past_len .. past_len+seq-1`` attending to the row's cached keys/values
    and causally among themselves, writes their keys/values at those positions, and
    returns float32 ``[len(rows), vocab]``: the logits of each row's LAST new token.

How the engine calls it: each prompt is prefilled on its own (``rows=[i]``, its exact
length, in chunks of at most `PREFILL_CHUNK` tokens, each at ``past_len`` = the tokens
already written: so `seq > 1` with `past_len > 0` must work), then every live row decodes one token per step together
(``seq == 1``, per-row `past_lens`). A row that has finished never appears again, so a
backend may run whole batches and write anything into finished rows. A row's keys and
values below its `past_len` are never rewritten. (`seq > 1` at `past_len > 0` comes from a long
prompt's later chunks and from a kept `KVState`, i.e. a chat's next turn.)

Per request (`GenerationParams`): the sampling of runtime/sampling.py, `max_new_tokens`,
stop on `eos_token_id` (an int or several) and on `stop` strings (which need a tokenizer).
Rows finish independently. With a tokenizer each new token comes with the text it
completes (runtime/textstream.py): the row's text is the concatenation of those deltas.

Use: `Engine(model, tokenizer).generate(prompts, params, on_token=cb)` returns a
`GenerationResult` (tokens, texts, finish reasons, `Timings`: time to first token,
prefill and decode tokens/s, engine time only); `Engine.stream(...)` is the same as an
iterator of `TokenEvent`s with `.result` at the end. A `KVState` keeps one row's cache
between calls, so a prompt that extends the previous one prefills only the new part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from .generate import GenerationError, check_length
from .sampling import Sampler, SamplingParams
from .textstream import Decoder, TextStream

# Prompts longer than this prefill in chunks: attention scores grow with the square of the
# chunk, and a 1024-token prompt in one piece took the 134M model's peak RSS from 1.26x to
# 1.38x its weight bytes (ONNX Runtime keeps the arena), with no gain in prefill speed.
PREFILL_CHUNK = 256


class CausalLM(Protocol):
    """A runtime the engine can drive (see the module docstring for the contract)."""

    vocab_size: int
    max_positions: int | None

    def new_cache(self, batch: int, max_len: int) -> Any:
        """Key/value state for `batch` rows of `max_len` positions."""
        ...

    def forward(self, cache: Any, rows: Sequence[int], input_ids: np.ndarray,
                past_lens: np.ndarray) -> np.ndarray:
        """Logits [len(rows), vocab] of each row's last new token; writes their KV."""
        ...


@dataclass(frozen=True)
class GenerationParams(SamplingParams):
    """One request: its sampling, its length limit and when it stops.

    eos_token_id: a token id or several; the row ends when it produces one (the token is
    kept in the ids, its text is not shown). stop: strings that end the row when they
    appear in its text; the text stops just before the first one.
    """

    max_new_tokens: int = 128
    eos_token_id: int | Sequence[int] | None = None
    stop: Sequence[str] = ()

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)

    @property
    def eos_ids(self) -> frozenset[int]:
        """The end-of-sequence ids, as a set."""
        if self.eos_token_id is None:
            return frozenset()
        if isinstance(self.eos_token_id, (int, np.integer)):
            return frozenset([int(self.eos_token_id)])
        return frozenset(int(i) for i in self.eos_token_id)


@dataclass
class TokenEvent:
    """A row's new token, the text it completes, and why the row ended (None: it goes on)."""

    row: int
    token: int
    text: str
    finish_reason: str | None = None  # "eos", "stop" or "length"


@dataclass
class RowResult:
    """What one prompt produced."""

    tokens: list[int]
    text: str
    finish_reason: str
    ttft_s: float  # engine time from the start until this row's first token


@dataclass
class Timings:
    """Engine time (the runtime plus sampling and text; not the consumer's) by phase."""

    prefill_tokens: int = 0  # prompt tokens computed (a reused cached prefix is not)
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    ttft_s: float = 0.0  # mean over the rows

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens per second of prefill."""
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        """New tokens per second of decode steps (all rows together)."""
        return self.decode_tokens / self.decode_s if self.decode_s else 0.0


@dataclass
class GenerationResult:
    """Every row's result and the timings."""

    rows: list[RowResult]
    timings: Timings

    @property
    def tokens(self) -> list[list[int]]:
        """New token ids per prompt."""
        return [r.tokens for r in self.rows]

    @property
    def texts(self) -> list[str]:
        """Shown text per prompt."""
        return [r.text for r in self.rows]


@dataclass
class KVState:
    """A cache kept between calls (a chat): the tokens whose keys/values row 0 holds. A
    prompt that starts with them prefills only the rest."""

    capacity: int
    cache: Any = None
    tokens: list[int] = field(default_factory=list)


class _Row:
    """One prompt's progress."""

    def __init__(self, prompt: list[int], params: GenerationParams, vocab: int,
                 tokenizer: Decoder | None):
        self.prompt, self.params = prompt, params
        self.sampler = Sampler(params, vocab, prompt)
        self.eos = params.eos_ids
        self.text = TextStream(tokenizer, prompt, params.stop) if tokenizer is not None else None
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.ttft_s = 0.0

    @property
    def past_len(self) -> int:
        """Positions whose keys/values are cached once the last token is fed."""
        return len(self.prompt) + len(self.tokens) - 1

    def accept(self, index: int, token: int) -> TokenEvent:
        """Take the row's new token: its event, with the text it shows and whether the row
        ends (eos: the text held back is flushed, the eos text is not shown)."""
        self.tokens.append(token)
        if token in self.eos:
            self.finish_reason = "eos"
            return TokenEvent(index, token, self.text.finish() if self.text else "", "eos")
        delta = self.text.push(token) if self.text else ""
        if self.text is not None and self.text.stopped:
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.finish_reason = "length"
            delta += self.text.finish() if self.text else ""
        return TokenEvent(index, token, delta, self.finish_reason)


class Generation:
    """One call's token events, as an iterator; `result` once it is exhausted."""

    def __init__(self, engine: "Engine", prompts: list[list[int]],
                 params: Sequence[GenerationParams], state: KVState | None):
        self.engine, self.state = engine, state
        model = engine.model
        self.rows = [_Row(list(map(int, p)), q, model.vocab_size, engine.tokenizer)
                     for p, q in zip(prompts, params)]
        self.timings = Timings()
        self._busy = 0.0
        self._events = self._run()

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events

    def __next__(self) -> TokenEvent:
        return next(self._events)

    @property
    def result(self) -> GenerationResult:
        """The rows' results (the iterator must have been exhausted)."""
        if any(r.finish_reason is None for r in self.rows):
            raise GenerationError("the generation has not finished")
        rows = [RowResult(r.tokens, r.text.text if r.text else "", r.finish_reason, r.ttft_s)
                for r in self.rows]
        return GenerationResult(rows, self.timings)

    def _clock(self, since: float, phase: str) -> None:
        spent = time.perf_counter() - since
        self._busy += spent
        setattr(self.timings, phase, getattr(self.timings, phase) + spent)

    def _run(self) -> Iterator[TokenEvent]:
        start = time.perf_counter()
        cache, reused = self._cache()
        self._clock(start, "prefill_s")
        for i, row in enumerate(self.rows):
            start = time.perf_counter()
            event = self._prefill(cache, i, row, reused)
            self._clock(start, "prefill_s")
            row.ttft_s = self._busy
            yield event
        self.timings.ttft_s = float(np.mean([r.ttft_s for r in self.rows]))
        yield from self._decode(cache)

    def _cache(self) -> tuple[Any, int]:
        """The cache to run in, and how many leading prompt tokens it already holds."""
        model, state = self.engine.model, self.state
        need = max(len(r.prompt) + r.params.max_new_tokens for r in self.rows)
        if state is None:
            return model.new_cache(len(self.rows), need), 0
        prompt = self.rows[0].prompt
        if state.cache is not None and need > state.capacity:
            # grow by doubling (within the model's positions) so a chat rarely reallocates
            state.cache, state.capacity = None, max(need, min(2 * state.capacity,
                                                              model.max_positions or need))
        if state.cache is None:
            state.capacity = max(state.capacity, need)
            state.cache, state.tokens = model.new_cache(1, state.capacity), []
        same = 0
        for a, b in zip(state.tokens, prompt[:-1]):
            if a != b:
                break
            same += 1
        state.tokens = prompt[:same]
        return state.cache, same

    def _forward(self, cache: Any, rows: list[int], ids: np.ndarray,
                 past: np.ndarray) -> np.ndarray:
        model = self.engine.model
        logits = np.asarray(model.forward(cache, rows, ids, past))
        if logits.shape != (len(rows), model.vocab_size):
            raise GenerationError(
                f"{type(model).__name__}.forward returned logits of shape {list(logits.shape)} "
                f"for {len(rows)} rows; the contract is [rows, vocab={model.vocab_size}]")
        return logits

    def _prefill(self, cache: Any, i: int, row: _Row, reused: int) -> TokenEvent:
        new = row.prompt[reused:]
        for start in range(0, len(new), PREFILL_CHUNK):
            chunk = new[start:start + PREFILL_CHUNK]
            logits = self._forward(cache, [i], np.asarray([chunk], np.int64),
                                   np.asarray([reused + start], np.int64))
        if self.state is not None:
            self.state.tokens = list(row.prompt)
        self.timings.prefill_tokens += len(new)
        return row.accept(i, row.sampler(logits[0]))

    def _decode(self, cache: Any) -> Iterator[TokenEvent]:
        while True:
            live = [i for i, r in enumerate(self.rows) if r.finish_reason is None]
            if not live:
                return
            start = time.perf_counter()
            ids = np.asarray([[self.rows[i].tokens[-1]] for i in live], np.int64)
            past = np.asarray([self.rows[i].past_len for i in live], np.int64)
            logits = self._forward(cache, live, ids, past)
            if self.state is not None:
                self.state.tokens.append(self.rows[0].tokens[-1])
            events = [self.rows[i].accept(i, self.rows[i].sampler(logits[j]))
                      for j, i in enumerate(live)]
            self.timings.decode_tokens += len(live)
            self._clock(start, "decode_s")
            yield from events


def format_timings(t: Timings) -> str:
    """One line for a terminal: prefill and decode throughput, time to first token."""
    return (f"prefill {t.prefill_tokens} tok in {t.prefill_s:.3f} s ({t.prefill_tok_s:.1f} tok/s), "
            f"first token {t.ttft_s * 1e3:.1f} ms, decode {t.decode_tokens} tok in "
            f"{t.decode_s:.3f} s ({t.decode_tok_s:.1f} tok/s)")


TokenCallback = Callable[[int, int, str], None]


class Engine:
    """A model and, optionally, its tokenizer (for text and stop strings)."""

    def __init__(self, model: CausalLM, tokenizer: Decoder | None = None):
        self.model, self.tokenizer = model, tokenizer

    def stream(self, prompts: Sequence[Sequence[int]],
               params: GenerationParams | Sequence[GenerationParams] = GenerationParams(),
               state: KVState | None = None) -> Generation:
        """Token events of generating from every prompt (see `Generation`). `params`: one
        for all prompts or one per prompt. `state`: a cache kept across calls (one prompt)."""
        prompts = [list(p) for p in prompts]
        per_row = [params] * len(prompts) if isinstance(params, GenerationParams) else list(params)
        self._check(prompts, per_row, state)
        return Generation(self, prompts, per_row, state)

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: GenerationParams | Sequence[GenerationParams] = GenerationParams(),
                 on_token: TokenCallback | None = None,
                 state: KVState | None = None) -> GenerationResult:
        """Generate from every prompt; `on_token(row, token_id, text_delta)` sees each token."""
        run = self.stream(prompts, params, state)
        for event in run:
            if on_token is not None:
                on_token(event.row, event.token, event.text)
        return run.result

    def _check(self, prompts: list[list[int]], params: list[GenerationParams],
               state: KVState | None) -> None:
        if not prompts:
            raise GenerationError("no prompts to generate from")
        if len(params) != len(prompts):
            raise GenerationError(f"{len(params)} generation params for {len(prompts)} prompts")
        if state is not None and len(prompts) != 1:
            raise GenerationError("a kept cache (KVState) serves one prompt at a time")
        for p, q in zip(prompts, params):
            if not p:
                raise GenerationError("every prompt needs at least one token")
            bad = [t for t in p if not 0 <= t < self.model.vocab_size]
            if bad:
                raise GenerationError(f"token id {bad[0]} is outside the vocabulary "
                                      f"(size {self.model.vocab_size})")
            if q.stop and self.tokenizer is None:
                raise GenerationError("stop strings need a tokenizer")
            check_length(len(p), q.max_new_tokens, self.model.max_positions)


def generate(model: CausalLM, prompts: Sequence[Sequence[int]],
             params: GenerationParams | Sequence[GenerationParams] = GenerationParams(),
             tokenizer: Decoder | None = None,
             on_token: TokenCallback | None = None) -> GenerationResult:
    """Generate from every prompt with `model` (see `Engine.generate`)."""
    return Engine(model, tokenizer).generate(prompts, params, on_token)
