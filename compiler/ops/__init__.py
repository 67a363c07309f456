"""All ops, declared once each in the registry (schema, inference, reference kernel)."""

from . import arith, nn, tensor  # noqa: F401  (declares the core ops)
from .registry import REGISTRY, AttrSpec, OpDef, OpError, defop, get_op

__all__ = ["REGISTRY", "AttrSpec", "OpDef", "OpError", "defop", "get_op"]
