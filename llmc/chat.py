"""An interactive chat over the generation engine, as a function of its streams.

`chat(model, tokenizer, stdin, stdout)` reads one user turn per line, renders the whole
history in the model's chat format, streams the answer, and keeps the history (the
answer's keys/values too: the next turn prefills only what is new). Commands: `/reset`
forgets the history, `/exit` (or end of input, or Ctrl-C at the prompt) leaves. Ctrl-C
while an answer streams stops that answer; the chat goes on with what was shown.

Chat formats, first that applies:
* the checkpoint's own template (a Jinja `chat_template`, or Baichuan2's reserved role ids
  in generation_config.json), through the tokenizer wrapper;
* Baichuan2 (a Baichuan tokenizer or config without role ids): system text, then per turn
  the reserved user id (``<reserved_106>``, 195 in the real vocabulary) + text, the
  assistant id (``<reserved_107>``, 196) + text;
* Llama-2 / Chinese-Alpaca-2: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]
  {answer} </s>`` per turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Callable, TextIO

from llmc.compiler.errors import LlmcError
from llmc.frontends.tokenizer import Tokenizer, render_chat
from llmc.runtime.engine import (CausalLM, Engine, GenerationParams, KVState, Timings,
                                 format_timings)

BAICHUAN_USER_ID, BAICHUAN_ASSISTANT_ID = 195, 196
BAICHUAN_ROLE_PIECES = ("<reserved_106>", "<reserved_107>")
LLAMA2_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'].strip() + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# a chat keeps at most this many positions of keys/values when the model has no limit
DEFAULT_CONTEXT = 4096
STYLES = ("auto", "template", "baichuan2", "llama2")


@dataclass
class ChatFormat:
    """How a history becomes prompt ids, and what else ends an answer."""

    name: str
    render: Callable[[list[dict]], list[int]]
    stop_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()


def _model_type(tokenizer: Tokenizer) -> str:
    try:
        config = json.loads((tokenizer.model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("model_type", "")) if isinstance(config, dict) else ""


def _is_baichuan(tokenizer: Tokenizer) -> bool:
    return ("baichuan" in str(tokenizer.config.get("tokenizer_class", "")).lower()
            or _model_type(tokenizer) == "baichuan")


def baichuan_role_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """Baichuan2's user and assistant ids: generation_config.json, else the reserved
    pieces of the vocabulary, else the real Baichuan2 ids (195, 196)."""
    gen = tokenizer.model_dir / "generation_config.json"
    try:
        cfg = json.loads(gen.read_text(encoding="utf-8")) if gen.is_file() else {}
    except (OSError, ValueError):
        cfg = {}
    u, a = cfg.get("user_token_id"), cfg.get("assistant_token_id")
    if isinstance(u, int) and isinstance(a, int):
        return u, a
    pieces = [tokenizer.token_to_id(p) for p in BAICHUAN_ROLE_PIECES]
    if all(isinstance(i, int) for i in pieces):
        return pieces[0], pieces[1]
    return BAICHUAN_USER_ID, BAICHUAN_ASSISTANT_ID


def _baichuan(tokenizer: Tokenizer) -> ChatFormat:
    user, assistant = baichuan_role_ids(tokenizer)

    def render(messages: list[dict]) -> list[int]:
        """System text, then each turn's role id and text, then the assistant id."""
        ids: list[int] = []
        for m in messages:
            body = tokenizer.encode(m["content"], add_special_tokens=False)
            role = m["role"]
            ids += body if role == "system" else [user if role == "user" else assistant] + body
        return ids + [assistant]

    return ChatFormat("baichuan2", render, stop_ids=(user,))


