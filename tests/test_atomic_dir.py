"""compiler/atomic.py: a directory appears whole or not at all, with the umask's mode."""

import os

import pytest

from llmc.compiler.atomic import replace_dir
from llmc.compiler.errors import LlmcError


def test_replaces_an_existing_directory_whole(tmp_path):
    out = tmp_path / "d"
    replace_dir(out, lambda t: (t / "a").write_text("1"))
    replace_dir(out, lambda t: (t / "b").write_text("2"))
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "no leftovers beside it"


def test_a_failing_fill_leaves_the_previous_directory_and_no_debris(tmp_path):
    out = tmp_path / "d"
    replace_dir(out, lambda t: (t / "a").write_text("1"))

    def broken(t):
        (t / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_dir(out, broken)
    assert (out / "a").read_text() == "1" and not (out / "half").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_mode_follows_the_umask_and_a_file_is_refused(tmp_path):
    old = os.umask(0o022)
    try:
        out = replace_dir(tmp_path / "d", lambda t: None)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    (tmp_path / "f").write_text("keep")
    with pytest.raises(LlmcError, match="not a directory"):
        replace_dir(tmp_path / "f", lambda t: None)
    assert (tmp_path / "f").read_text() == "keep"
