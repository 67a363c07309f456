"""lora: low-rank adapters on chosen linears of the full-form graph.

Each target `y = linear(x, W)` becomes

    y' = y + (alpha / rank) * linear(linear(x, A), B)

with A [rank, in] and B [out, rank] new parameters named as PEFT saves them
(`base_model.model.<W's module>.lora_A.weight`, `...lora_B.weight`), both in PEFT's
[out, in] layout whatever the base weight's layout. With B zero (`init_lora_weights`)
the graph computes what it did before. Baichuan's packed `W_pack` keeps one linear:
the q/k/v adapters add to the matching outputs of its split, and are named as if
q_proj/k_proj/v_proj existed, which is how `merge` folds them into the packed rows;
the `pack` target adapts `W_pack` as a whole, as PEFT does with target_modules=[W_pack].

Dropout acts on the adapter input during training only; the pass records it, with
the other options, in `ctx.model["lora"]` for the trainer and the adapter writer.
"""

from __future__ import annotations

import math
import re

import numpy as np

from llmc.compiler.builder import make_op
from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph, Op, TensorType, Value
from llmc.compiler.passmanager import Option, PassContext, define_pass

from .fuse_common import num_layers

# target key -> the module the HF checkpoint names for it
TARGET_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                  "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                  "down": "mlp.down_proj", "pack": "self_attn.W_pack"}
PACKED_ORDER = ("q", "k", "v")  # W_pack's output blocks
PEFT_PREFIX = "base_model.model."
_WEIGHT = re.compile(r"(?P<module>.*layers\.\d+\.(?:self_attn|mlp)\.(?P<proj>\w+))\.weight")


def parse_targets(spec: str) -> list[str]:
    """`q,k,v` or `q+k+v` (the pipeline spelling, where commas separate options) → keys."""
    keys = [t.strip() for t in re.split(r"[+,]", spec) if t.strip()]
    unknown = [k for k in keys if k not in TARGET_MODULES]
    if unknown or not keys:
        raise LlmcError(f"pass 'lora': option 'targets': unknown target '{(unknown or [''])[0]}' "
                        f"(known: {', '.join(TARGET_MODULES)})")
    return list(dict.fromkeys(keys))


