"""llmc: an open, testable graph compiler for LLaMA-family models."""

__version__ = "0.1.0"
