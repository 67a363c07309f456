"""Tiny, deterministic, random-weight checkpoints in real on-disk formats.

Every fixture is derived from one weight set, :func:`random_weights` (HF names, HF
``[out, in]`` Linear layout, float32), so the same ``(arch, seed)`` gives the same
model in every format and logits can be compared across formats.

Architectures (see :func:`tiny_config` for the exact sizes):

* ``llama``               Llama-2 style MHA, RoPE theta 1e4.
* ``llama_gqa``           GQA (8 query heads, 2 KV heads), RoPE theta 5e5, 3 layers.
* ``llama_rope_scaling``  linear RoPE scaling, factor 2.
* ``baichuan2_7b``        ``BaichuanForCausalLM``, fused ``W_pack``, RoPE, NormHead.
* ``baichuan2_13b``       ``BaichuanForCausalLM``, fused ``W_pack``, ALiBi with 6 heads
                          (not a power of two), NormHead.
* ``chinese_llama2``      Llama architecture with the real extended vocab (55296).

Formats (:func:`write_fixture`):

* ``hf``            transformers ``save_pretrained`` (llama family; transformers 5 writes
                    ``rope_parameters`` instead of ``rope_theta``/``rope_scaling``) or, for
                    Baichuan, a numpy-written ``model.safetensors`` with Baichuan names.
* ``hf-numpy``      HF layout written with numpy + safetensors only, classic
                    (transformers 4.x / hub) ``config.json`` from :func:`tiny_config`.
* ``hf-sharded``    like ``hf`` but 3 shards + ``model.safetensors.index.json``.
* ``paddle``        PaddleNLP 2.x/3.0-beta: ``model_state.pdparams`` (``paddle.save``),
                    ``llama.*`` names, Linear weights ``[in, out]``.
* ``paddle-tp2``    the same split for tensor parallelism into ``model_state.tp0{0,1}.pdparams``.
* ``paddle-fused``  PaddleNLP with ``fuse_attention_qkv`` (``qkv_proj``).
* ``paddleformers`` PaddleFormers 1.x ``save_pretrained`` (flex checkpoint, ``save_to_hf``).

Tokenizers: llama/llama_gqa/llama_rope_scaling HF and PaddleFormers fixtures get a
``tokenizer.json`` (BPE trained with ``tokenizers``); Baichuan and chinese_llama2 get a
sentencepiece ``tokenizer.model`` (what the real models ship); PaddleNLP fixtures get the
sentencepiece model under PaddleNLP's name ``sentencepiece.bpe.model``.  Every tokenizer
is padded with unused pieces so that its vocabulary size equals ``vocab_size``.

Detecting ALiBi (see :func:`uses_alibi`): the real Baichuan2-13B ``config.json`` has only
``model_max_length`` while Baichuan2-7B has ``max_position_embeddings`` (and
``model_max_length``); the tiny fixtures keep that difference, so for
``model_type == "baichuan"`` the rule is *no ``max_position_embeddings`` => ALiBi*.  vLLM
uses ``hidden_size == 4096 => RoPE`` instead, which only works at real sizes.  The
PaddleNLP-converted form is a Llama config with ``"alibi": true``.

Only stdlib, numpy, json and safetensors are imported at module level; torch,
transformers, paddle, tokenizers and sentencepiece are imported where used.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors.numpy import load_file, save_file

ARCHES = [
    "llama",
    "llama_gqa",
    "llama_rope_scaling",
    "baichuan2_7b",
    "baichuan2_13b",
    "chinese_llama2",
]
FORMATS = ["hf", "hf-numpy", "hf-sharded", "paddle", "paddle-tp2", "paddle-fused", "paddleformers"]

LLAMA_ARCHES = ("llama", "llama_gqa", "llama_rope_scaling", "chinese_llama2")
BAICHUAN_ARCHES = ("baichuan2_7b", "baichuan2_13b")

PADDLEFORMERS_VERSION = "1.2.0"
BAICHUAN_USER_TOKEN_ID = 195
BAICHUAN_ASSISTANT_TOKEN_ID = 196

_DIMS: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-5, theta=10000.0
    ),
    "llama_gqa": dict(
        hidden=64, layers=3, heads=8, kv_heads=2, inter=128, vocab=256, eps=1e-5, theta=500000.0
    ),
    "llama_rope_scaling": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-5, theta=10000.0
    ),
    "baichuan2_7b": dict(
        hidden=64, layers=2, heads=4, kv_heads=4, inter=176, vocab=256, eps=1e-6, theta=10000.0
    ),
    "baichuan2_13b": dict(
        hidden=96, layers=2, heads=6, kv_heads=6, inter=256, vocab=256, eps=1e-6, theta=None
    ),
    "chinese_llama2": dict(
        hidden=16, layers=2, heads=2, kv_heads=2, inter=48, vocab=55296, eps=1e-5, theta=10000.0
    ),
}
_MAX_POSITIONS = 512
_ROPE_SCALING = {"type": "linear", "factor": 2.0}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a tiny test corpus for the llmc graph compiler.",
    "A compiler lowers the model graph to fused kernels for every accelerator.",
    "Paddle and PyTorch checkpoints are converted into one graph representation.",
    "Large language models predict the next token from the previous tokens.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "大模型编译器把计算图编译成高效的内核。",
    "百川大模型和中文羊驼都基于LLaMA架构。",
    "今天天气很好，我们一起去公园散步吧。",
    "请把这段话翻译成英文：你好，世界！",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and 2024 appear in text too.",
    "User: what is attention? Assistant: attention mixes values weighted by query key scores.",
]

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


# --------------------------------------------------------------------------- configs


def _dims(arch: str) -> dict[str, Any]:
    if arch not in _DIMS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    return _DIMS[arch]


def tiny_config(arch: str) -> dict[str, Any]:
    """Return the ``config.json`` dict of ``arch`` in its real (hub) format, tiny sizes."""
    d = _dims(arch)
    if arch in BAICHUAN_ARCHES:
        return _baichuan_config(arch, d)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": _MAX_POSITIONS,
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": d["eps"],
        "rope_scaling": dict(_ROPE_SCALING) if arch == "llama_rope_scaling" else None,
        "rope_theta": d["theta"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch == "llama":
        del cfg["pad_token_id"]
    return cfg


def _baichuan_config(arch: str, d: dict[str, Any]) -> dict[str, Any]:
    cfg = {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "tokenizer_class": "BaichuanTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "model_max_length": _MAX_POSITIONS,
        "model_type": "baichuan",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "rms_norm_eps": d["eps"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
        "z_loss_weight": 0,
    }
    if arch == "baichuan2_7b":
        cfg["max_position_embeddings"] = _MAX_POSITIONS
    else:
        cfg["gradient_checkpointing"] = False
    return dict(sorted(cfg.items()))


def uses_alibi(config: dict[str, Any]) -> bool:
    """Whether a config (HF Baichuan, PaddleNLP or PaddleFormers form) uses ALiBi, not RoPE."""
    if config.get("alibi"):
        return True
    if config.get("model_type") == "baichuan":
        return "max_position_embeddings" not in config
    return False


def paddle_config(arch: str, tp: int = 1, fuse_qkv: bool = False) -> dict[str, Any]:
    """PaddleNLP ``config.json``: Llama architecture, Baichuan2 in PaddleNLP's converted form."""
    d = _dims(arch)
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "tokenizer_class": "LlamaTokenizer",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "gradient_checkpointing": False,
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": _MAX_POSITIONS,
        "model_type": "llama",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "pad_token_id": 0,
        "rms_norm_eps": d["eps"],
        "tie_word_embeddings": False,
        "dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch in LLAMA_ARCHES:
        cfg["num_key_value_heads"] = d["kv_heads"]
        cfg["rope_theta"] = d["theta"]
    if arch == "llama_rope_scaling":
        cfg["rope_scaling_type"] = _ROPE_SCALING["type"]
        cfg["rope_scaling_factor"] = _ROPE_SCALING["factor"]
    if uses_alibi(tiny_config(arch)):
        cfg["alibi"] = True
    if fuse_qkv:
        cfg["fuse_attention_qkv"] = True
    if tp > 1:
        cfg["tensor_parallel_degree"] = tp
    return cfg


