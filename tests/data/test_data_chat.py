from datetime import datetime
from pathlib import Path

import pytest
import sentencepiece as spm

from pjax.data.chat import BUILTIN, ChatTemplateError, encode_example, encode_prompt, render, resolve_template
from pjax.data.tokenizer import HFTokenizer, SentencePieceTokenizer

LLAMA2_MODEL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "llama2.model"

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>",
            "<|im_end|>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


@pytest.fixture(scope="module")
def raw():
    """A tiny byte-level BPE (`tokenizers`), the independent reference for token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = ["Hello world! Hello there, how are you? I am fine.", "system user assistant Be brief. Bye"] * 20
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tk


def _tok(raw, *, add_bos=True, template=BUILTIN["chatml"], name="tiny"):
    return HFTokenizer(raw, name=name, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos=add_bos,
                       chat_template=template)


def _ids(raw, text):
    return raw.encode(text, add_special_tokens=False).ids


def test_builtin_templates_render_known_strings():
    expected = {
        "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                  "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
        "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]",
        "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
                  "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant"
                  "<|end_header_id|>\n\n",
        "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nBye</s>\n"
                  "<|assistant|>\n",
    }
    assert set(expected) == set(BUILTIN)
    for name, text in expected.items():
        assert render(BUILTIN[name], CONVERSATION, add_generation_prompt=True, bos_token="<s>", eos_token="</s>") == text


def test_render_matches_transformers():
    pytest.importorskip("transformers", reason="transformers (peer extra) not installed")
    from transformers.utils.chat_template_utils import render_jinja_template

    extra = (  # loop controls, tojson (no HTML escaping), namespace, `tools` defined as none, trim/lstrip blocks
        "{% set ns = namespace(n=0) %}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "    {% set ns.n = ns.n + 1 %}\n"
        "{{ m | tojson }}|{{ {'k': '<&>'} | tojson(indent=1) }}\n"
        "    {% if loop.index == 3 %}{% break %}{% endif %}\n"
        "{% endfor %}\n"
        "{{ ns.n }}{% if tools is none %} no tools{% endif %}{% if add_generation_prompt %}>{% endif %}"
    )
    for template in [*BUILTIN.values(), extra]:
        for gen in (False, True):
            ours = render(template, CONVERSATION, add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
            ref = render_jinja_template(conversations=[CONVERSATION], chat_template=template, add_generation_prompt=gen,
                                        bos_token="<s>", eos_token="</s>")[0][0]
            assert ours == ref


def test_template_errors_are_clear():
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render(BUILTIN["llama2"], [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render("{% for m in messages %}", CONVERSATION)
    with pytest.raises(ValueError, match=r"messages\[1\]: expected an object with 'role' and 'content'"):
        render(BUILTIN["chatml"], [{"role": "user", "content": "a"}, {"content": "b"}])
    year = render("{{ strftime_now('%Y') }}", [])
    assert year in {str(datetime.now().year), str(datetime.now().year - 1)}


def test_resolve_template(raw):
    tok = _tok(raw, template="{{ 'own' }}")
    assert resolve_template(tok, "") == "{{ 'own' }}"
    assert resolve_template(tok, "zephyr") == BUILTIN["zephyr"]
    assert resolve_template(tok, "{% for m in messages %}x{% endfor %}") == "{% for m in messages %}x{% endfor %}"
    with pytest.raises(ValueError, match="unknown chat template 'chatml2'"):
        resolve_template(tok, "chatml2")
    with pytest.raises(ValueError, match="tokenizer 'bare' has no chat template"):
        resolve_template(_tok(raw, template=None, name="bare"), "")


def test_encode_example_standard(raw):
    tok = _tok(raw)
    bos, eos = tok.bos_id, tok.eos_id
    # consistent: " world" starts a pre-token of its own
    prompt_ids, completion_ids, consistent = encode_example(tok, "Hello", " world")
    assert consistent
    assert prompt_ids == [bos] + _ids(raw, "Hello")
    assert prompt_ids + completion_ids == [bos] + _ids(raw, "Hello world") + [eos]
    # mismatch: the prompt's trailing space merges into " Hello" in the full text
    assert _ids(raw, "Hi Hello")[: len(_ids(raw, "Hi "))] != _ids(raw, "Hi ")
    prompt_ids, completion_ids, consistent = encode_example(tok, "Hi ", "Hello")
    assert not consistent
    assert prompt_ids == [bos] + _ids(raw, "Hi ")
    assert completion_ids == _ids(raw, "Hello") + [eos]
    # EOS already written by the completion is not doubled; no BOS when the tokenizer adds none
    prompt_ids, completion_ids, _ = encode_example(_tok(raw, add_bos=False), "Hello", " world<|eot_id|>")
    assert prompt_ids == _ids(raw, "Hello") and completion_ids == _ids(raw, " world") + [eos]


def test_encode_example_standard_sentencepiece_mismatch(task):
    tok = task.tokenizer
    sp = spm.SentencePieceProcessor(model_file=tok.model_path)
    # a prompt ending inside a word: "the mo" + "vie was good" tokenizes "movie" whole
    prompt_ids, completion_ids, consistent = encode_example(tok, "the mo", "vie was good")
    assert sp.encode("the movie was good")[: len(sp.encode("the mo"))] != sp.encode("the mo")
    assert not consistent
    assert prompt_ids == [tok.bos_id] + sp.encode("the mo")
    assert completion_ids == sp.encode("vie was good") + [tok.eos_id]
    # the ordinary case: a space-separated completion
    prompt_ids, completion_ids, consistent = encode_example(tok, "the movie", " was good")
    assert consistent and prompt_ids + completion_ids == [tok.bos_id] + sp.encode("the movie was good") + [tok.eos_id]


def test_encode_example_conversational(raw):
    tok = _tok(raw)
    prompt, completion = CONVERSATION[:2], CONVERSATION[2:3]
    prompt_ids, completion_ids, consistent = encode_example(tok, prompt, completion)
    prompt_text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert consistent
    assert prompt_ids == [tok.bos_id] + _ids(raw, prompt_text)  # chatml writes no BOS: added once
    assert completion_ids == _ids(raw, "Hello!<|im_end|>\n")  # the template ends the turn: no EOS added
    # the prompt alone (what generation starts from) is the same prompt_ids
    assert encode_prompt(tok, prompt) == prompt_ids == encode_example(tok, prompt, [])[0]
    assert encode_example(tok, prompt, []) == (prompt_ids, [], True)
    assert encode_prompt(tok, "Hello") == [tok.bos_id] + _ids(raw, "Hello")
    with pytest.raises(ValueError, match="both be strings .* or both message lists"):
        encode_example(tok, "Hi", completion)
    with pytest.raises(ValueError, match="tokenizer 'bare' has no chat template"):
        encode_example(_tok(raw, template=None, name="bare"), prompt, completion)


def test_no_double_bos_with_llama3_template(raw):
    tok = _tok(raw, template=BUILTIN["llama3"])
    prompt_ids, completion_ids, consistent = encode_example(tok, CONVERSATION[:2], CONVERSATION[2:3])
    assert consistent
    assert prompt_ids[0] == tok.bos_id and (prompt_ids + completion_ids).count(tok.bos_id) == 1
    assert completion_ids == _ids(raw, "Hello!<|eot_id|>")
    assert completion_ids[-1] == tok.eos_id


def test_encode_example_conversational_mismatch_and_inconsistent_template(raw):
    tok = _tok(raw, add_bos=False)
    # the generation prompt ends in a space that merges with the assistant's first word
    spaced = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    prompt, completion = CONVERSATION[1:2], CONVERSATION[2:3]
    prompt_ids, completion_ids, consistent = encode_example(tok, prompt, completion, template=spaced)
    assert not consistent
    assert prompt_ids == _ids(raw, "user: Hi\nassistant: ")
    assert completion_ids == _ids(raw, "Hello!\n")
    # a generation prompt that the full conversation does not contain
    bad = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    with pytest.raises(ValueError, match="not prefix-consistent"):
        encode_example(tok, prompt, completion, template=bad)


def test_llama2_conversation_matches_meta_reference():
    if not LLAMA2_MODEL.is_file():
        pytest.skip(f"Llama 2 tokenizer not found at {LLAMA2_MODEL}")
    tok = SentencePieceTokenizer(str(LLAMA2_MODEL))
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))
    prompt = [{"role": "user", "content": "Hi there"}]
    completion = [{"role": "assistant", "content": "Hello!"}]
    prompt_ids, completion_ids, consistent = encode_example(tok, prompt, completion, template=BUILTIN["llama2"])
    # Meta's llama chat_completion: encode(f"{B_INST} {user} {E_INST} {answer} ", bos=True, eos=True)
    assert consistent
    assert prompt_ids == [1] + sp.encode("[INST] Hi there [/INST]")
    assert prompt_ids + completion_ids == [1] + sp.encode("[INST] Hi there [/INST] Hello! ") + [2]
