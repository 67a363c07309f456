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

Options (:func:`write_fixture` keywords): ``tied=True`` writes a tied-embedding model
that still stores ``lm_head.weight`` (a copy of the embedding, as PaddleNLP and older
torch saves do); ``hidden_scale=1e-2`` makes every hidden state entering an RMSNorm ~1e-2
in size (see :func:`random_weights`).

The pieces live in fixture_configs.py (sizes and ``config.json``), fixture_weights.py
(weights and their PaddleNLP form) and fixture_tokenizers.py; every public name is
importable from here.  Only stdlib, numpy, json and safetensors are imported at module
level; torch and transformers (the ``hf`` format) and paddle (``.pdparams``) are imported
where used, and a missing one is an ``LlmcError`` naming the ``pip install`` to run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors.numpy import load_file, save_file

from .errors import require
from .fixture_configs import (  # noqa: F401  (re-exported)
    ARCHES, BAICHUAN_ARCHES, BAICHUAN_ASSISTANT_TOKEN_ID, BAICHUAN_USER_TOKEN_ID, LLAMA_ARCHES,
    MAX_POSITIONS, PADDLEFORMERS_VERSION, dims, generation_config, paddle_config,
    paddleformers_config, tiny_config, uses_alibi)
from .fixture_tokenizers import (  # noqa: F401  (re-exported)
    CORPUS, LLAMA2_CHAT_TEMPLATE, prepare_dir, sentencepiece_model_bytes, write_hf_tokenizer,
    write_json, write_sentencepiece, write_tokenizer_json)
from .fixture_weights import (  # noqa: F401  (re-exported)
    baichuan_to_llama_weights, hf_param_shapes, llama_weights, normalize_rows,
    paddlenlp_tp_split, paddlenlp_tp_split_axis, paddlenlp_weights, random_weights)

FORMATS = ["hf", "hf-numpy", "hf-sharded", "paddle", "paddle-tp2", "paddle-fused", "paddleformers"]
PADDLE_INSTALL = "'llmc[paddle]'"
TORCH_INSTALL = "torch transformers"


# --------------------------------------------------------------------------- safetensors files


def write_safetensors(
    out_dir: str | Path,
    tensors: dict[str, np.ndarray],
    n_shards: int = 1,
    metadata: dict[str, str] | None = None,
    always_index: bool = False,
) -> list[Path]:
    """Write ``tensors`` as ``model.safetensors`` or ``n_shards`` HF-named shards plus index."""
    out = prepare_dir(out_dir)
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
    write_json(
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


# --------------------------------------------------------------------------- writers


def write_numpy_hf_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, n_shards: int = 1, **options: Any
) -> Path:
    """HF checkpoint written with numpy + safetensors only (no torch).

    Llama-family arches use HF Llama names and the classic ``config.json`` of
    :func:`tiny_config`; Baichuan arches use Baichuan names (``W_pack``, un-normalised
    ``lm_head``) and the Baichuan2 hub config.  Loads in transformers exactly like
    :func:`write_hf_checkpoint`'s output.  ``options``: see :func:`random_weights`.
    """
    out = prepare_dir(out_dir)
    weights = random_weights(arch, seed, **options)
    write_safetensors(out, weights, n_shards=n_shards, metadata={"format": "pt"})
    write_json(out / "config.json", tiny_config(arch, tied=options.get("tied", False)))
    write_json(out / "generation_config.json", generation_config(arch))
    write_hf_tokenizer(out, arch)
    return out


def write_hf_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, sharded: bool = False, **options: Any
) -> Path:
    """HF checkpoint; llama-family arches go through transformers' own ``save_pretrained``
    (which drops ``lm_head.weight`` of a tied model).

    Baichuan (not part of transformers) is written with numpy like
    :func:`write_numpy_hf_checkpoint`.  ``sharded=True`` yields 3 shards plus
    ``model.safetensors.index.json``.
    """
    if arch in BAICHUAN_ARCHES:
        return write_numpy_hf_checkpoint(out_dir, arch, seed, 3 if sharded else 1, **options)
    why = "writing the 'hf' fixture format (transformers save_pretrained)"
    torch = require("torch", why, TORCH_INSTALL)
    transformers = require("transformers", why, TORCH_INSTALL)
    out = prepare_dir(out_dir)
    weights = random_weights(arch, seed, **options)
    config = transformers.LlamaConfig.from_dict(tiny_config(arch, options.get("tied", False)))
    config.dtype = torch.float32
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    total = sum(v.nbytes for v in weights.values())
    model.save_pretrained(str(out), max_shard_size=(total // 3 + 1) if sharded else "10GB")
    write_hf_tokenizer(out, arch)
    return out


def _save_pdparams(path: Path, state: dict[str, np.ndarray]) -> None:
    paddle = require("paddle", "writing .pdparams fixtures (paddle.save)", PADDLE_INSTALL)
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))