def paddleformers_config(arch: str) -> dict[str, Any]:
    """PaddleFormers 1.x ``config.json`` as written by ``LlamaForCausalLM.save_pretrained``.

    Baichuan2 is written in its Llama-converted form (PaddleFormers 1.2 has no Baichuan
    model); the 13B variant carries PaddleNLP's ``"alibi": true`` marker, which PaddleFormers
    itself does not implement.
    """
    d = _dims(arch)
    theta = d["theta"] or 10000.0
    rope = {"rope_theta": theta, "rope_type": "default"}
    if arch == "llama_rope_scaling":
        rope = {
            "factor": _ROPE_SCALING["factor"],
            "rope_theta": theta,
            "rope_type": "linear",
            "type": "linear",
        }
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": d["hidden"] // d["heads"],
        "hidden_act": "silu",
        "hidden_size": d["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": d["inter"],
        "max_position_embeddings": _MAX_POSITIONS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": d["heads"],
        "num_hidden_layers": d["layers"],
        "num_key_value_heads": d["kv_heads"],
        "pad_token_id": 0,
        "paddleformers_version": PADDLEFORMERS_VERSION,
        "rms_norm_eps": d["eps"],
        "rope_parameters": rope,
        "rope_scaling": dict(rope) if arch == "llama_rope_scaling" else None,
        "rope_theta": theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": d["vocab"],
    }
    if arch == "baichuan2_13b":
        cfg["alibi"] = True
    return cfg


