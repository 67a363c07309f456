"""Long prompts prefill in chunks of PREFILL_CHUNK tokens, each continuing the cache: the
calls the backend sees, and tokens identical to a one-piece prefill."""

import numpy as np
from engine_toy import ToyLM

from llmc.runtime import engine
from llmc.runtime.engine import GenerationParams, generate


def test_prefill_chunks_continue_the_cache_and_change_nothing(monkeypatch):
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, 40, 10)]
    params = GenerationParams(max_new_tokens=6)
    whole = generate(ToyLM(), [prompt], params).tokens
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 4)
    model = ToyLM()
    chunked = generate(model, [prompt], params).tokens
    assert chunked == whole
    prefill = [(shape, past) for rows, shape, past in model.calls if shape[1] > 1 or past == [0]]
    assert prefill[:3] == [((1, 4), [0]), ((1, 4), [4]), ((1, 2), [8])]
