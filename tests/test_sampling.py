"""Token choice: the draws follow softmax(logits / T) (chi-square), top-k / top-p keep the
right candidates, the repetition penalty has CTRL's semantics, seeds reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmc.runtime.sampling import (Sampler, SamplingParams, apply_repetition_penalty,
                                   filtered_probs)

LOGITS = np.array([2.0, 1.5, 0.3, -0.4, 1.0, -1.2], np.float32)


def chi2_sf(stat: float, dof: int) -> float:
    """P(X > stat) for a chi-square with `dof` degrees of freedom (series of the lower
    regularized incomplete gamma function; scipy is not a dependency)."""
    a, x = dof / 2, stat / 2
    if x <= 0:
        return 1.0
    term = total = 1.0 / a
    n = 1
    while term > 1e-16 * total and n < 10_000:
        term *= x / (a + n)
        total += term
        n += 1
    lower = math.exp(a * math.log(x) - x - math.lgamma(a)) * total
    return max(0.0, 1.0 - lower)


def test_chi2_sf_matches_known_critical_values():
    assert chi2_sf(20.515, 5) == pytest.approx(0.001, rel=1e-3)
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, rel=1e-3)
    assert chi2_sf(0.0, 3) == 1.0


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def draw_counts(params: SamplingParams, n: int, logits=LOGITS) -> np.ndarray:
    sampler = Sampler(params, logits.size)
    return np.bincount([sampler(logits) for _ in range(n)], minlength=logits.size)


def chi2_stat(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    return float((((counts[keep] - expected) ** 2) / expected).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.8])
def test_temperature_frequencies_match_softmax(temperature):
    counts = draw_counts(SamplingParams(temperature=temperature, seed=1), 20_000)
    stat, dof = chi2_stat(counts, softmax(LOGITS.astype(np.float64) / temperature))
    assert chi2_sf(stat, dof) > 0.001
    # the test can fail: the same draws against the wrong temperature are rejected
    wrong = softmax(LOGITS.astype(np.float64) / (temperature * 1.5))
    assert chi2_sf(*chi2_stat(counts, wrong)) < 0.001


def test_top_k_and_top_p_frequencies():
    counts = draw_counts(SamplingParams(temperature=1.0, top_k=3, seed=2), 20_000)
    probs = softmax(LOGITS.astype(np.float64))
    top3 = np.where(np.isin(np.arange(6), [0, 1, 4]), probs, 0)
    assert counts[[2, 3, 5]].sum() == 0
    assert chi2_sf(*chi2_stat(counts, top3 / top3.sum())) > 0.001
    # top_p = 0.6: sorted probs .38 .23 .14 ...: the first two reach 0.61
    counts = draw_counts(SamplingParams(temperature=1.0, top_p=0.6, seed=3), 20_000)
    top2 = np.where(np.isin(np.arange(6), [0, 1]), probs, 0)
    assert counts[[2, 3, 4, 5]].sum() == 0
    assert chi2_sf(*chi2_stat(counts, top2 / top2.sum())) > 0.001


def test_filtered_candidates():
    cand, probs = filtered_probs(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert cand.tolist() == [0, 1] and probs.sum() == pytest.approx(1.0)
    cand, _ = filtered_probs(LOGITS, SamplingParams(temperature=1.0, top_p=0.01))
    assert cand.tolist() == [0]
    cand, _ = filtered_probs(LOGITS, SamplingParams(temperature=1.0, top_p=0.999))
    assert cand.tolist() == [0, 1, 4, 2, 3, 5]
    # ties at the k-th logit keep the lowest ids
    tied = np.array([1.0, 3.0, 1.0, 1.0, 0.0], np.float32)
    cand, _ = filtered_probs(tied, SamplingParams(temperature=1.0, top_k=3))
    assert cand.tolist() == [1, 0, 2]


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99, 0.9999])
def test_nucleus_of_a_large_vocabulary_equals_a_full_sort(top_p):
    # flat logits: a large nucleus
    logits = np.random.default_rng(2).standard_normal(5000).astype(np.float32) * 0.5
    cand, probs = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=top_p))
    order = np.argsort(-logits.astype(np.float64), kind="stable")
    full = softmax(logits.astype(np.float64))[order]
    keep = max(1, int(np.count_nonzero(np.cumsum(full) - full < top_p)))
    assert cand.tolist() == order[:keep].tolist()
    np.testing.assert_allclose(probs, full[:keep] / full[:keep].sum(), rtol=1e-5)
    assert top_p < 0.5 or keep > 64


def test_ties_order_by_lowest_id():
    logits = np.array([0.5, -0.0, 2.0, 0.0, 0.5, -1.0, 2.0, 0.5], np.float32)
    cand, _ = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.9999))
    assert cand.tolist() == [2, 6, 0, 4, 7, 1, 3, 5]


def test_top_k_one_and_zero_temperature_are_greedy():
    rng = np.random.default_rng(0)
    for seed in range(20):
        logits = rng.standard_normal(50).astype(np.float32)
        best = int(np.argmax(logits))
        assert Sampler(SamplingParams(temperature=3.0, top_k=1, seed=seed), 50)(logits) == best
        assert Sampler(SamplingParams(), 50)(logits) == best


def test_seed_reproduces_a_sequence():
    logits = np.random.default_rng(1).standard_normal(40).astype(np.float32)
    run = [Sampler(SamplingParams(temperature=1.0, seed=9), 40) for _ in range(3)]
    seqs = [[s(logits) for _ in range(30)] for s in run[:2]]
    assert seqs[0] == seqs[1]
    other = Sampler(SamplingParams(temperature=1.0, seed=10), 40)
    assert [other(logits) for _ in range(30)] != seqs[0]


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 1, 3]), 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, -6.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, -3.0]  # input untouched


def test_repetition_penalty_covers_prompt_and_output():
    logits = np.array([1.0, 0.9, 0.8, -5.0], np.float32)
    params = SamplingParams(repetition_penalty=1.5)
    sampler = Sampler(params, 4, prompt=[0])
    # 0 is in the prompt: 1.0/1.5 < 0.9, so 1 wins; then 1 is seen too: 0.9/1.5 < 0.8
    assert [sampler(logits) for _ in range(3)] == [1, 2, 0]
    assert Sampler(SamplingParams(), 4, prompt=[0])(logits) == 0
