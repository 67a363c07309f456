"""Pass options are validated: a negative, ill-typed or repeated option is one error line
naming the pass and the option, on the command line and through the API alike."""

import pytest
from clitools import run_cli

import llmc.passes  # noqa: F401  (registers the passes)
from llmc.compiler.errors import LlmcError
from llmc.compiler.passmanager import PASSES, parse_pipeline

GRAPH = "graph @g(%x: f32[2]) {\n  %y = neg(%x) : f32[2]\n  return %y\n}\n"

BAD_SPECS = {
    "constant_fold{max_elements=-1}": "pass 'constant_fold': option 'max_elements' must be >= 0, got -1",
    "constant_fold{max_elements=1.5}": "pass 'constant_fold': option 'max_elements' expects int, got '1.5'",
    "constant_fold{max_elements=}": "pass 'constant_fold': option 'max_elements' expects int, got ''",
    "constant_fold{max_elements=1,max_elements=2}": "pass 'constant_fold': option 'max_elements' is given twice",
    "fuse_rms_norm{residual=maybe}": "pass 'fuse_rms_norm': option 'residual' expects bool, got 'maybe'",
    "dce{passes=2}": "pass 'dce': unknown option 'passes' (options: none)",
}


@pytest.mark.parametrize("spec", sorted(BAD_SPECS))
def test_bad_options_are_refused_by_the_pipeline_parser(spec):
    with pytest.raises(LlmcError) as e:
        parse_pipeline(spec)
    assert str(e.value) == BAD_SPECS[spec]


@pytest.mark.parametrize("spec", sorted(BAD_SPECS))
def test_cli_bad_option_exits_2_with_one_line(spec, monkeypatch, capsys, tmp_path):
    f = tmp_path / "g.llmc"
    f.write_text(GRAPH)
    code, out, err = run_cli(monkeypatch, capsys, "opt", f, "--passes", spec)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: {BAD_SPECS[spec]}"]


def test_good_options_still_parse():
    (fold,) = parse_pipeline("constant_fold{max_elements=0}")
    assert fold.max_elements == 0 and fold.spec() == "constant_fold{max_elements=0}"
    (norm,) = parse_pipeline("fuse_rms_norm{residual=false}")
    assert norm.residual is False


def test_options_are_checked_when_a_pass_is_built_in_python():
    fold = PASSES["constant_fold"]
    with pytest.raises(LlmcError, match="option 'max_elements' must be >= 0, got -5"):
        fold(max_elements=-5)
    with pytest.raises(LlmcError, match="option 'max_elements' expects int, got '12'"):
        fold(max_elements="12")
    with pytest.raises(LlmcError, match="option 'residual' expects bool, got 1"):
        PASSES["fuse_rms_norm"](residual=1)
