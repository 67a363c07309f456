"""The chat loop, driven through its input stream: multi-turn history in the checkpoint's
format (its Jinja template, Baichuan2's role ids, the Llama-2 [INST] built-in), /reset,
/exit, Ctrl-C stopping one answer, the history kept within the model's positions."""

from __future__ import annotations

import io
import json

import pytest
from engine_toy import ToyLM

from llmc.chat import chat, chat_format
from llmc.compiler.errors import LlmcError
from llmc.frontends import fixtures as F
from llmc.frontends.tokenizer import load_tokenizer
from llmc.runtime.engine import Engine, GenerationParams

PARAMS = GenerationParams(max_new_tokens=6)


class SpyEngine(Engine):
    """Records every prompt and params the chat asks for."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.asked: list[tuple[list[int], GenerationParams]] = []

    def stream(self, prompts, params=GenerationParams(), state=None):
        self.asked.append((list(prompts[0]), params))
        return super().stream(prompts, params, state)


class InterruptingLM(ToyLM):
    """Raises KeyboardInterrupt at its `at`-th decode step, once."""

    at: int = 3

    def __post_init__(self):
        super().__post_init__()
        self.decode_steps, self.fired = 0, False

    def forward(self, cache, rows, input_ids, past_lens):
        """ToyLM.forward, but Ctrl-C once mid-answer."""
        if input_ids.shape[1] == 1:
            self.decode_steps += 1
            if self.decode_steps == self.at and not self.fired:
                self.fired = True
                raise KeyboardInterrupt
        return super().forward(cache, rows, input_ids, past_lens)


def run_chat(tok, lines: str, model=None, **kw):
    engine = SpyEngine(model or ToyLM(vocab_size=tok.vocab_size), tok)
    out = io.StringIO()
    answers = chat(engine, tok, io.StringIO(lines), out, params=kw.pop("params", PARAMS), **kw)
    return engine, out.getvalue(), answers


def expected_text(tok, prompt, params) -> str:
    return Engine(ToyLM(vocab_size=tok.vocab_size), tok).generate([prompt], params).texts[0]


@pytest.fixture(scope="module")
def json_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_json")
    F.write_tokenizer_json(d, 256)
    return load_tokenizer(d)


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_sp")
    F.write_sentencepiece(d, 256)
    return load_tokenizer(d)


def test_multi_turn_with_the_checkpoint_template(json_tok):
    engine, out, answers = run_chat(json_tok, "Hello world\nThe fox?\n/exit\nnot read\n")
    assert answers == 2 and len(engine.asked) == 2
    (p1, params), (p2, _) = engine.asked
    assert p1 == json_tok.apply_chat_template([{"role": "user", "content": "Hello world"}])
    a1 = expected_text(json_tok, p1, params)
    history = [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": a1},
               {"role": "user", "content": "The fox?"}]
    assert p2 == json_tok.apply_chat_template(history)
    assert out.startswith(f"USER: ASSISTANT: {a1}\nUSER: ASSISTANT: ")
    assert out.endswith(f"{expected_text(json_tok, p2, params)}\nUSER: ")
    assert json_tok.eos_token_id in params.eos_ids
    # the second turn prefilled only what the first turn's cache did not hold
    prefills = [(shape, past) for _, shape, past in engine.model.calls if shape[1] > 1]
    assert prefills[0] == ((1, len(p1)), [0])
    assert prefills[1][1][0] >= len(p1) and sum(prefills[1][0][1:]) + prefills[1][1][0] == len(p2)


def test_reset_forgets_and_end_of_input_leaves(json_tok):
    engine, out, answers = run_chat(json_tok, "Hello world\n/reset\n\nThe fox?\n")
    assert answers == 2 and "(history cleared)" in out
    assert engine.asked[1][0] == json_tok.apply_chat_template([{"role": "user",
                                                               "content": "The fox?"}])


def test_llama2_builtin_with_system_prompt(sp_tok):
    assert chat_format(sp_tok).name == "llama2"
    engine, _, _ = run_chat(sp_tok, "Hello world\nThe fox?\n", system="Be brief.")
    (p1, params), (p2, _) = engine.asked
    first = "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello world [/INST]"
    assert p1 == sp_tok.encode(first, add_special_tokens=False)
    a1 = expected_text(sp_tok, p1, params).strip()
    second = f"{first} {a1} </s><s>[INST] The fox? [/INST]"
    assert p2 == sp_tok.encode(second, add_special_tokens=False)
    assert "[INST]" in params.stop


def _baichuan_dir(tmp_path, generation_config: dict | None):
    F.write_sentencepiece(tmp_path, 256, tokenizer_config={
        "tokenizer_class": "BaichuanTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": False})
    if generation_config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))
    return load_tokenizer(tmp_path)


@pytest.mark.parametrize("gen, roles", [
    ({"user_token_id": 200, "assistant_token_id": 201, "eos_token_id": 2}, (200, 201)),
    (None, (195, 196))])
def test_baichuan2_role_ids(tmp_path, gen, roles):
    tok = _baichuan_dir(tmp_path, gen)
    engine, _, _ = run_chat(tok, "你好\n今天天气很好\n", system="请简短回答。")
    (p1, params), (p2, _) = engine.asked
    body = [tok.encode(t, add_special_tokens=False) for t in ("请简短回答。", "你好", "今天天气很好")]
    assert p1 == body[0] + [roles[0]] + body[1] + [roles[1]]
    answer = tok.encode(expected_text(tok, p1, params), add_special_tokens=False)
    assert p2 == p1 + answer + [roles[0]] + body[2] + [roles[1]]
    assert roles[0] in params.eos_ids  # a new user turn ends the answer


def test_ctrl_c_stops_the_answer_and_keeps_the_chat(json_tok):
    model = InterruptingLM(vocab_size=json_tok.vocab_size)
    engine, out, answers = run_chat(json_tok, "Hello world\nThe fox?\n", model=model)
    assert answers == 2 and model.fired and " (stopped)\n" in out
    (p1, params), (p2, _) = engine.asked
    # the first answer stopped after 3 tokens (prefill + 2 decode steps)
    full = Engine(ToyLM(vocab_size=json_tok.vocab_size), json_tok).generate([p1], params)
    partial = json_tok.decode(p1 + full.tokens[0][:3])[len(json_tok.decode(p1)):]
    shown = out.split("ASSISTANT: ")[1].split(" (stopped)")[0]
    assert partial.startswith(shown)
    history = [{"role": "user", "content": "Hello world"},
               {"role": "assistant", "content": shown}, {"role": "user", "content": "The fox?"}]
    assert p2 == json_tok.apply_chat_template(history)
    assert out.endswith(f"{expected_text(json_tok, p2, params)}\nUSER: \n")


def test_ctrl_c_at_the_prompt_leaves(json_tok):
    class Interrupting(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    out = io.StringIO()
    assert chat(ToyLM(vocab_size=256), json_tok, Interrupting(), out) == 0
    assert out.getvalue() == "USER: \n"


def test_history_stays_within_the_model_positions(json_tok):
    model = ToyLM(vocab_size=json_tok.vocab_size, max_positions=96)
    turn = "The quick brown fox jumps over the lazy dog"
    engine, _, answers = run_chat(json_tok, f"{turn} one\n{turn} two\n{turn} three\n",
                                  model=model)
    assert answers == 3
    last = engine.asked[-1][0]
    assert len(last) <= 96 - PARAMS.max_new_tokens
    text = json_tok.decode(last)
    assert "three" in text and "one" not in text


def test_unknown_style(json_tok):
    with pytest.raises(LlmcError, match="unknown format 'chatml'"):
        chat_format(json_tok, "chatml")


def test_stats_line_after_each_answer(json_tok):
    _, out, answers = run_chat(json_tok, "Hello world\nThe fox?\n", stats=True)
    assert answers == 2 and out.count("[prefill ") == 2 and out.count(" tok/s)]\n") == 2


def test_too_many_new_tokens_for_the_model(json_tok):
    with pytest.raises(LlmcError, match="300 new tokens leave no room"):
        run_chat(json_tok, "Hi\n", params=GenerationParams(max_new_tokens=300))
