"""Greedy generation over the inference graph form, and full-form logits, on the
reference interpreter.

The generator owns the paged KV cache: it gives each sequence its own run of
blocks in a shared pool, prefills every prompt in one step, then decodes one
token per sequence per step, threading the caches the graph returns back in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .reference import run

TokenCallback = Callable[[int, int], None]
EosIds = int | Iterable[int] | None


class GenerationError(LlmcError):
    """Bad generation request (empty prompt, too long for the block table...)."""


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def eos_ids(eos: EosIds) -> frozenset[int]:
    """The ids that end a sequence, from an `eos_token_id` that is None, one int, or a
    sequence of ints (llama-3-style configs list several)."""
    if eos is None:
        return frozenset()
    if _is_int(eos):
        return frozenset({int(eos)})
    if isinstance(eos, (list, tuple, set, frozenset, np.ndarray)) and all(map(_is_int, eos)):
        return frozenset(int(e) for e in eos)
    raise GenerationError(f"eos_token_id must be an integer or a list of integers, got {eos!r}")


def available_memory() -> int | None:
    """Bytes of memory this machine can still hand out (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_length(prompt_len: int, max_new_tokens: int, max_positions: int | None,
                 limit_name: str = "max_position_embeddings") -> None:
    """Refuse, before running anything, a request whose prompt plus new tokens exceeds the
    model's positions (the same rule on every target, whatever its attention kernel)."""
    if max_positions is not None and prompt_len + max_new_tokens > max_positions:
        raise GenerationError(
            f"a {prompt_len}-token prompt plus {max_new_tokens} new tokens needs "
            f"{prompt_len + max_new_tokens} positions; the model holds {max_positions} "
            f"({limit_name})")


def full_logits(graph: Graph, weights: Mapping[str, np.ndarray], input_ids) -> np.ndarray:
    """Full-form logits [batch, seq, vocab] for input_ids [batch, seq] at positions 0..seq-1."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise GenerationError(f"input_ids must be [batch, seq], got shape {list(ids.shape)}")
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
    return run(graph, {"input_ids": ids, "position_ids": pos}, weights)[0]


@dataclass
class Session:
    """Per-request generation state: block tables, caches, tokens held, finished flags."""

    tables: np.ndarray
    caches: dict[str, np.ndarray]
    lengths: np.ndarray
    done: np.ndarray


class Generator:
    """Greedy decoding over an inference-form graph (frontends.llama.build_inference)."""

    def __init__(self, graph: Graph, weights: Mapping[str, np.ndarray]):
        self.graph, self.weights = graph, weights
        self.cache_inputs = [v for v in graph.inputs if v.name.startswith(("cache_k_", "cache_v_"))]
        if not self.cache_inputs or "block_tables" not in {v.name for v in graph.inputs}:
            raise GenerationError(f"graph @{graph.name} is not an inference-form graph "
                                  "(no cache or block_tables inputs)")
        kv, self.block_size, d = self.cache_inputs[0].type.shape[1:]
        self.cache_shape = (int(kv), int(self.block_size), int(d))
        self.cache_dtype = self.cache_inputs[0].type.dtype.np
        tables = next(v for v in graph.inputs if v.name == "block_tables")
        width = tables.type.shape[1]
        self.max_blocks = width if isinstance(width, int) else None
        limits = [int(op.attrs["max_seq_len"]) for op in graph.ops if "max_seq_len" in op.attrs]
        # the positions a sequence may hold: its attention ops' max_seq_len (which
        # build_inference sets to the config's max_position_embeddings)
        self.max_positions = min(limits) if limits else None

    def _alloc(self, batch: int, max_tokens: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        per_seq = -(-max_tokens // self.block_size)
        if self.max_blocks is not None:
            if per_seq > self.max_blocks:
                raise GenerationError(
                    f"{max_tokens} tokens need {per_seq} blocks of {self.block_size}; the graph's "
                    f"block table holds {self.max_blocks}")
            per_seq = self.max_blocks
        self._check_cache_fits(batch, max_tokens, batch * per_seq)
        tables = np.arange(batch * per_seq, dtype=np.int32).reshape(batch, per_seq)
        caches = {v.name: np.zeros((batch * per_seq, *self.cache_shape), self.cache_dtype)
                  for v in self.cache_inputs}
        return tables, caches

    def _check_cache_fits(self, batch: int, max_tokens: int, blocks: int) -> None:
        """Refuse a KV cache larger than the memory available, saying how many bytes."""
        per_block = int(np.prod(self.cache_shape)) * np.dtype(self.cache_dtype).itemsize
        need = len(self.cache_inputs) * blocks * per_block
        have = available_memory()
        if have is not None and need > have:
            raise GenerationError(
                f"the KV cache for {batch} sequence(s) of up to {max_tokens} tokens needs "
                f"{need:,} bytes ({need / 2**30:,.1f} GiB: {len(self.cache_inputs)} caches of "
                f"{blocks:,} blocks of {per_block:,} bytes); only {have:,} bytes of memory "
                "are available")

    def new_session(self, batch: int, max_tokens: int) -> "Session":
        """Empty caches and block tables for `batch` sequences of up to `max_tokens` each."""
        tables, caches = self._alloc(batch, max_tokens)
        return Session(tables, caches, np.zeros(batch, np.int32), np.zeros(batch, bool))

    def step(self, s: "Session", ids: np.ndarray, this_time, enc, dec) -> np.ndarray:
        """One run of the graph: `ids` [batch, width]; per sequence the tokens fed this time,
        the prompt length when it is prefilled (else 0) and the tokens already cached
        (`seq_lens_*`). Threads the returned caches back; the logits [batch, vocab]."""
        feeds = {"input_ids": ids, "seq_lens_this_time": np.asarray(this_time, np.int32),
                 "seq_lens_encoder": np.asarray(enc, np.int32),
                 "seq_lens_decoder": np.asarray(dec, np.int32), "block_tables": s.tables,
                 **s.caches}
        outs = run(self.graph, feeds, self.weights)
        for v, arr in zip(self.cache_inputs, outs[1:]):
            s.caches[v.name] = arr
        return outs[0]

    def prefill(self, prompt_ids: list[list[int]],
                max_new_tokens: int) -> tuple["Session", np.ndarray]:
        """Allocate caches for prompts plus max_new_tokens and run every prompt in one step;
        returns the session and each prompt's last-token logits [batch, vocab]."""
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise GenerationError("every prompt needs at least one token")
        lens = np.array([len(p) for p in prompt_ids], np.int32)
        batch, width = len(prompt_ids), int(lens.max())
        need = width + max_new_tokens
        if self.max_blocks is None or -(-need // self.block_size) <= self.max_blocks:
            # (a static block table too small gets _alloc's own message)
            check_length(width, max_new_tokens, self.max_positions, "max_seq_len")
        tables, caches = self._alloc(batch, need)
        s = Session(tables, caches, lens.copy(), np.zeros(batch, bool))
        ids = np.zeros((batch, width), np.int64)
        for i, p in enumerate(prompt_ids):
            ids[i, : len(p)] = p
        return s, self.step(s, ids, lens, lens, np.zeros(batch, np.int32))

    def decode(self, s: "Session", tokens) -> np.ndarray:
        """Feed one token per live sequence (finished ones are skipped); next logits."""
        live = (~s.done).astype(np.int32)
        ids = np.asarray(tokens, np.int64).reshape(-1, 1)
        logits = self.step(s, ids, live, np.zeros_like(live), s.lengths * live)
        s.lengths += live
        return logits

    def stream(self, prompt_ids: list[list[int]], max_new_tokens: int,
               eos_token_id: EosIds = None) -> Iterator[list[int | None]]:
        """Yield, per step, each sequence's new token (None once it has finished); a
        sequence finishes on any of the eos ids (an int or a sequence of ints)."""
        stop = np.array(sorted(eos_ids(eos_token_id)), np.int64)
        s, logits = self.prefill(prompt_ids, max_new_tokens)
        for step in range(max_new_tokens):
            tok = np.argmax(logits, axis=-1)
            yield [None if d else int(t) for d, t in zip(s.done, tok)]
            s.done |= np.isin(tok, stop)
            if s.done.all() or step == max_new_tokens - 1:
                return
            logits = self.decode(s, tok)

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int,
                 eos_token_id: EosIds = None, on_token: TokenCallback | None = None
                 ) -> list[list[int]]:
        """New tokens per prompt (eos included when reached); `on_token(seq, token)` sees each."""
        out: list[list[int]] = [[] for _ in prompt_ids]
        for toks in self.stream(prompt_ids, max_new_tokens, eos_token_id):
            for i, t in enumerate(toks):
                if t is not None:
                    out[i].append(t)
                    if on_token is not None:
                        on_token(i, t)
        return out


def generate(graph: Graph, weights: Mapping[str, np.ndarray], prompt_ids: list[list[int]],
             max_new_tokens: int, eos_token_id: EosIds = None,
             on_token: TokenCallback | None = None) -> list[list[int]]:
    """Greedy decoding of every prompt: the new token ids (prompt excluded) per prompt."""
    return Generator(graph, weights).generate(prompt_ids, max_new_tokens, eos_token_id, on_token)