# --------------------------------------------------------------------------- weights


def hf_param_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of ``arch`` in its HF checkpoint (Linear = ``[out, in]``)."""
    d = _dims(arch)
    h, inter, vocab = d["hidden"], d["inter"], d["vocab"]
    head_dim = h // d["heads"]
    kv = d["kv_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(d["layers"]):
        p = f"model.layers.{i}."
        if arch in BAICHUAN_ARCHES:
            shapes[p + "self_attn.W_pack.weight"] = (3 * h, h)
        else:
            shapes[p + "self_attn.q_proj.weight"] = (h, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def _init_tensor(name: str, shape: tuple[int, ...], seed: int, arch: str) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if len(shape) == 1:
        out = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("embed_tokens.weight"):
        out = rng.standard_normal(shape)
    else:
        out = rng.standard_normal(shape) / math.sqrt(shape[1])
        if name == "lm_head.weight" and arch in BAICHUAN_ARCHES:
            out *= rng.uniform(0.5, 2.0, size=(shape[0], 1))
    return out.astype(np.float32)


def random_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights of ``arch`` in HF naming and layout.

    Norm weights are ``1 + 0.1 N(0,1)``, embeddings ``N(0,1)``, Linear weights
    ``N(0, 1/fan_in)``.  Each tensor has its own generator seeded by ``(seed, crc32(name))``.
    Baichuan ``lm_head`` rows get random norms in [0.5, 2] (NormHead stores them
    un-normalised), so forgetting the normalisation changes the logits.
    """
    return {n: _init_tensor(n, s, seed, arch) for n, s in hf_param_shapes(arch).items()}