def write_paddle_checkpoint(
    out_dir: str | Path, arch: str, seed: int = 0, tp: int = 1, fuse_qkv: bool = False,
    **options: Any
) -> Path:
    """PaddleNLP checkpoint: ``config.json`` + ``model_state.pdparams`` (``paddle.save``).

    With ``tp > 1`` writes ``model_state.tp00.pdparams`` ... split as
    :func:`paddlenlp_tp_split`.  Weights are :func:`paddlenlp_weights` (same model as the
    HF fixture of the same ``(arch, seed, options)``).  Tokenizer: ``sentencepiece.bpe.model``.
    """
    out = prepare_dir(out_dir)
    tied = options.get("tied", False)
    state = paddlenlp_weights(arch, seed, fuse_qkv=fuse_qkv, **options)
    if tp == 1:
        _save_pdparams(out / "model_state.pdparams", state)
    else:
        for rank, rank_state in enumerate(paddlenlp_tp_split(state, arch, tp, tied)):
            _save_pdparams(out / f"model_state.tp{rank:02d}.pdparams", rank_state)
    write_json(out / "config.json", paddle_config(arch, tp=tp, fuse_qkv=fuse_qkv, tied=tied))
    write_json(out / "generation_config.json", generation_config(arch))
    write_sentencepiece(out, dims(arch)["vocab"], filename="sentencepiece.bpe.model")
    return out


def write_paddleformers_checkpoint(out_dir: str | Path, arch: str, seed: int = 0,
                                   **options: Any) -> Path:
    """PaddleFormers 1.x ``save_pretrained`` layout (default flex checkpoint, ``save_to_hf=True``).

    Verified against paddleformers 1.2.0: HF names (``model.*``, ``lm_head.weight``), HF
    ``[out, in]`` layout, ``model-0000k-of-0000n.safetensors`` shards with a
    ``model.safetensors.index.json`` even for one shard, no safetensors metadata, a
    ``saved_signal_0`` marker file, and the config of :func:`paddleformers_config`.
    Baichuan2 is stored Llama-converted (see :func:`paddleformers_config`).
    """
    out = prepare_dir(out_dir)
    weights = llama_weights(arch, seed, **options)
    write_safetensors(out, weights, n_shards=1, metadata=None, always_index=True)
    (out / "saved_signal_0").write_text("1")
    config = paddleformers_config(arch)
    config["tie_word_embeddings"] = bool(options.get("tied", False))
    write_json(out / "config.json", config)
    if arch in ("llama", "llama_gqa", "llama_rope_scaling"):
        write_tokenizer_json(out, dims(arch)["vocab"])
    else:
        write_sentencepiece(out, dims(arch)["vocab"])
    return out


def write_fixture(out_dir: str | Path, arch: str, fmt: str = "hf", seed: int = 0, *,
                  tied: bool = False, hidden_scale: float = 1.0) -> Path:
    """Write the ``(arch, fmt, seed)`` fixture into ``out_dir`` and return its path.

    ``tied`` and ``hidden_scale``: see the module docstring and :func:`random_weights`."""
    opts: dict[str, Any] = dict(tied=tied, hidden_scale=hidden_scale)
    writers = {
        "hf": lambda: write_hf_checkpoint(out_dir, arch, seed, **opts),
        "hf-numpy": lambda: write_numpy_hf_checkpoint(out_dir, arch, seed, **opts),
        "hf-sharded": lambda: write_hf_checkpoint(out_dir, arch, seed, sharded=True, **opts),
        "paddle": lambda: write_paddle_checkpoint(out_dir, arch, seed, **opts),
        "paddle-tp2": lambda: write_paddle_checkpoint(out_dir, arch, seed, tp=2, **opts),
        "paddle-fused": lambda: write_paddle_checkpoint(out_dir, arch, seed, fuse_qkv=True,
                                                        **opts),
        "paddleformers": lambda: write_paddleformers_checkpoint(out_dir, arch, seed, **opts),
    }
    dims(arch)
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
