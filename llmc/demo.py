"""The built-in demo: a tiny llama-shaped graph through the generic pipeline and the interpreter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from llmc.compiler.builder import Builder
from llmc.compiler.ir import Graph
from llmc.frontends.fixtures import write_numpy_hf_checkpoint
from llmc.frontends.loader import open_checkpoint
from llmc.frontends.tokenizer import load_tokenizer
from llmc.runtime.cache_lm import ReferenceCacheLM
from llmc.runtime.generate import Generator, full_logits

from .artifact import Artifact, load_artifact, write_artifact
from .compile import build_graph, compile_model, generate
from .runtimes import default_runtime

RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime, CPU provider",
                 "reference": "the reference interpreter"}

GENERIC_PIPELINE = "canonicalize,cse,dce"


def llama_shaped_graph(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                       ffn: int = 128, vocab: int = 256, eps: float = 1e-5) -> Graph:
    """A llama-style decoder built with the Builder API, with the redundancy a naive
    exporter leaves behind (duplicate position casts, reshape chains, identity casts)
    so that the generic passes have real work."""
    d = hidden // heads
    b = Builder("llama_demo")
    ids = b.input("input_ids", "i64", ["batch", "seq"])
    pos = b.input("position_ids", "i64", ["batch", "seq"])
    h = b.embedding(ids, b.param("model.embed_tokens.weight", "f32", [vocab, hidden]), name="h")
    for i in range(layers):
        p = f"model.layers.{i}."
        n = b.rms_norm(h, b.param(p + "input_layernorm.weight", "f32", [hidden]), epsilon=eps)
        q = b.linear(n, b.param(p + "self_attn.q_proj.weight", "f32", [hidden, hidden]))
        k = b.linear(n, b.param(p + "self_attn.k_proj.weight", "f32", [kv_heads * d, hidden]))
        v = b.linear(n, b.param(p + "self_attn.v_proj.weight", "f32", [kv_heads * d, hidden]))
        q = b.reshape(b.reshape(q, shape=[0, 0, heads * d]), shape=[0, 0, heads, d])
        k = b.reshape(k, shape=[0, 0, kv_heads, d])
        v = b.reshape(v, shape=[0, 0, kv_heads, d])
        q = b.rope(q, b.cast(b.cast(pos, dtype="i64"), dtype="i32"))  # exporters repeat casts
        k = b.rope(k, b.cast(b.cast(pos, dtype="i64"), dtype="i32"))
        a = b.attention(q, k, v)
        a = b.reshape(a, shape=[0, 0, hidden])
        o = b.linear(a, b.param(p + "self_attn.o_proj.weight", "f32", [hidden, hidden]))
        h = b.add(h, o)
        n2 = b.rms_norm(h, b.param(p + "post_attention_layernorm.weight", "f32", [hidden]),
                        epsilon=eps)
        g = b.linear(n2, b.param(p + "mlp.gate_proj.weight", "f32", [ffn, hidden]))
        u = b.linear(n2, b.param(p + "mlp.up_proj.weight", "f32", [ffn, hidden]))
        m = b.linear(b.swiglu(g, u), b.param(p + "mlp.down_proj.weight", "f32", [hidden, ffn]))
        h = b.add(h, m)
        b.neg(h)  # an unused value (dead code)
    n = b.rms_norm(h, b.param("model.norm.weight", "f32", [hidden]), epsilon=eps)
    logits = b.linear(n, b.param("lm_head.weight", "f32", [vocab, hidden]), name="logits")
    b.output(logits)
    return b.graph


def main(workdir: str = "demo-out", target: str = "ascend910b", arch: str = "llama_gqa",
         prompt: str = "The quick brown fox", max_new_tokens: int = 12, json_out: bool = False,
         log: Callable[[str], None] = print) -> dict:
    """The README's first command: write a tiny random checkpoint, compile it for `target`
    with the pass log on screen, check the compiled graph against the uncompiled one on the
    reference interpreter, and generate from the compiled artifact: on ONNX Runtime for a
    cache-form artifact (the per-op targets), else on the reference interpreter."""
    say = (lambda s: None) if json_out else log
    work = Path(workdir)
    ckpt_dir = write_numpy_hf_checkpoint(work / f"tiny-{arch}", arch)
    say(f"==> wrote a tiny random {arch} checkpoint (HF safetensors + tokenizer.json) to {ckpt_dir}")
    art_dir = work / f"tiny-{arch}.{target}"
    say(f"==> llmc compile {ckpt_dir} --target {target} -o {art_dir}")
    compiled = compile_model(ckpt_dir, target, log=say)
    write_artifact(compiled, art_dir)
    say(f"    {compiled.report['ops_in']} -> {compiled.report['ops_out']} ops; artifact: {art_dir}")

    art = load_artifact(art_dir)
    tok = load_tokenizer(ckpt_dir)
    ids = tok.encode(prompt)
    ckpt = open_checkpoint(ckpt_dir)
    reference = build_graph(ckpt.config, ckpt.naming, compiled.form)
    err = _prefill_error(reference, art.graph, ckpt.weights, ids, compiled.form)
    say(f"==> golden check: compiled vs uncompiled logits on the reference interpreter, "
        f"max relative error {err:.2e}")
    runtime = default_runtime(compiled.form)
    new = _generate(art, runtime, ids, max_new_tokens, ckpt)
    want = generate(_as_artifact(art, reference), ids, max_new_tokens, ckpt.config.eos_token_id,
                    weights=ckpt.weights)
    text = tok.decode(new)
    say(f"==> llmc generate {art_dir} --prompt {prompt!r}   (runtime: {RUNTIME_NAMES[runtime]})")
    say(f"    prompt ids {ids}")
    say(f"    new ids    {new}  (uncompiled graph on the reference interpreter: "
        f"{'identical' if new == want else want})")
    say(f"    text       {text!r}  (random weights: the text is noise, the ids are the check)")
    summary = {"checkpoint": str(ckpt_dir), "artifact": str(art_dir), "target": target,
               "ops_in": compiled.report["ops_in"], "ops_out": compiled.report["ops_out"],
               "passes": compiled.report["passes"], "max_rel_err_vs_uncompiled": err,
               "runtime": runtime, "prompt_ids": ids, "new_ids": new, "uncompiled_new_ids": want, "text": text}
    if json_out:
        log(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _generate(art: Artifact, runtime: str, ids: list[int], n: int, ckpt) -> list[int]:
    """Greedy new tokens on `runtime` (ONNX Runtime's export goes into the artifact)."""
    if runtime == "reference":
        return generate(art, ids, n, ckpt.config.eos_token_id, weights=ckpt.weights)
    from llmc.runtime.engine import Engine, GenerationParams

    from .onnx_export import ort_model_for_artifact

    params = GenerationParams(max_new_tokens=n, eos_token_id=ckpt.config.eos_token_id)
    return Engine(ort_model_for_artifact(art.path)).generate([ids], params).tokens[0]


def _as_artifact(art: Artifact, graph: Graph) -> Artifact:
    return Artifact(art.path, graph, art.report, art.manifest)


def _prefill_error(reference: Graph, compiled: Graph, weights, ids: list[int], form: str) -> float:
    """Max |compiled - reference| / max |reference| over the first step's logits."""
    if form == "inference":
        outs = [Generator(g, weights).prefill([ids], 1)[1] for g in (reference, compiled)]
    elif form == "cache":
        lms = [ReferenceCacheLM(g, weights) for g in (reference, compiled)]
        outs = [lm.forward(lm.new_cache(1, len(ids)), [0], np.asarray([ids]), np.zeros(1, np.int64))
                for lm in lms]
    else:
        outs = [full_logits(g, weights, [ids]) for g in (reference, compiled)]
    want, got = (np.asarray(o, np.float64) for o in outs)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
