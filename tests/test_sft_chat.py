"""`workbench chat`: several turns in the terminal, streamed, the history in the chat template; tiny Llama."""

from __future__ import annotations

import io
import sys

from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.generate import Sampling, generate_answers, load_generator, stream_answer


@pytest.fixture(scope="module")
def chat_lm(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama as a causal LM saved whole (its LM head seeded, not drawn anew at each load), with the EOS
    token made unlikely so that every answer runs to --max-new-tokens: several words to stream."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] = -model.get_output_embeddings().weight.mean(0) * 50
    out = tmp_path_factory.mktemp("chat-lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_stream_answer_hands_out_pieces_that_make_the_greedy_answer(chat_lm):
    model, tok, _ = load_generator(str(chat_lm))
    msgs = [{"role": "user", "content": "the movie was good"}]
    pieces: list[str] = []
    s = Sampling(max_new_tokens=8)
    answer = stream_answer(model, tok, msgs, pieces.append, sampling=s, max_length=64)
    assert len(pieces) > 1  # written as it goes, not once at the end
    assert "".join(pieces).strip() == answer == generate_answers(model, tok, [msgs], sampling=s, max_length=64)[0]


def test_chat_keeps_the_history_resets_and_exits(chat_lm, monkeypatch, capsys):
    from workbench.tasks.causal_lm_sft import encode

    seen: list[list[dict]] = []
    real = encode.prompt_ids

    def spy(tok, messages, max_length):
        if max_length < 1 << 30:  # the prompt generation starts from (not the length check)
            seen.append([dict(m) for m in messages])
        return real(tok, messages, max_length)

    monkeypatch.setattr(encode, "prompt_ids", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("the movie was good\n\nand the plot\n/help\n/reset\n"
                                                  "and the plot\n/exit\nnever read\n"))
    assert main(["chat", str(chat_lm), "--max-new-tokens", "6", "--system", "be kind"]) == 0
    out = capsys.readouterr().out
    assert "greedy, at most 6 new tokens, the workbench's plain chat template" in out
    assert "(unknown command /help: /reset starts a new conversation" in out and "(new conversation)" in out

    sys_, u1, u2 = ({"role": r, "content": c} for r, c in (("system", "be kind"), ("user", "the movie was good"),
                                                             ("user", "and the plot")))
    assert len(seen) == 3  # three questions; the empty line, /help, /reset, /exit and what follows are not sent
    a1 = seen[1][2]
    assert seen[0] == [sys_, u1]
    assert seen[1] == [sys_, u1, {"role": "assistant", "content": a1["content"]}, u2]  # the history, answer kept
    assert seen[2] == [sys_, u2]  # after /reset: only the system message stays
    # what was streamed is what the model answers to those conversations (greedy)
    monkeypatch.setattr(encode, "prompt_ids", real)
    model, tok, max_length = load_generator(str(chat_lm))
    answers = generate_answers(model, tok, seen, sampling=Sampling(max_new_tokens=6), max_length=max_length)
    assert answers[0] == a1["content"]
    pos = 0
    for a in answers:
        pos = out.index(a, pos) + len(a)
    assert out.index("(new conversation)") < out.rindex(answers[2])


def test_chat_refuses_bad_generation_settings_and_a_classification_run(chat_lm, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert main(["chat", str(chat_lm), "--temperature", "-1"]) == 2
    assert "temperature=-1.0: give 0 (greedy) or more" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--top-k", "--repetition-penalty", "--seed", "--trust-remote-code"])
def test_chat_takes_the_same_flags_as_generate(flag):
    from workbench.cli import build_parser
    helps = {name: p.format_help() for name, p in build_parser()._subparsers._group_actions[0].choices.items()
             if name in ("chat", "generate")}
    assert flag in helps["chat"] and flag in helps["generate"]


def test_iter_answer_yields_the_answer_piece_by_piece_and_raises_generation_errors(chat_lm):
    """What the Chat page streams (`st.write_stream`): pieces as they are written, joined the greedy answer."""
    from workbench.generate import iter_answer

    model, tok, _ = load_generator(str(chat_lm))
    msgs = [{"role": "user", "content": "the movie was good"}]
    s = Sampling(max_new_tokens=8)
    pieces = list(iter_answer(model, tok, msgs, sampling=s, max_length=64))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == generate_answers(model, tok, [msgs], sampling=s, max_length=64)[0]
    with pytest.raises(ValueError):  # an error in the generating thread reaches the page, not a silent stop
        list(iter_answer(model, tok, [{"role": "user", "content": "x"}], sampling=Sampling(max_new_tokens=-1)))


def test_an_abandoned_stream_stops_generating(chat_lm):
    """The Chat page's script is stopped when the user acts mid-answer: closing the iterator must end the
    generation (the chat_lm never writes EOS, so it would otherwise run to max_new_tokens)."""
    import time

    from workbench.generate import iter_answer

    model, tok, _ = load_generator(str(chat_lm))
    steps = []
    hook = model.register_forward_hook(lambda *_: steps.append(1))
    try:
        it = iter_answer(model, tok, [{"role": "user", "content": "the movie was good"}],
                         sampling=Sampling(max_new_tokens=200), max_length=64)
        next(it)
        it.close()
        for _ in range(100):  # until the worker thread has stopped calling the model
            n = len(steps)
            time.sleep(0.05)
            if len(steps) == n:
                break
        assert len(steps) < 50, len(steps)
    finally:
        hook.remove()