def normalize_rows(w: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise the rows of ``w`` like ``torch.nn.functional.normalize(w, dim=1)``."""
    norms = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=1, keepdims=True))
    return (w / np.maximum(norms, eps)).astype(w.dtype)


def baichuan_to_llama_weights(weights: dict[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    """HF Baichuan weights -> equivalent HF Llama weights (split W_pack, normalise lm_head)."""
    h = hidden
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name.endswith("self_attn.W_pack.weight"):
            prefix = name[: -len("W_pack.weight")]
            for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{prefix}{proj}.weight"] = np.ascontiguousarray(w[i * h : (i + 1) * h])
        elif name == "lm_head.weight":
            out[name] = normalize_rows(w)
        else:
            out[name] = w
    return out


def llama_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """HF Llama-layout weights of ``arch`` (Baichuan via :func:`baichuan_to_llama_weights`)."""
    weights = random_weights(arch, seed)
    if arch not in BAICHUAN_ARCHES:
        return weights
    return baichuan_to_llama_weights(weights, _dims(arch)["hidden"])


_PADDLE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def paddlenlp_weights(arch: str, seed: int = 0, fuse_qkv: bool = False) -> dict[str, np.ndarray]:
    """PaddleNLP ``LlamaForCausalLM`` state dict: ``llama.*`` names, Linear ``[in, out]``.

    ``lm_head.weight`` is ``[hidden, vocab]`` (untied ``LlamaLMHead``).  Baichuan2 is stored
    converted: q/k/v split from ``W_pack`` and ``lm_head`` rows already L2-normalised.
    With ``fuse_qkv`` q/k/v become ``qkv_proj`` ``[hidden, (heads + 2 kv_heads) * head_dim]``,
    columns grouped per KV head as ``[q of the group's query heads, k, v]``.
    """
    out: dict[str, np.ndarray] = {}
    for name, w in llama_weights(arch, seed).items():
        pname = "llama." + name[len("model.") :] if name.startswith("model.") else name
        is_linear = any(f".{p}." in name for p in _PADDLE_LINEARS) or name == "lm_head.weight"
        out[pname] = np.ascontiguousarray(w.T) if is_linear else w
    if fuse_qkv:
        _fuse_qkv(out, arch)
    return out


def _fuse_qkv(state: dict[str, np.ndarray], arch: str) -> None:
    d = _dims(arch)
    head_dim = d["hidden"] // d["heads"]
    group = d["heads"] // d["kv_heads"]
    for i in range(d["layers"]):
        p = f"llama.layers.{i}.self_attn."
        q = np.split(state.pop(p + "q_proj.weight"), d["heads"], axis=1)
        k = np.split(state.pop(p + "k_proj.weight"), d["kv_heads"], axis=1)
        v = np.split(state.pop(p + "v_proj.weight"), d["kv_heads"], axis=1)
        parts = []
        for g in range(d["kv_heads"]):
            parts += q[g * group : (g + 1) * group] + [k[g], v[g]]
        assert all(x.shape[1] == head_dim for x in parts)
        state[p + "qkv_proj.weight"] = np.concatenate(parts, axis=1)


def paddlenlp_tp_split_axis(name: str, arch: str, tp: int) -> int | None:
    """Axis along which PaddleNLP's Llama tensor parallelism splits ``name`` (None: replicated).

    From ``LlamaPretrainedModel._get_tensor_parallel_mappings`` and ``normal_fuse_split_tp``:
    column-parallel weights (q/k/v/qkv/gate/up and the untied ``lm_head``) split the last
    (output) axis, row-parallel weights (o/down and the ``VocabParallelEmbedding``) split
    axis 0; k/v only when ``num_key_value_heads % tp == 0``; embedding and ``lm_head`` only
    when ``vocab_size % tp == 0``.  1-D norm weights are replicated.
    """
    d = _dims(arch)
    vocab_ok = d["vocab"] % tp == 0
    if name.endswith("embed_tokens.weight"):
        return 0 if vocab_ok else None
    if name == "lm_head.weight":
        return 1 if vocab_ok else None
    if any(f".{p}." in name for p in ("k_proj", "v_proj")):
        return 1 if d["kv_heads"] % tp == 0 else None
    if any(f".{p}." in name for p in ("q_proj", "qkv_proj", "gate_proj", "up_proj")):
        return 1
    if any(f".{p}." in name for p in ("o_proj", "down_proj")):
        return 0
    return None


def paddlenlp_tp_split(
    state: dict[str, np.ndarray], arch: str, tp: int
) -> list[dict[str, np.ndarray]]:
    """Split a PaddleNLP state dict into ``tp`` rank state dicts (contiguous equal chunks)."""
    ranks: list[dict[str, np.ndarray]] = [{} for _ in range(tp)]
    for name, w in state.items():
        axis = paddlenlp_tp_split_axis(name, arch, tp)
        chunks = [w] * tp if axis is None else np.split(w, tp, axis=axis)
        for rank, chunk in enumerate(chunks):
            ranks[rank][name] = np.ascontiguousarray(chunk)
    return ranks


# --------------------------------------------------------------------------- file helpers


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare_dir(path: str | Path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_safetensors(
    out_dir: str | Path,
    tensors: dict[str, np.ndarray],
    n_shards: int = 1,
    metadata: dict[str, str] | None = None,
    always_index: bool = False,
) -> list[Path]:
    """Write ``tensors`` as ``model.safetensors`` or ``n_shards`` HF-named shards plus index."""
    out = _prepare_dir(out_dir)
    names = list(tensors)
    if n_shards == 1 and not always_index:
        path = out / "model.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        return [path]
    groups = _balanced_groups(names, [tensors[n].nbytes for n in names], n_shards)
    weight_map: dict[str, str] = {}
    paths = []
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(out / fname), metadata=metadata)
        weight_map.update({n: fname for n in group})
        paths.append(out / fname)
    total = int(sum(t.nbytes for t in tensors.values()))
    _write_json(
        out / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    return paths


def _balanced_groups(names: list[str], sizes: list[int], n: int) -> list[list[str]]:
    target = sum(sizes) / n
    groups: list[list[str]] = [[]]
    acc = 0
    for name, size in zip(names, sizes):
        if groups[-1] and acc + size > target * len(groups) and len(groups) < n:
            groups.append([])
        groups[-1].append(name)
        acc += size
    return groups


def read_safetensors_dir(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors checkpoint directory (single file or sharded)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(str(model_dir / f)))
    return out


# --------------------------------------------------------------------------- tokenizers


def _special_tokens() -> dict[str, str]:
    return {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def write_tokenizer_json(
    out_dir: str | Path,
    vocab_size: int = 256,
    chat_template: str | None = LLAMA2_CHAT_TEMPLATE,
    model_max_length: int = _MAX_POSITIONS,
) -> Path:
    """Train a tiny Llama-style BPE (``<unk>``=0, ``<s>``=1, ``</s>``=2, ``▁`` metaspace, BOS
    prepended) on :data:`CORPUS`, pad it to exactly ``vocab_size`` with ``<extra_i>`` tokens,
    and write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = _prepare_dir(out_dir)
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing < 0:
        raise ValueError(f"trained vocab {tok.get_vocab_size()} exceeds {vocab_size}")
    tok.add_special_tokens([f"<extra_{i}>" for i in range(missing)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    path = out / "tokenizer.json"
    tok.save(str(path))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens(),
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", _special_tokens())
    return path


def sentencepiece_model_bytes(vocab_size: int = 256, trained_size: int = 200) -> bytes:
    """Serialized tiny sentencepiece BPE model (``<unk>``=0, ``<s>``=1, ``</s>``=2) trained on
    :data:`CORPUS`, padded with ``UNUSED`` ``<extra_i>`` pieces to exactly ``vocab_size``."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=min(trained_size, vocab_size),
        model_type="bpe",
        hard_vocab_limit=False,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    for i in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = (
            f"<extra_{i}>",
            0.0,
            sp_pb2.ModelProto.SentencePiece.UNUSED,
        )
    return proto.SerializeToString()


def write_sentencepiece(
    out_dir: str | Path,
    vocab_size: int = 256,
    filename: str = "tokenizer.model",
    tokenizer_config: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny sentencepiece model (see :func:`sentencepiece_model_bytes`) as ``filename``
    plus ``tokenizer_config.json`` (defaults to a ``LlamaTokenizer`` config) and
    ``special_tokens_map.json``."""
    out = _prepare_dir(out_dir)
    path = out / filename
    path.write_bytes(sentencepiece_model_bytes(vocab_size))
    config = (
        tokenizer_config
        if tokenizer_config is not None
        else {
            "tokenizer_class": "LlamaTokenizer",
            **_special_tokens(),
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": _MAX_POSITIONS,
            "legacy": True,
        }
    )
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", _special_tokens())
    return path


def _baichuan_tokenizer_config() -> dict[str, Any]:
    return {
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "tokenizer_class": "BaichuanTokenizer",
        **_special_tokens(),
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _MAX_POSITIONS,
    }


def _write_hf_tokenizer(out: Path, arch: str) -> None:
    vocab = _dims(arch)["vocab"]
    if arch in BAICHUAN_ARCHES:
        write_sentencepiece(out, vocab, tokenizer_config=_baichuan_tokenizer_config())
    elif arch == "chinese_llama2":
        cfg = {
            "tokenizer_class": "LlamaTokenizer",
            **_special_tokens(),
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": _MAX_POSITIONS,
            "legacy": True,
            "chat_template": LLAMA2_CHAT_TEMPLATE,
        }
        write_sentencepiece(out, vocab, tokenizer_config=cfg)
    else:
        write_tokenizer_json(out, vocab)


def _generation_config(arch: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "do_sample": False,
    }
    if arch in BAICHUAN_ARCHES:
        cfg.update(
            user_token_id=BAICHUAN_USER_TOKEN_ID,
            assistant_token_id=BAICHUAN_ASSISTANT_TOKEN_ID,
            max_new_tokens=64,
            repetition_penalty=1.0,
        )
    return cfg


# --------------------------------------------------------------------------- writers


def write_numpy_hf_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, n_shards: int = 1
) -> Path:
    """HF checkpoint written with numpy + safetensors only (no torch).

    Llama-family arches use HF Llama names and the classic ``config.json`` of
    :func:`tiny_config`; Baichuan arches use Baichuan names (``W_pack``, un-normalised
    ``lm_head``) and the Baichuan2 hub config.  Loads in transformers exactly like
    :func:`write_hf_checkpoint`'s output.
    """
    out = _prepare_dir(out_dir)
    write_safetensors(out, random_weights(arch, seed), n_shards=n_shards, metadata={"format": "pt"})
    _write_json(out / "config.json", tiny_config(arch))
    _write_json(out / "generation_config.json", _generation_config(arch))
    _write_hf_tokenizer(out, arch)
    return out


def write_hf_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, sharded: bool = False
) -> Path:
    """HF checkpoint; llama-family arches go through transformers' own ``save_pretrained``.

    Baichuan (not part of transformers) is written with numpy like
    :func:`write_numpy_hf_checkpoint`.  ``sharded=True`` yields 3 shards plus
    ``model.safetensors.index.json``.
    """
    if arch in BAICHUAN_ARCHES:
        return write_numpy_hf_checkpoint(out_dir, arch, seed, n_shards=3 if sharded else 1)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = _prepare_dir(out_dir)
    weights = random_weights(arch, seed)
    config = LlamaConfig.from_dict(tiny_config(arch))
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    total = sum(v.nbytes for v in weights.values())
    model.save_pretrained(str(out), max_shard_size=(total // 3 + 1) if sharded else "10GB")
    _write_hf_tokenizer(out, arch)
    return out


def _save_pdparams(path: Path, state: dict[str, np.ndarray]) -> None:
    import paddle

    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))


def write_paddle_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, tp: int = 1, fuse_qkv: bool = False
) -> Path:
    """PaddleNLP checkpoint: ``config.json`` + ``model_state.pdparams`` (``paddle.save``).

    With ``tp > 1`` writes ``model_state.tp00.pdparams`` ... split as
    :func:`paddlenlp_tp_split`.  Weights are :func:`paddlenlp_weights` (same model as the
    HF fixture of the same ``(arch, seed)``).  Tokenizer: ``sentencepiece.bpe.model``.
    """
    out = _prepare_dir(out_dir)
    state = paddlenlp_weights(arch, seed, fuse_qkv=fuse_qkv)
    if tp == 1:
        _save_pdparams(out / "model_state.pdparams", state)
    else:
        for rank, rank_state in enumerate(paddlenlp_tp_split(state, arch, tp)):
            _save_pdparams(out / f"model_state.tp{rank:02d}.pdparams", rank_state)
    _write_json(out / "config.json", paddle_config(arch, tp=tp, fuse_qkv=fuse_qkv))
    _write_json(out / "generation_config.json", _generation_config(arch))
    write_sentencepiece(out, _dims(arch)["vocab"], filename="sentencepiece.bpe.model")
    return out


def write_paddleformers_checkpoint(out_dir: str | Path, arch: str, seed: int = 0) -> Path:
    """PaddleFormers 1.x ``save_pretrained`` layout (default flex checkpoint, ``save_to_hf=True``).

    Verified against paddleformers 1.2.0: HF names (``model.*``, ``lm_head.weight``), HF
    ``[out, in]`` layout, ``model-0000k-of-0000n.safetensors`` shards with a
    ``model.safetensors.index.json`` even for one shard, no safetensors metadata, a
    ``saved_signal_0`` marker file, and the config of :func:`paddleformers_config`.
    Baichuan2 is stored Llama-converted (see :func:`paddleformers_config`).
    """
    out = _prepare_dir(out_dir)
    write_safetensors(out, llama_weights(arch, seed), n_shards=1, metadata=None, always_index=True)
    (out / "saved_signal_0").write_text("1")
    _write_json(out / "config.json", paddleformers_config(arch))
    if arch in ("llama", "llama_gqa", "llama_rope_scaling"):
        write_tokenizer_json(out, _dims(arch)["vocab"])
    else:
        write_sentencepiece(out, _dims(arch)["vocab"])
    return out


def write_fixture(out_dir: str | Path, arch: str, fmt: str = "hf", seed: int = 0) -> Path:
    """Write the ``(arch, fmt, seed)`` fixture into ``out_dir`` and return its path."""
    writers = {
        "hf": lambda: write_hf_checkpoint(out_dir, arch, seed),
        "hf-numpy": lambda: write_numpy_hf_checkpoint(out_dir, arch, seed),
        "hf-sharded": lambda: write_hf_checkpoint(out_dir, arch, seed, sharded=True),
        "paddle": lambda: write_paddle_checkpoint(out_dir, arch, seed),
        "paddle-tp2": lambda: write_paddle_checkpoint(out_dir, arch, seed, tp=2),
        "paddle-fused": lambda: write_paddle_checkpoint(out_dir, arch, seed, fuse_qkv=True),
        "paddleformers": lambda: write_paddleformers_checkpoint(out_dir, arch, seed),
    }
    _dims(arch)
    if fmt not in writers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return writers[fmt]()


def _main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random checkpoint fixture.")
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="llama", choices=ARCHES)
    parser.add_argument("--fmt", default="hf", choices=FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    print(write_fixture(args.out_dir, args.arch, args.fmt, args.seed))


if __name__ == "__main__":
    _main()
