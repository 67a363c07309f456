"""Export a compiled graph to `model.onnx` plus one external data file.

Each initializer is written to `model.onnx.data` as the lowering produces it, at an
offset aligned for memory mapping, and dropped: the weights are never held twice. The
model uses standard ONNX ops (opset 23) and com.microsoft ops only, so it opens in
Netron and in a bare `onnxruntime.InferenceSession`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from llmc.compiler.errors import LlmcError
from llmc.compiler.ir import Graph

from .lower import lower_graph

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
ALIGN = 65536  # ONNX Runtime maps external data in place when offsets are page aligned
INLINE_BYTES = 1024


class ExternalData:
    """An initializer sink writing tensors of INLINE_BYTES or more to one data file."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.bytes = 0

    def __call__(self, name: str, arr: np.ndarray) -> TensorProto:
        arr = np.asarray(arr, order="C")
        if arr.nbytes < INLINE_BYTES:
            return numpy_helper.from_array(arr, name)
        offset = -(-self.file.tell() // ALIGN) * ALIGN
        self.file.seek(offset)
        self.file.write(memoryview(arr).cast("B"))
        self.bytes += arr.nbytes
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype),
                        dims=list(arr.shape), data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.path.name), ("offset", str(offset)),
                     ("length", str(arr.nbytes))):
            t.external_data.add(key=k, value=v)
        return t

    def close(self) -> None:
        """Close the data file."""
        self.file.close()


def export(graph: Graph, weights, out_dir: str | Path, *, target: str = "cpu",
           max_positions: int = 4096, metadata: dict | None = None,
           check: bool = True) -> Path:
    """Write `out_dir/model.onnx` (+ `model.onnx.data`) computing `graph`; returns the model
    path. `check` runs `onnx.checker.check_model` on the path with the full check."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LlmcError(f"{out}: cannot create the export directory ({e.strerror or e})") from None
    path = out / MODEL_FILE
    sink = ExternalData(out / DATA_FILE)
    try:
        model = lower_graph(graph, weights, target=target, max_positions=max_positions, sink=sink)
    except BaseException:
        sink.close()
        sink.path.unlink(missing_ok=True)
        raise
    sink.close()
    meta = {"max_positions": str(max_positions), "target": target, **(metadata or {})}
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save_model(model, tmp)
    os.replace(tmp, path)
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path
