"""The lora pass: B = 0 leaves the logits unchanged; nonzero A/B equal the base graph on
merged weights W + (alpha/r)·B@A (per checkpoint layout, W_pack rows for Baichuan)."""

import numpy as np
import pytest

from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import PassContext, PassManager, parse_pipeline
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.passes.lora import init_lora_weights, lora_params
from llmc.runtime.generate import full_logits

IDS = np.random.default_rng(3).integers(3, 200, size=(2, 7))


def with_lora(ck, spec):
    g = build_full(ck.config, ck.naming)
    ctx = PassContext(model={"num_layers": ck.config.num_layers})
    records = PassManager(parse_pipeline(spec)).run(g, ctx)
    return g, records[0], ctx


def random_adapter(g, seed=5):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.2, g.params[n].type.shape).astype(np.float32)
            for n in lora_params(g)}


def merged_by_hand(ck, adapter, scale):
    """The base weights with each adapter folded in, written out per layout."""
    w = {n: np.array(ck.weights[n], dtype=np.float32) for n in ck.weights}
    h = ck.config.hidden_size
    for a_name, a in adapter.items():
        if ".lora_A." not in a_name:
            continue
        delta = scale * adapter[a_name.replace("lora_A", "lora_B")] @ a
        module = a_name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        target = module + ".weight"
        if target not in w:  # Baichuan: q/k/v rows of W_pack
            stem, proj = module.rsplit(".", 1)
            i = "qkv".index(proj[0])
            w[stem + ".W_pack.weight"][i * h:(i + 1) * h] += delta
        elif ck.naming.linear_in_out:
            w[target] += delta.T
        else:
            w[target] += delta
    return w


@pytest.mark.parametrize("arch,fmt", [("llama_gqa", "hf"), ("baichuan2_7b", "hf"),
                                      ("llama", "paddle")])
def test_lora_graph_equals_merged_weights(arch, fmt, tmp_path):
    ck = open_checkpoint(fixtures.write_fixture(tmp_path, arch, fmt))
    targets = "q+k+v+o+gate+up+down" + ("+pack" if arch.startswith("baichuan") else "")
    g, rec, ctx = with_lora(ck, f"lora{{targets={targets},rank=4,alpha=8.0,dropout=0.1}}")
    assert rec.matched == rec.expected == len(targets.split("+")) * ck.config.num_layers
    assert ctx.model["lora"]["dropout"] == 0.1
    base = full_logits(build_full(ck.config, ck.naming), ck.weights, IDS)
    init = full_logits(g, {**ck.weights, **init_lora_weights(g)}, IDS)
    np.testing.assert_array_equal(init, base)
    adapter = random_adapter(g)
    ours = full_logits(g, {**ck.weights, **adapter}, IDS)
    merged = full_logits(build_full(ck.config, ck.naming), merged_by_hand(ck, adapter, 2.0), IDS)
    assert np.abs(ours - base).max() > 1e-2  # the adapter changes the logits
    np.testing.assert_allclose(ours, merged, rtol=0, atol=2e-5 * np.abs(merged).max())


def test_lora_shapes_and_init(tmp_path):
    ck = open_checkpoint(fixtures.write_fixture(tmp_path, "llama_gqa", "hf"))
    g, _, _ = with_lora(ck, "lora{targets=k+down,rank=3}")
    c = ck.config
    kv = c.num_kv_heads * c.head_dim
    k_a = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"
    assert g.params[k_a].type.shape == (3, c.hidden_size)
    assert g.params[k_a.replace("lora_A", "lora_B")].type.shape == (kv, 3)
    down_b = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    assert g.params[down_b].type.shape == (c.hidden_size, 3)
    assert len(lora_params(g)) == 4 * c.num_layers
    init = init_lora_weights(g)
    assert not init[down_b].any() and np.abs(init[k_a]).max() <= 1 / np.sqrt(c.hidden_size)
    assert init[k_a].std() > 0


@pytest.mark.parametrize("spec,msg", [("lora{targets=q+x}", "unknown target 'x'"),
                                      ("lora{rank=0}", "must be >= 1"),
                                      ("lora{dropout=1.0}", "dropout")])
def test_bad_options(spec, msg, tmp_path):
    ck = open_checkpoint(fixtures.write_fixture(tmp_path, "baichuan2_7b", "hf"))
    with pytest.raises(LlmcError, match=msg):
        with_lora(ck, spec)


def test_applying_twice_is_refused(tmp_path):
    ck = open_checkpoint(fixtures.write_fixture(tmp_path, "baichuan2_7b", "hf"))
    with pytest.raises(LlmcError, match="already has an adapter"):
        with_lora(ck, "lora{targets=q},lora{targets=q}")
