"""llmc.passes: generic passes, fusion passes and per-target pipelines.

Importing this package registers every pass with the pass manager."""

from . import canonicalize, constant_fold, cse, dce  # noqa: F401
