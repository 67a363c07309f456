# lit configuration for llmc FileCheck golden tests (run from tests/test_filecheck.py).
import os
import sys

import lit.formats

config.name = "llmc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".llmc"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["Output"]
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
# lit hands tests a clean environment: put this checkout first on the path, so that the
# golden files test its code and not whatever `llmc` the interpreter has installed.
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
config.environment["PYTHONPATH"] = os.pathsep.join(
    p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
config.substitutions.append(("llmc", f"{sys.executable} -m llmc.cli"))
