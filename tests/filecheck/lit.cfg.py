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
config.substitutions.append(("llmc", f"{sys.executable} -m llmc.cli"))
