"""merge: the merged checkpoint gives the unmerged LoRA graph's logits (reference
interpreter) and transformers' on the merged directory; layout, files and refusals."""

import numpy as np
import pytest
import torch

from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.peft import read_adapter
from llmc.lora import add_lora, lora_graph, save_lora
from llmc.merge import merge
from llmc.passes.lora import lora_params
from llmc.runtime.generate import full_logits

import reference_models as rm

IDS = np.random.default_rng(6).integers(3, 200, size=(2, 8))
TOL = 1e-5


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def llmc_adapter(base, out, targets="q,k,v,o,gate,up,down", seed=0):
    ck = open_checkpoint(base)
    g = build_full(ck.config, ck.naming)
    recorded = add_lora(g, targets, rank=4, alpha=8.0)
    rng = np.random.default_rng(seed)
    weights = {n: rng.normal(0, 0.1, g.params[n].type.shape).astype(np.float32)
               for n in lora_params(g)}
    return save_lora(out, recorded, weights, str(base))


def logits_of(model_dir):
    ck = open_checkpoint(model_dir)
    return full_logits(build_full(ck.config, ck.naming), ck.weights, IDS)


ALL = "q,k,v,o,gate,up,down"


@pytest.mark.parametrize("arch,fmt,targets", [("llama_gqa", "hf-sharded", ALL),
                                              ("baichuan2_7b", "hf", ALL),
                                              ("baichuan2_13b", "hf", ALL + ",pack")])
def test_merged_equals_unmerged(arch, fmt, targets, tmp_path):
    base = fixtures.write_fixture(tmp_path / "base", arch, fmt)
    adapter = llmc_adapter(base, tmp_path / "adapter", targets)
    report = merge(base, adapter, tmp_path / "merged")
    unmerged = full_logits(*lora_graph(open_checkpoint(base), adapter), IDS)
    assert rel_err(unmerged, logits_of(base)) > 1e-2
    assert rel_err(logits_of(tmp_path / "merged"), unmerged) <= TOL
    assert rel_err(rm.hf_logits(tmp_path / "merged", IDS, arch=arch), unmerged) <= TOL
    base_files = sorted(p.name for p in base.iterdir())
    assert report.files == base_files == sorted(p.name for p in (tmp_path / "merged").iterdir())
    for name in base_files:
        if not name.endswith(".safetensors"):
            assert (base / name).read_bytes() == (tmp_path / "merged" / name).read_bytes()
    if arch.startswith("baichuan"):
        packed = ["W_pack"] if "pack" in targets else []
        assert report.changed["model.layers.0.self_attn.W_pack.weight"] == [
            f"model.layers.0.self_attn.{p}" for p in packed + ["q_proj", "k_proj", "v_proj"]]


def test_peft_made_adapter_merges(tmp_path):
    peft = pytest.importorskip("peft")
    base = fixtures.write_fixture(tmp_path / "base", "llama", "hf")
    model = peft.get_peft_model(rm.load_hf_model(base), peft.LoraConfig(
        r=2, lora_alpha=5, target_modules=["v_proj", "down_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
        ref = model.eval()(torch.as_tensor(IDS)).logits.numpy()
    model.save_pretrained(str(tmp_path / "adapter"))
    merge(base, tmp_path / "adapter", tmp_path / "merged")
    assert rel_err(ref, rm.hf_logits(base, IDS)) > 1e-2
    assert rel_err(rm.hf_logits(tmp_path / "merged", IDS), ref) <= TOL
    assert rel_err(logits_of(tmp_path / "merged"), ref) <= TOL


def test_refusals(tmp_path):
    base = fixtures.write_fixture(tmp_path / "base", "baichuan2_7b", "hf")
    adapter = llmc_adapter(base, tmp_path / "adapter", "q,down")
    for out in (base, base / "merged", adapter, tmp_path):
        with pytest.raises(LlmcError, match="refusing to write there"):
            merge(base, adapter, out)
    paddle = fixtures.write_fixture(tmp_path / "paddle", "llama", "paddle")
    with pytest.raises(LlmcError, match="writes safetensors checkpoints"):
        merge(paddle, adapter, tmp_path / "m1")
    other = fixtures.write_fixture(tmp_path / "other", "llama_gqa", "hf")
    with pytest.raises(LlmcError, match="shape"):
        merge(other, llmc_adapter(base, tmp_path / "a2", "down"), tmp_path / "m2")


def test_failed_merge_keeps_the_old_output(tmp_path, monkeypatch):
    base = fixtures.write_fixture(tmp_path / "base", "baichuan2_7b", "hf")
    adapter = llmc_adapter(base, tmp_path / "adapter", "o")
    out = tmp_path / "merged"
    merge(base, adapter, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llmc.merge.safetensors_bytes", broken)
    with pytest.raises(LlmcError, match="No space left"):
        merge(base, llmc_adapter(base, tmp_path / "a2", "o", seed=9), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a2", "adapter", "base", "merged"]


def test_bf16_checkpoint_stays_bf16(tmp_path):
    from safetensors.torch import load_file, save_file

    base = fixtures.write_fixture(tmp_path / "base", "baichuan2_7b", "hf")
    f32 = load_file(str(base / "model.safetensors"))
    save_file({n: t.to(torch.bfloat16) for n, t in f32.items()}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    adapter = llmc_adapter(base, tmp_path / "adapter", "v,up")
    merge(base, adapter, tmp_path / "merged")
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    a = read_adapter(adapter)
    up = "model.layers.1.mlp.up_proj"
    want = (f32[f"{up}.weight"].to(torch.bfloat16).float()
            + torch.as_tensor(a.delta(up))).to(torch.bfloat16)
    assert torch.equal(merged[f"{up}.weight"], want)
    norm = "model.layers.1.input_layernorm.weight"
    assert torch.equal(merged[norm], f32[norm].to(torch.bfloat16))
