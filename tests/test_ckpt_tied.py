"""Tied-embedding checkpoints that still store `lm_head.weight` (PaddleNLP's model_state.pdparams
and older torch saves store both names): accepted, the graph uses the embedding, and a stored
head that differs from the embedding is warned about once."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import reference_models as rm
from safetensors.numpy import load_file, save_file

from clitools import run_cli
from llmc.frontends import fixtures as F
from llmc.frontends.errors import CheckpointWarning
from llmc.frontends.llama import build_full
from llmc.frontends.loader import config_param_shapes, open_checkpoint
from llmc.runtime.generate import full_logits

IDS = np.random.default_rng(11).integers(3, 256, size=(2, 7))


def logits(d) -> np.ndarray:
    ck = open_checkpoint(d)
    return full_logits(build_full(ck.config, ck.naming), ck.weights, IDS)


def rel_err(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def expected(ck) -> dict:
    return {n: tuple(s) for n, s in config_param_shapes(ck.config, ck.naming).items()}


@pytest.fixture(scope="module")
def tied_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tied")
    return {fmt: F.write_fixture(base / fmt, "llama", fmt, tied=True)
            for fmt in ("hf-numpy", "paddle", "hf")}


@pytest.mark.parametrize("fmt, head_shape", [("hf-numpy", (256, 64)), ("paddle", (256, 64))])
def test_tied_checkpoint_storing_lm_head_is_accepted(tied_dirs, fmt, head_shape,
                                                     monkeypatch, capsys):
    d = tied_dirs[fmt]
    ck = open_checkpoint(d)
    assert ck.config.tie_word_embeddings and ck.naming.lm_head in ck.weights
    assert ck.weights.info(ck.naming.lm_head).shape == head_shape
    assert ck.naming.lm_head not in expected(ck)  # the tied graph has no lm_head parameter
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal to the embedding: no warning
        assert ck.problems(expected(ck)) == []
    code, out, err = run_cli(monkeypatch, capsys, "inspect", d, "--json")
    assert code == 0, err
    assert json.loads(out)["weights"] == "checked"


def test_both_formats_give_the_transformers_tied_logits(tied_dirs):
    """transformers (save_pretrained drops the tied head) is the oracle for both formats."""
    want = rm.hf_logits(tied_dirs["hf"], IDS)
    assert "lm_head.weight" not in F.read_safetensors_dir(tied_dirs["hf"])
    for fmt in ("hf-numpy", "paddle", "hf"):
        assert rel_err(logits(tied_dirs[fmt]), want) <= 1e-5, fmt


def _replace_head(d, fmt: str, head: np.ndarray) -> None:
    if fmt == "hf-numpy":
        t = load_file(str(d / "model.safetensors"))
        t["lm_head.weight"] = head
        save_file(t, str(d / "model.safetensors"))
    else:
        state = F.paddlenlp_weights("llama", tied=True)
        state["lm_head.weight"] = head
        F._save_pdparams(d / "model_state.pdparams", state)


@pytest.mark.parametrize("fmt", ["hf-numpy", "paddle"])
def test_differing_stored_head_warns_once_and_the_embedding_is_used(tied_dirs, fmt, tmp_path):
    import shutil

    d = shutil.copytree(tied_dirs[fmt], tmp_path / fmt)
    embed = F.random_weights("llama")["model.embed_tokens.weight"]
    _replace_head(d, fmt, np.ascontiguousarray(embed[::-1]))
    ck = open_checkpoint(d)
    with pytest.warns(CheckpointWarning, match="differs from .*embed_tokens.weight.* "
                                               "tie_word_embeddings") as seen:
        assert ck.problems(expected(ck)) == []
        assert ck.problems(expected(ck)) == []  # validated twice, warned once
    assert len([w for w in seen if w.category is CheckpointWarning]) == 1
    assert "lm_head.weight" in str(seen[0].message) and str(d) in str(seen[0].message)
    assert rel_err(logits(d), logits(tied_dirs[fmt])) == 0.0


def test_head_of_another_shape_is_a_differing_head(tied_dirs, tmp_path):
    import shutil

    d = shutil.copytree(tied_dirs["hf-numpy"], tmp_path / "m")
    _replace_head(d, "hf-numpy", np.zeros((256, 8), np.float32))
    ck = open_checkpoint(d)
    with pytest.warns(CheckpointWarning, match="differs"):
        assert ck.problems(expected(ck)) == []


def test_untied_checkpoint_still_needs_its_head(tied_dirs, tmp_path, monkeypatch, capsys):
    """Only a tied config accepts the extra head; the same file untied keeps its lm_head."""
    import shutil

    d = shutil.copytree(tied_dirs["hf-numpy"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, tie_word_embeddings=False)))
    ck = open_checkpoint(d)
    assert ck.naming.lm_head in expected(ck)
    t = load_file(str(d / "model.safetensors"))
    del t["lm_head.weight"]
    save_file(t, str(d / "model.safetensors"))
    code, _, err = run_cli(monkeypatch, capsys, "inspect", d)
    assert code == 2 and "'lm_head.weight' is missing" in err


def test_tied_torch_bin_with_shared_storage(tmp_path):
    """Older torch saves: lm_head.weight and the embedding are one storage under two names."""
    torch = pytest.importorskip("torch")
    w = {k: torch.from_numpy(v) for k, v in F.random_weights("llama", tied=True).items()}
    w["lm_head.weight"] = w["model.embed_tokens.weight"]
    torch.save(w, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(F.tiny_config("llama", tied=True)))
    ck = open_checkpoint(tmp_path, allow_pickle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ck.problems(expected(ck)) == []
