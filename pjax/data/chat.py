"""Chat templates (Jinja, rendered as transformers renders them) and prompt/completion tokenization.

`encode_example` follows TRL's prompt-completion convention: the completion tokens are what the
full sequence adds after the prompt's tokens. When tokenization merges across the prompt/completion
boundary (so the full sequence does not start with the prompt's tokens) it reports
``consistent=False`` and falls back to the tokens of the completion text alone. TRL warns about
each such mismatch; callers should count the rows with ``consistent=False`` and warn.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pjax.data.tokenizer import Tokenizer


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render (including its own ``raise_exception``)."""


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    """The template compiled in the environment transformers uses for chat templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile (line {e.lineno}): {e.message}") from e


def _check_messages(messages: Any, what: str) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"{what}: expected a list of messages, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f"{what}[{i}]: expected an object with 'role' and 'content', got {m!r}")
        out.append(dict(m))
    return out


def render(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = False,
           bos_token: str = "", eos_token: str = "", **kwargs: Any) -> str:
    """``template`` rendered for ``messages`` (each ``{"role", "content", ...}``), as transformers'
    ``apply_chat_template(..., tokenize=False)`` renders it: sandboxed Jinja with ``trim_blocks``,
    ``lstrip_blocks``, loop controls, ``raise_exception``, ``tojson`` and ``strftime_now``.
    Extra ``kwargs`` are passed to the template; ``tools`` and ``documents`` default to None, as there."""
    compiled = _compile(template)
    kwargs = {"tools": None, "documents": None, **kwargs}
    try:
        return compiled.render(messages=_check_messages(messages, "messages"),
                               add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **kwargs)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e}") from e


# Built-in templates, as published with the models they are named after.
BUILTIN: dict[str, str] = {
    # ChatML (e.g. Qwen, SmolLM): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # meta-llama/Llama-2-*-chat-hf
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # HuggingFaceH4/zephyr-7b-beta
    "zephyr": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"
    ),
}


def resolve_template(tokenizer: Tokenizer, choice: str) -> str:
    """The Jinja template for ``choice``: ``""`` is the tokenizer's own, a `BUILTIN` name that
    template, and anything containing ``{{`` or ``{%`` a literal Jinja template."""
    if choice == "":
        if tokenizer.chat_template is None:
            raise ValueError(f"tokenizer {tokenizer.name!r} has no chat template; choose a built-in one "
                             f"({', '.join(sorted(BUILTIN))}) or give a Jinja template")
        return tokenizer.chat_template
    if choice in BUILTIN:
        return BUILTIN[choice]
    if "{{" in choice or "{%" in choice:
        return choice
    raise ValueError(f"unknown chat template {choice!r}: expected '' (the tokenizer's own), one of "
                     f"{sorted(BUILTIN)}, or a Jinja template string")


def _with_bos(tok: Tokenizer, ids: list[int]) -> list[int]:
    """BOS first when the tokenizer wants it, unless the rendered text already starts with it."""
    if tok.add_bos and ids[:1] != [tok.bos_id]:
        return [tok.bos_id, *ids]
    return ids


def _specials(tok: Tokenizer) -> dict[str, str]:
    return {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or ""}


def encode_prompt(tok: Tokenizer, prompt: str | Sequence[dict], *, template: str | None = None) -> list[int]:
    """The tokens a generation starts from, as `encode_example` tokenizes the prompt: ``[BOS] +
    encode(prompt)`` for a string, the conversation rendered with ``add_generation_prompt=True``
    (``template``, or the tokenizer's own when None) for a message list; BOS only when
    ``tok.add_bos`` and the text does not already start with it."""
    if isinstance(prompt, str):
        return _with_bos(tok, tok.encode(prompt))
    template = resolve_template(tok, "") if template is None else template
    return _with_bos(tok, tok.encode(render(template, prompt, add_generation_prompt=True, **_specials(tok))))


def encode_example(tok: Tokenizer, prompt: str | Sequence[dict], completion: str | Sequence[dict], *,
                   template: str | None = None) -> tuple[list[int], list[int], bool]:
    """``(prompt_ids, completion_ids, consistent)`` for one example, TRL-style.

    * Standard (two strings): ``prompt_ids = [BOS] + encode(prompt)`` and the completion is what
      ``[BOS] + encode(prompt + completion)`` (concatenated as is) adds after it, plus EOS unless it
      already ends with EOS. BOS only when ``tok.add_bos``.
    * Conversational (two message lists; the completion is the assistant turn(s)): the prompt is
      rendered with ``add_generation_prompt=True``, the full text from ``prompt + completion``
      (``template``, or the tokenizer's own when None). BOS is prepended only if the text does not
      already start with it; no EOS is appended (the template ends the turn).

    ``consistent`` is False when the full ids do not start with ``prompt_ids`` (tokens merged across
    the boundary); the completion ids are then the tokens of the completion text alone (for
    conversations, the full text after the prompt text). A template whose prompt text is not a
    prefix of its full text raises ValueError. An empty completion list gives the prompt's ids
    alone: ``(encode_prompt(...), [], True)``.
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        prompt_ids = _with_bos(tok, tok.encode(prompt))
        full_ids = _with_bos(tok, tok.encode(prompt + completion))
        consistent = full_ids[: len(prompt_ids)] == prompt_ids
        completion_ids = full_ids[len(prompt_ids):] if consistent else tok.encode(completion)
        if completion_ids[-1:] != [tok.eos_id]:
            completion_ids = completion_ids + [tok.eos_id]
        return prompt_ids, completion_ids, consistent
    if isinstance(prompt, str) or isinstance(completion, str):
        raise ValueError("prompt and completion must both be strings (standard) or both message lists "
                         f"(conversational), got {type(prompt).__name__} and {type(completion).__name__}")
    template = resolve_template(tok, "") if template is None else template
    prompt, completion = _check_messages(prompt, "prompt"), _check_messages(completion, "completion")
    if not prompt:  # language modelling: the whole conversation is the completion
        if not completion:
            raise ValueError("an empty conversation has no tokens")
        full_ids = _with_bos(tok, tok.encode(render(template, completion, **_specials(tok))))
        head = [tok.bos_id] if tok.add_bos and full_ids[:1] == [tok.bos_id] else []
        return head, full_ids[len(head):], True
    prompt_text = render(template, prompt, add_generation_prompt=True, **_specials(tok))
    prompt_ids = _with_bos(tok, tok.encode(prompt_text))
    if not completion:
        return prompt_ids, [], True
    full_text = render(template, prompt + completion, **_specials(tok))
    full_ids = _with_bos(tok, tok.encode(full_text))
    consistent = full_ids[: len(prompt_ids)] == prompt_ids
    if consistent:
        completion_ids = full_ids[len(prompt_ids):]
    elif full_text.startswith(prompt_text):
        completion_ids = tok.encode(full_text[len(prompt_text):])
    else:
        raise ChatTemplateError("chat template is not prefix-consistent: the prompt rendered with "
                         "add_generation_prompt=True is not a prefix of the rendered full conversation "
                         f"(prompt text ends {prompt_text[-40:]!r}, full text there reads "
                         f"{full_text[max(0, len(prompt_text) - 40):len(prompt_text)]!r})")
    if not completion_ids:
        raise ValueError("completion renders to no tokens")
    return prompt_ids, completion_ids, consistent
