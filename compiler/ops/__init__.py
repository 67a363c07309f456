"""All ops, declared once each in the registry (schema, inference, reference kernel)."""

from . import arith, nn, tensor  # noqa: F401  (declares the core ops)
from . import inference  # noqa: F401  (Paddle inference ops)
from . import fused  # noqa: F401  (fused ops the target pipelines produce)
from . import cache  # noqa: F401  (KV-cache ops of the cache form)
from . import collective, mc2  # noqa: F401  (tensor-parallel ops and MC2 fused ops)
from .registry import REGISTRY, AttrSpec, OpDef, OpError, defop, get_op

__all__ = ["REGISTRY", "AttrSpec", "OpDef", "OpError", "defop", "get_op"]