def adapter_names(module: str) -> tuple[str, str]:
    """PEFT's saved names of the A and B weights of the adapter on `module`."""
    return (f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight")


def _plain_param_linear(op: Op) -> re.Match | None:
    if op.kind != "linear" or op.operand("bias") is not None or not op.operand("w").is_param:
        return None
    return _WEIGHT.fullmatch(op.operand("w").name)


def _delta(g: Graph, anchor: Op, x: Value, module: str, out_features: int,
           rank: int, scale: float) -> Value:
    """scale * linear(linear(x, A), B), placed before `anchor`."""
    a_name, b_name = adapter_names(module)
    in_features = x.type.shape[-1]
    dtype = x.type.dtype
    wa = g.add_param(a_name, TensorType(dtype, (rank, in_features)))
    wb = g.add_param(b_name, TensorType(dtype, (out_features, rank)))
    la = make_op(g, "linear", [x, wa], {}, name="lora_a")
    lb = make_op(g, "linear", [la.output, wb], {}, name="lora_b")
    c = make_op(g, "constant", [], {"value": [scale], "dtype": dtype}, name="lora_scale")
    s = make_op(g, "mul", [lb.output, c.output], {}, name="lora_delta")
    g.insert_before(anchor, [la, lb, c, s])
    return s.output


def _add_after(g: Graph, y: Value, delta: Value) -> None:
    """Every reader of `y` (graph outputs included) reads y + delta, placed right after
    y's producer."""
    ops = g.ops
    following = ops[ops.index(y.producer) + 1:]
    def earlier_lora_add(op: Op) -> bool:  # keeps the adds of a packed split in q, k, v order
        return op.kind == "add" and op.operand("lhs").producer is y.producer

    while following and earlier_lora_add(following[0]):
        following.pop(0)
    add = make_op(g, "add", [y, delta], {}, name="lora_out")
    g.replace_all_uses(y, add.output)
    if following:
        g.insert_before(following[0], [add])
    else:
        g.append(add)


def _packed_split(op: Op) -> Op | None:
    users = list(op.output.users)
    if len(users) == 1 and users[0].kind == "split" and len(users[0].outputs) == 3:
        return users[0]
    return None


def _sites(g: Graph, keys: list[str]) -> list[tuple[Op, Value, str]]:
    """(op to place the adapter before, value it adds to, module name) per target linear."""
    sites = []
    for op in g.ops:
        m = _plain_param_linear(op)
        if m is None:
            continue
        key = next((k for k, mod in TARGET_MODULES.items() if m["module"].endswith(mod)), None)
        if key in keys:
            sites.append((op, op.output, m["module"]))
        split = _packed_split(op) if m["proj"] == "W_pack" else None
        if split is not None:
            stem = m["module"][: -len("W_pack")]
            sites += [(op, out, f"{stem}{key}_proj")
                      for out, key in zip(split.outputs, PACKED_ORDER) if key in keys]
    return sites


def lora(g: Graph, ctx: PassContext, targets: str, rank: int, alpha: float,
         dropout: float) -> int:
    keys = parse_targets(targets)
    if not 0.0 <= dropout < 1.0:
        raise LlmcError(f"pass 'lora': option 'dropout' must be in [0, 1), got {dropout}")
    scale = alpha / rank
    sites = _sites(g, keys)
    for anchor, y, module in sites:
        if adapter_names(module)[0] in g.params:
            raise LlmcError(f"pass 'lora': {module} already has an adapter")
        delta = _delta(g, anchor, anchor.operand("x"), module, y.type.shape[-1], rank, scale)
        _add_after(g, y, delta)
    g.renumber()
    ctx.model["lora"] = {"targets": keys, "rank": rank, "alpha": alpha, "dropout": dropout,
                         "modules": [m for _, _, m in sites]}
    return len(sites)


def _expected(g: Graph, ctx: PassContext, targets: str) -> int:
    """Layers × targets when the driver knows the layer count; otherwise one per target
    weight the graph declares (a W_pack stands for its q, k and v)."""
    keys = parse_targets(targets)
    n = num_layers(ctx)
    if n is not None:
        return n * len(keys)
    count = 0
    for name in g.params:
        m = _WEIGHT.fullmatch(name)
        if m is None:
            continue
        count += any(m["module"].endswith(TARGET_MODULES[k]) for k in keys)
        if m["proj"] == "W_pack":
            count += sum(k in keys for k in PACKED_ORDER)
    return count


def lora_params(g: Graph) -> list[str]:
    """The adapter parameters of a graph (what LoRA training updates)."""
    return [n for n in g.params if n.endswith((".lora_A.weight", ".lora_B.weight"))]


def init_lora_weights(g: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """PEFT's initialisation: A uniform in ±1/sqrt(in) (kaiming-uniform, a=√5), B zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in lora_params(g):
        t = g.params[name].type
        shape = tuple(int(d) for d in t.shape)
        if name.endswith(".lora_A.weight"):
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = rng.uniform(-bound, bound, shape).astype(t.dtype.np)
        else:
            out[name] = np.zeros(shape, t.dtype.np)
    return out


define_pass("lora", "Low-rank adapters: target linear(x, W) → + (alpha/rank)·linear(linear(x, A), "
            "B), A/B named as PEFT saves them.", lora, expected=_expected, options={
                "targets": Option("q+k+v+o+gate+up+down", "adapted projections, '+'-separated: "
                                  + ", ".join(TARGET_MODULES)),
                "rank": Option(8, "adapter rank r", min=1),
                "alpha": Option(16.0, "lora_alpha; the update is scaled by alpha/rank", min=0.0),
                "dropout": Option(0.0, "dropout on the adapter input (training only)", min=0.0)})
