"""The generation engine over a toy numpy model: cached, batched logits equal a no-cache
recompute; prompts prefill alone at their own length; rows finish independently; seeds
reproduce whatever the batch; timings and events add up."""

from __future__ import annotations

import numpy as np
import pytest
from engine_toy import RecordingLM, ToyLM

from llmc.compiler.errors import LlmcError
from llmc.runtime.engine import Engine, GenerationParams, KVState, format_timings, generate

PROMPTS = [[3, 17, 5, 9, 40, 2, 11], [8], [60, 1, 1, 33], [12, 13, 14, 15, 16, 17, 18, 19, 20]]


def test_cached_batched_logits_match_recompute():
    model = RecordingLM()
    res = generate(model, PROMPTS, GenerationParams(max_new_tokens=12))
    for row, (prompt, new) in enumerate(zip(PROMPTS, res.tokens)):
        assert len(new) == 12
        seen = model.returned[row]
        assert len(seen) == len(new)  # one prefill, then one logits row per decode step
        for k, logits in enumerate(seen):
            ref = model.reference_logits(prompt + new[:k])
            np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
            assert new[k] == int(np.argmax(ref))


def test_prefill_runs_each_prompt_alone_at_its_length():
    model = ToyLM()
    generate(model, PROMPTS, GenerationParams(max_new_tokens=3))
    prefill = model.calls[: len(PROMPTS)]
    assert prefill == [([i], (1, len(p)), [0]) for i, p in enumerate(PROMPTS)]
    for rows, shape, past in model.calls[len(PROMPTS):]:
        assert rows == [0, 1, 2, 3] and shape == (4, 1)
    assert model.calls[len(PROMPTS)][2] == [len(p) for p in PROMPTS]


def test_rows_finish_independently_and_drop_out_of_decode():
    model = ToyLM()
    free = generate(model, PROMPTS, GenerationParams(max_new_tokens=10)).tokens
    # end row 0 at its 3rd token and row 2 at its 5th, with a list of eos ids
    eos = [free[0][2], free[2][4]]
    assert all(t not in eos for t in free[0][:2] + free[2][:4])
    model = ToyLM()
    res = generate(model, PROMPTS, GenerationParams(max_new_tokens=10, eos_token_id=eos))
    for row, new in enumerate(res.tokens):
        cut = next((k + 1 for k, t in enumerate(free[row]) if t in eos), 10)
        assert new == free[row][:cut]
        assert res.rows[row].finish_reason == ("eos" if cut < 10 or new[-1] in eos else "length")
    assert res.rows[0].finish_reason == "eos" and len(res.tokens[0]) == 3
    # decode step s feeds token s of every row that produces a token s+1
    decode_rows = [rows for rows, _, _ in model.calls[len(PROMPTS):]]
    assert decode_rows == [[r for r, new in enumerate(res.tokens) if len(new) >= s + 2]
                           for s in range(len(decode_rows))]
    assert 0 not in decode_rows[2] and 2 not in decode_rows[4] and len(decode_rows) == 9


def test_eos_as_a_single_int():
    first = generate(ToyLM(), [PROMPTS[0]], GenerationParams(max_new_tokens=6)).tokens[0]
    res = generate(ToyLM(), [PROMPTS[0]],
                   GenerationParams(max_new_tokens=6, eos_token_id=first[1]))
    assert res.tokens[0] == first[: first.index(first[1]) + 1]
    assert res.rows[0].finish_reason == "eos"


@pytest.mark.parametrize("sampling", [
    dict(), dict(temperature=0.9, seed=7), dict(temperature=1.3, top_k=5, top_p=0.8, seed=3),
    dict(temperature=0.8, repetition_penalty=1.4, seed=11)])
def test_batched_equals_one_by_one(sampling):
    params = GenerationParams(max_new_tokens=8, **sampling)
    batched = generate(ToyLM(), PROMPTS, params).tokens
    alone = [generate(ToyLM(), [p], params).tokens[0] for p in PROMPTS]
    assert batched == alone


def test_seed_reproduces_and_differs():
    params = GenerationParams(max_new_tokens=16, temperature=1.5, seed=5)
    a = generate(ToyLM(), PROMPTS, params).tokens
    assert a == generate(ToyLM(), PROMPTS, params).tokens
    other = GenerationParams(max_new_tokens=16, temperature=1.5, seed=6)
    assert a != generate(ToyLM(), PROMPTS, other).tokens


def test_top_k_one_is_greedy():
    greedy = generate(ToyLM(), PROMPTS, GenerationParams(max_new_tokens=10)).tokens
    for seed in range(3):
        params = GenerationParams(max_new_tokens=10, temperature=2.0, top_k=1, seed=seed)
        assert generate(ToyLM(), PROMPTS, params).tokens == greedy


def test_per_row_params():
    params = [GenerationParams(max_new_tokens=n) for n in (2, 5, 1, 3)]
    res = generate(ToyLM(), PROMPTS, params)
    assert [len(t) for t in res.tokens] == [2, 5, 1, 3]
    assert all(r.finish_reason == "length" for r in res.rows)


