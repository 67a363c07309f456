"""Peers of the generation benchmark (benchmarks/generate.py): each module times one runner
(llmc on ONNX Runtime, HF transformers, llama.cpp, onnxruntime-genai) or measures the physical
floor, on the same locally written random-weight checkpoint."""
