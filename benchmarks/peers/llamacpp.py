"""llama.cpp through llama-cpp-python's low-level API on the F32 GGUF of the same weights:
one llama_decode for the whole (batched) prompt, then one per step with a token per
sequence; greedy = argmax of the returned logits; 2 threads; llama.cpp's default context
settings otherwise (flash attention auto, F16 KV cache), unless ``exact``: F32 KV and no
flash attention (its CPU kernel rounds through F16), for the conversion check."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any, Callable

from .common import THREADS, PeerUnavailable, Timing

FLASH_ATTN_DISABLED = 0  # enum llama_flash_attn_type: -1 auto, 0 disabled, 1 enabled


def gguf_path(hf_dir: Path) -> Path:
    """Where the F32 GGUF of checkpoint ``hf_dir`` lives (converted on first use)."""
    from .gguf_convert import convert

    return convert(hf_dir, hf_dir.parent / "model-f32.gguf")


def _quiet_logs(lc: Any) -> None:
    callback = lc.llama_log_callback(lambda level, text, user_data: None)
    _quiet_logs.keep = callback  # ctypes callbacks must outlive the call
    lc.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCpp:
    """A loaded GGUF plus one context per batch size (``n_seq_max`` = batch)."""

    def __init__(self, gguf: Path, max_len: int, exact: bool = False) -> None:
        try:
            import llama_cpp as lc
        except ImportError as e:
            raise PeerUnavailable(f"llama-cpp-python not installed ({e})") from e
        self.lc, self.max_len, self.exact = lc, max_len, exact
        _quiet_logs(lc)
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(),
                                                   lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.ctx, self.ctx_batch = None, 0

    def context(self, batch: int) -> Any:
        """A context sized for ``batch`` sequences of max_len tokens, made on first use."""
        lc = self.lc
        if self.ctx is not None and self.ctx_batch == batch:
            lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
            return self.ctx
        if self.ctx is not None:
            lc.llama_free(self.ctx)
        params = lc.llama_context_default_params()
        params.n_ctx = self.max_len * batch
        params.n_batch = self.max_len * batch
        params.n_seq_max = batch
        params.n_threads = params.n_threads_batch = THREADS
        if self.exact:
            params.type_k = params.type_v = lc.GGML_TYPE_F32
            params.flash_attn_type = FLASH_ATTN_DISABLED
        self.ctx, self.ctx_batch = lc.llama_init_from_model(self.model, params), batch
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        return self.ctx

    def _decode(self, ctx: Any, rows: list[list[int]], start: int) -> list[int]:
        """Feed ``rows`` (one sequence each) at positions start..; argmax of each row's last
        logits."""
        lc, import_np = self.lc, __import__("numpy")
        total = sum(len(r) for r in rows)
        batch = lc.llama_batch_init(total, 0, 1)
        try:
            k, last = 0, []
            for seq, row in enumerate(rows):
                for i, tok in enumerate(row):
                    batch.token[k], batch.pos[k] = tok, start + i
                    batch.n_seq_id[k], batch.seq_id[k][0] = 1, seq
                    batch.logits[k] = i == len(row) - 1
                    k += 1
                last.append(k - 1)
            batch.n_tokens = total
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return [int(import_np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i),
                                                     shape=(self.n_vocab,)).argmax())
                    for i in last]
        finally:
            lc.llama_batch_free(batch)

    def logits(self, prompt: list[int]) -> Any:
        """Last-position logits of one prompt (for the conversion check)."""
        import numpy as np

        ctx = self.context(1)
        self._decode(ctx, [prompt], 0)
        ptr = self.lc.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def generate(self, prompts: list[list[int]], new_tokens: int) -> Timing:
        """Greedy generation of ``new_tokens`` per prompt (equal-length prompts)."""
        ctx = self.context(len(prompts))
        pos = len(prompts[0])
        t0 = time.perf_counter()
        step = self._decode(ctx, prompts, 0)
        t1 = time.perf_counter()
        steps = [step]
        for n in range(new_tokens - 1):
            step = self._decode(ctx, [[t] for t in step], pos + n)
            steps.append(step)
        t2 = time.perf_counter()
        return Timing(ttft_s=t1 - t0, decode_s=t2 - t1, tokens=[list(r) for r in zip(*steps)])


def load(model_dir: Path, max_len: int, max_batch: int) -> Callable[[list[list[int]], int], Timing]:
    """Worker entry: convert (once) and load; return ``generate(prompts, new_tokens)``."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"llama-cpp-python not installed ({e})") from e
    return LlamaCpp(gguf_path(model_dir), max_len).generate
