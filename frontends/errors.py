"""The frontends' user errors, in one module every reader imports (no import cycle)."""

from __future__ import annotations

from llmc.compiler.errors import LlmcError


class ConfigError(LlmcError):
    """A config.json that cannot describe a supported model."""


class CheckpointError(LlmcError):
    """A weight file or directory that cannot be read as a checkpoint."""


class MissingDependencyError(LlmcError):
    """An optional package a command needs is not installed; the message says what to install."""


def require(module: str, why: str, install: str):
    """Import `module`, or raise MissingDependencyError naming the `pip install` to run."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{why} needs the '{module}' package, which is not "
                                     f"installed: run `pip install {install}`") from None


class CheckpointWarning(UserWarning):
    """A checkpoint that loads but holds something surprising (e.g. a tied lm_head that
    differs from the embedding it is tied to)."""