def test_iterator_callback_and_timings_agree():
    events = []
    engine = Engine(ToyLM())
    res = engine.generate(PROMPTS, GenerationParams(max_new_tokens=4, eos_token_id=0),
                          on_token=lambda *e: events.append(e))
    run = engine.stream(PROMPTS, GenerationParams(max_new_tokens=4, eos_token_id=0))
    streamed = [(e.row, e.token, e.text) for e in run]
    assert streamed == events
    for row, new in enumerate(res.tokens):
        assert [t for r, t, _ in events if r == row] == new
    t = res.timings
    assert t.prefill_tokens == sum(map(len, PROMPTS))
    assert t.decode_tokens == sum(map(len, res.tokens)) - len(PROMPTS)
    assert t.prefill_tok_s > 0 and t.decode_tok_s > 0 and t.ttft_s > 0
    assert [r.ttft_s for r in res.rows] == sorted(r.ttft_s for r in res.rows)
    # the first events are the prefills' tokens, in prompt order
    assert [r for r, _, _ in events[: len(PROMPTS)]] == list(range(len(PROMPTS)))


def test_result_before_the_end_is_an_error():
    run = Engine(ToyLM()).stream(PROMPTS, GenerationParams(max_new_tokens=4))
    next(iter(run))
    with pytest.raises(LlmcError, match="not finished"):
        run.result


def test_kept_cache_prefills_only_the_new_suffix():
    model = ToyLM()
    engine, state = Engine(model), KVState(capacity=64)
    params = GenerationParams(max_new_tokens=5)
    first = engine.generate([PROMPTS[0]], params, state=state).tokens[0]
    assert state.tokens == PROMPTS[0] + first[:-1]
    follow = PROMPTS[0] + first + [21, 22]
    model.calls.clear()
    kept = engine.generate([follow], params, state=state).tokens[0]
    assert model.calls[0] == ([0], (1, 3), [len(follow) - 3])
    assert kept == generate(ToyLM(), [follow], params).tokens[0]
    # a prompt that diverges early reuses only the common part
    model.calls.clear()
    other = PROMPTS[0][:2] + [50, 51]
    assert engine.generate([other], params, state=state).tokens[0] == \
        generate(ToyLM(), [other], params).tokens[0]
    assert model.calls[0] == ([0], (1, 2), [2])


def test_kept_cache_grows_when_a_prompt_does_not_fit():
    model = ToyLM()
    engine, state = Engine(model), KVState(capacity=8)
    engine.generate([[1, 2, 3]], GenerationParams(max_new_tokens=3), state=state)
    assert state.capacity == 8
    long = list(range(1, 20))
    res = engine.generate([long], GenerationParams(max_new_tokens=4), state=state)
    assert state.capacity == 23 and model.calls[-4][2] == [0]  # a new cache, all prefilled
    engine.generate([long + [30]], GenerationParams(max_new_tokens=4), state=state)
    assert state.capacity == 46 and model.calls[-4][2] == [0]
    first = KVState(capacity=4)
    engine.generate([long], GenerationParams(max_new_tokens=4), state=first)
    assert first.capacity == 23
    assert res.tokens[0] == generate(ToyLM(), [long], GenerationParams(max_new_tokens=4)).tokens[0]


@pytest.mark.parametrize("prompts, params, match", [
    ([[]], GenerationParams(), "at least one token"),
    ([], GenerationParams(), "no prompts"),
    ([[1, 64]], GenerationParams(), "outside the vocabulary"),
    ([[1] * 250], GenerationParams(max_new_tokens=10), "260 positions"),
    ([[1]], GenerationParams(stop=["x"]), "need a tokenizer"),
    ([[1], [2]], [GenerationParams()], "1 generation params for 2 prompts"),
])
def test_bad_requests(prompts, params, match):
    with pytest.raises(LlmcError, match=match):
        generate(ToyLM(), prompts, params)


@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty")])
def test_bad_params(kw, match):
    with pytest.raises(LlmcError, match=match):
        GenerationParams(**kw)


class AllPositionsLM(ToyLM):
    """Breaks the contract: logits of every new position instead of the last."""

    def forward(self, cache, rows, input_ids, past_lens):
        """Logits repeated for each new position."""
        out = super().forward(cache, rows, input_ids, past_lens)
        return np.repeat(out[:, None, :], input_ids.shape[1], axis=1)


def test_a_backend_breaking_the_logits_contract_is_named():
    with pytest.raises(LlmcError, match=r"AllPositionsLM.forward returned logits of shape "
                                        r"\[1, 7, 64\] for 1 rows"):
        generate(AllPositionsLM(), [PROMPTS[0]])


def test_format_timings():
    res = generate(ToyLM(), PROMPTS, GenerationParams(max_new_tokens=3))
    line = format_timings(res.timings)
    assert line.startswith(f"prefill {sum(map(len, PROMPTS))} tok in ")
    assert f"decode {res.timings.decode_tokens} tok in " in line and "tok/s" in line
