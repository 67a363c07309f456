"""PEFT layout: llmc's adapter loads in `peft.PeftModel` and gives llmc's logits; a
PEFT-made adapter loads into llmc and gives PEFT's logits; bad adapters are refused."""

import json

import numpy as np
import pytest
import torch

from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures
from llmc.frontends.llama import build_full
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.peft import read_adapter
from llmc.lora import add_lora, lora_graph, save_lora
from llmc.passes.lora import lora_params
from llmc.runtime.generate import full_logits

peft = pytest.importorskip("peft")
import reference_models as rm  # noqa: E402

IDS = np.random.default_rng(4).integers(3, 200, size=(2, 8))
TOL = 1e-5


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fixtures.write_fixture(tmp_path_factory.mktemp("base"), "llama_gqa", "hf")


def peft_logits(base_dir, adapter_dir):
    model = peft.PeftModel.from_pretrained(rm.load_hf_model(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(torch.as_tensor(IDS)).logits.float().numpy()


def test_llmc_adapter_loads_in_peft(base, tmp_path):
    ck = open_checkpoint(base)
    g = build_full(ck.config, ck.naming)
    recorded = add_lora(g, "q,v,down", rank=4, alpha=8.0, dropout=0.05)
    rng = np.random.default_rng(0)
    adapter = {n: rng.normal(0, 0.3, g.params[n].type.shape).astype(np.float32)
               for n in lora_params(g)}
    out = save_lora(tmp_path / "adapter", recorded, adapter, str(base))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["lora_dropout"] == 0.05
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    assert config["bias"] == "none" and config["base_model_name_or_path"] == str(base)
    ours = full_logits(g, {**ck.weights, **adapter}, IDS)
    ref = peft_logits(base, out)
    assert rel_err(ours, rm.hf_logits(base, IDS)) > 1e-2  # the adapter matters
    assert rel_err(ours, ref) <= TOL
    assert not list(tmp_path.glob(".adapter*"))  # no temporary left behind


def make_peft_adapter(base_dir, out_dir, targets, seed=1):
    """An adapter made and saved by PEFT itself, with B set nonzero by hand."""
    model = peft.get_peft_model(rm.load_hf_model(base_dir), peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(str(out_dir))
    return out_dir


def test_peft_adapter_loads_into_llmc(base, tmp_path):
    d = make_peft_adapter(base, tmp_path / "peft", ["q_proj", "k_proj", "o_proj", "gate_proj",
                                                    "up_proj"])
    ck = open_checkpoint(base)
    g, weights = lora_graph(ck, d)
    assert len(lora_params(g)) == 2 * 5 * ck.config.num_layers
    ours = full_logits(g, weights, IDS)
    assert rel_err(ours, rm.hf_logits(base, IDS)) > 1e-2
    assert rel_err(ours, peft_logits(base, d)) <= TOL


def test_refused_adapters(base, tmp_path):
    d = make_peft_adapter(base, tmp_path / "peft", ["q_proj"])
    cfg_path = d / "adapter_config.json"
    good = json.loads(cfg_path.read_text())
    for key, value, msg in [("use_dora", True, "use_dora"), ("bias", "all", "bias"),
                            ("peft_type", "IA3", "peft_type"),
                            ("target_modules", "q_proj|v_proj", "target_modules"),
                            ("rank_pattern", {"q_proj": 8}, "rank_pattern")]:
        cfg_path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(LlmcError, match=msg):
            read_adapter(d)
    cfg_path.write_text(json.dumps({**good, "r": 3}))
    with pytest.raises(LlmcError, match="rank r=3"):
        read_adapter(d)
    cfg_path.write_text(json.dumps({**good, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(LlmcError, match="'lm_head' cannot run"):
        lora_graph(open_checkpoint(base), d)
    with pytest.raises(LlmcError, match="not a PEFT adapter"):
        read_adapter(tmp_path)