def _llama2(tokenizer: Tokenizer) -> ChatFormat:
    bos = tokenizer.id_to_token(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None \
        else ""
    eos = tokenizer.id_to_token(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None \
        else ""

    def render(messages: list[dict]) -> list[int]:
        """The built-in Llama-2 template, tokenized with its <s>/</s> as special ids."""
        text = render_chat(LLAMA2_TEMPLATE, messages, True, bos_token=bos or "",
                           eos_token=eos or "")
        return tokenizer.encode(text, add_special_tokens=False)

    return ChatFormat("llama2", render, stop=("[INST]",))


def _own_template(tokenizer: Tokenizer) -> ChatFormat:
    def render(messages: list[dict]) -> list[int]:
        """The checkpoint's template through the tokenizer wrapper."""
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    return ChatFormat("template", render)


def chat_format(tokenizer: Tokenizer, style: str = "auto") -> ChatFormat:
    """The chat format to use: `style` one of auto, template, baichuan2, llama2."""
    if style not in STYLES:
        raise LlmcError(f"chat: unknown format '{style}' (one of {', '.join(STYLES)})")
    if style == "template" or (style == "auto" and tokenizer.chat_template is not None):
        return _own_template(tokenizer)
    # (the wrapper's Baichuan format is this one, without its role-id stop)
    baichuan = _is_baichuan(tokenizer) or tokenizer.has_chat_template
    if style == "baichuan2" or (style == "auto" and baichuan):
        return _baichuan(tokenizer)
    return _llama2(tokenizer)


class ChatSession:
    """The history of one conversation and the prompt ids it renders to."""

    def __init__(self, fmt: ChatFormat, system: str | None, budget: int):
        self.fmt, self.system, self.budget = fmt, system, budget
        self.turns: list[dict] = []

    def messages(self) -> list[dict]:
        """The system message (if any) and the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def prompt(self) -> list[int]:
        """The history's prompt ids, dropping the oldest turns to stay within the budget."""
        ids = self.fmt.render(self.messages())
        while len(ids) > self.budget and len(self.turns) > 1:
            # drop the oldest user turn and the answer that followed it
            cut = next((i for i, m in enumerate(self.turns[1:], 1) if m["role"] == "user"),
                       len(self.turns) - 1)
            del self.turns[:cut]
            ids = self.fmt.render(self.messages())
        return ids[-self.budget:]


def _answer(engine: Engine, session: ChatSession, params: GenerationParams, state: KVState,
            stdout: TextIO) -> tuple[str, str, Timings]:
    """Stream one answer; its text, how it ended ("interrupted" on Ctrl-C), its timings."""
    shown = ""
    run = engine.stream([session.prompt()], params, state=state)
    try:
        for event in run:
            if event.text:
                shown += event.text
                stdout.write(event.text)
                stdout.flush()
    except KeyboardInterrupt:
        return shown, "interrupted", run.timings
    row = run.result.rows[0]
    return row.text, row.finish_reason, run.timings


def _params(tokenizer: Tokenizer, fmt: ChatFormat, params: GenerationParams | None,
            limit: int) -> GenerationParams:
    params = params or GenerationParams(max_new_tokens=min(512, limit // 2))
    if params.max_new_tokens >= limit:
        raise LlmcError(f"chat: {params.max_new_tokens} new tokens leave no room for the "
                        f"conversation in the model's {limit} positions")
    eos = set(params.eos_ids) | set(fmt.stop_ids)
    if not params.eos_ids and tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return replace(params, eos_token_id=tuple(sorted(eos)),
                   stop=tuple(dict.fromkeys(tuple(params.stop) + fmt.stop)))


def _read(stdin: TextIO, stdout: TextIO, prefix: str) -> str | None:
    """The next user line, or None at the end of input or on Ctrl-C."""
    stdout.write(prefix)
    stdout.flush()
    try:
        line = stdin.readline()
    except KeyboardInterrupt:
        line = ""
    if not line:
        stdout.write("\n")
        return None
    return line.strip()


def chat(model: CausalLM | Engine, tokenizer: Tokenizer, stdin: TextIO, stdout: TextIO,
         params: GenerationParams | None = None, system: str | None = None,
         style: str = "auto", stats: bool = False, user_prefix: str = "USER: ",
         assistant_prefix: str = "ASSISTANT: ") -> int:
    """Run the chat until /exit or the end of `stdin`; returns the number of answers.
    `stats`: a line of prefill/decode speed after each answer."""
    engine = model if isinstance(model, Engine) else Engine(model, tokenizer)
    fmt = chat_format(tokenizer, style)
    limit = engine.model.max_positions or DEFAULT_CONTEXT
    params = _params(tokenizer, fmt, params, limit)
    session = ChatSession(fmt, system, limit - params.max_new_tokens)
    state, answers = KVState(capacity=min(limit, DEFAULT_CONTEXT)), 0
    while (text := _read(stdin, stdout, user_prefix)) is not None:
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.turns.clear()
            stdout.write("(history cleared)\n")
            continue
        if not text:
            continue
        session.turns.append({"role": "user", "content": text})
        stdout.write(assistant_prefix)
        answer, reason, timings = _answer(engine, session, params, state, stdout)
        session.turns.append({"role": "assistant", "content": answer})
        stdout.write(" (stopped)\n" if reason == "interrupted" else "\n")
        if stats:
            stdout.write(f"[{format_timings(timings)}]\n")
        answers += 1
    return answers
