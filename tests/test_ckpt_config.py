"""config.json fields that real configs hold in several shapes (token ids as int or list) and
fields that must be bounded or typed: errors name the file and the field, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clitools import run_cli
from llmc.frontends import fixtures as F
from llmc.frontends.config import ConfigError, parse_config
from llmc.frontends.loader import open_checkpoint

PATH = Path("m/config.json")


def edit_config(model, **changes) -> None:
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def parse(**changes):
    return parse_config(dict(F.tiny_config("llama"), **changes), PATH)


@pytest.mark.parametrize("value, eos", [(2, (2,)), ([2, 7], (2, 7)), ([128001, 128009],
                                         (128001, 128009)), (None, ()), ([], ())])
def test_eos_token_id_is_an_int_or_a_list(value, eos):
    cfg = parse(eos_token_id=value)
    assert cfg.eos_token_ids == eos
    assert cfg.eos_token_id == (eos[0] if eos else None)
    d = cfg.to_dict()
    assert d["eos_token_ids"] == list(eos) and d["eos_token_id"] == cfg.eos_token_id
    json.dumps(d)


def test_bos_and_pad_lists_keep_their_first_id():
    cfg = parse(bos_token_id=[1, 5], pad_token_id=[0])
    assert (cfg.bos_token_id, cfg.pad_token_id) == (1, 0)
    assert parse(pad_token_id=None).pad_token_id is None


@pytest.mark.parametrize("field", ["eos_token_id", "bos_token_id", "pad_token_id"])
@pytest.mark.parametrize("value", ["</s>", 2.0, True, {"id": 2}, [2, "x"], [[2]], [2, None]])
def test_token_id_of_another_type_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=rf"config\.json: field '{field}' must be a token id"):
        parse(**{field: value})


def test_list_eos_compiles_and_reports_every_id(monkeypatch, capsys, model, tmp_path):
    edit_config(model, eos_token_id=[2, 7])
    assert open_checkpoint(model).config.eos_token_ids == (2, 7)
    out = tmp_path / "art"
    code, _, err = run_cli(monkeypatch, capsys, "compile", model, "--target", "cpu", "-o", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["eos_token_ids"] == [2, 7] and report["config"]["eos_token_id"] == 2


def test_string_eos_is_refused_by_the_cli(monkeypatch, capsys, model):
    edit_config(model, eos_token_id="</s>")
    code, _, err = run_cli(monkeypatch, capsys, "inspect", model)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "config.json: field 'eos_token_id' must be a token id" in err and "'</s>'" in err


@pytest.mark.parametrize("field, value", [
    ("max_position_embeddings", 10**15), ("max_position_embeddings", (1 << 24) + 1),
    ("model_max_length", 10**15), ("num_hidden_layers", 1025), ("num_key_value_heads", 8192),
    ("hidden_size", 1 << 17), ("vocab_size", 4_000_001), ("intermediate_size", 1_000_001),
])
def test_sizes_are_bounded(monkeypatch, capsys, model, field, value):
    changes = {field: value}
    if field == "model_max_length":
        cfg = json.loads((model / "config.json").read_text())
        del cfg["max_position_embeddings"]
        (model / "config.json").write_text(json.dumps(cfg))
    edit_config(model, **changes)
    code, _, err = run_cli(monkeypatch, capsys, "inspect", model)
    assert code == 2 and err.count("\n") == 1, err
    assert f"config.json: field '{field}' is {value}, above the supported maximum" in err


def test_largest_real_context_is_accepted():
    assert parse(max_position_embeddings=10_485_760).max_position_embeddings == 10_485_760


@pytest.mark.parametrize("field", ["tie_word_embeddings", "alibi", "norm_head"])
def test_boolean_fields_must_be_booleans(field):
    with pytest.raises(ConfigError, match=f"field '{field}' must be true or false"):
        parse(**{field: "false"})
    assert parse(**{field: None}) == parse()
