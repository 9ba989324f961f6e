"""Conversations to token ids and labels: the model's chat template, loss on the assistant's tokens only.

The conversation is rendered once with the model's own chat template (`tokenizer.apply_chat_template`,
text out), so training sees exactly what the model will see when chatted with. Each assistant turn's
content, plus the end-of-turn marker the template writes after it (`<|im_end|>`, `<|eot_id|>`, `</s>`),
is found in that text in turn order; tokens overlapping those character spans keep their ids as labels,
every other token (system, user, the template's role headers) gets -100, so only the answers are learned
and the model learns to end its turn. A tokenizer without a chat template gets `FALLBACK_TEMPLATE`.

Truncation keeps the last answer whole: a conversation longer than `max_length` loses its oldest tokens
first (the left side of the prompt; a leading BOS token is kept), and one whose last answer alone does not
fit is refused by the data report, never silently cut to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE = -100
# For tokenizers that ship without a chat template (base models, the tests' word-level tokenizer): each turn
# is `role:` on its own line, then the content; an assistant turn ends with the EOS token, which is where
# generation stops. Documented in the data report ("template": "fallback").
FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}")
_MARK = "WORKBENCHANSWERMARK"


def template_kind(tokenizer: Any) -> str:
    """"model" when the tokenizer has its own chat template, else "fallback" (`FALLBACK_TEMPLATE`)."""
    return "model" if getattr(tokenizer, "chat_template", None) else "fallback"


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The conversation as the model reads it (text), through its chat template or the fallback."""
    template = None if template_kind(tokenizer) == "model" else FALLBACK_TEMPLATE
    if template is not None and tokenizer.eos_token is None:
        from ...errors import ModelError
        raise ModelError("this tokenizer has neither a chat template nor an end-of-sequence token, so the model "
                         "could not learn where an answer ends. Fix: use a chat model's tokenizer, or set "
                         "tokenizer.chat_template (and eos_token) before training.")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=template)


def end_of_turn(tokenizer: Any) -> str:
    """What the template writes right after an assistant's content (trailing whitespace dropped): the marker
    the model must learn to produce, and where generation stops."""
    text = render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}])
    return text[text.index(_MARK) + len(_MARK):].rstrip()


def stop_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Token ids that end a generated answer: EOS, the model's generation EOS ids, and the template's
    end-of-turn marker when it is one token (`<|im_end|>`, `<|eot_id|>`)."""
    ids: list[int] = []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in [tokenizer.eos_token_id, *(gen if isinstance(gen, list) else [gen])]:
        if isinstance(i, int) and i not in ids:
            ids.append(i)
    eot = end_of_turn(tokenizer).strip()
    if eot:
        t = tokenizer(eot, add_special_tokens=False)["input_ids"]
        if len(t) == 1 and t[0] not in ids and t[0] != tokenizer.unk_token_id:
            ids.append(t[0])
    return ids


def answer_spans(text: str, messages: Sequence[dict[str, str]], eot: str) -> list[tuple[int, int]]:
    """Character spans of each assistant turn in the rendered `text` (its content plus the end-of-turn marker).

    Every turn is looked for after the previous one, so an answer repeated inside an earlier question is never
    taken for it. A template may drop or move the system message (that one is skipped); any other turn it does
    not write verbatim is a `ValueError`.
    """
    spans, cursor, eot = [], 0, eot.strip()
    for m in messages:
        content = m["content"].strip()
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            if m["role"] == "system":
                continue
            raise ValueError(f"the chat template did not write the {m['role']} turn {content[:40]!r} verbatim")
        end = pos + len(content)
        if m["role"] == "assistant":
            rest = text[end:]
            if eot and rest.lstrip().startswith(eot):
                end += len(rest) - len(rest.lstrip()) + len(eot)
            spans.append((pos, end))
        cursor = end
    return spans


@dataclass
class Encoded:
    """One conversation as ids and labels, with what truncation did."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int   # unlabelled tokens before truncation
    answer_tokens: int   # labelled tokens before truncation
    cut: int = 0         # tokens dropped from the left by truncation
    too_long: bool = False  # the last answer alone (+ BOS) does not fit in max_length

    @property
    def length(self) -> int:
        return self.prompt_tokens + self.answer_tokens


def _tokenize(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and, per token, the index of the answer span it overlaps (-1: none)."""
    def span_of(s: int, e: int) -> int:
        return next((j for j, (a, b) in enumerate(spans) if s < b and e > a), -1)

    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [span_of(s, e) for s, e in enc["offset_mapping"]]
    # A slow tokenizer has no offsets: tokenise prompt and answer segments separately, then join.
    ids: list[int] = []
    which: list[int] = []
    pos = 0
    for j, (a, b) in enumerate(spans + [(len(text), len(text))]):
        for seg, lab in ((text[pos:a], -1), (text[a:b], j)):
            if seg:
                t = tokenizer(seg, add_special_tokens=False)["input_ids"]
                ids += t
                which += [lab] * len(t)
        pos = b
    return ids, which


def encode_conversation(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int,
                        eot: str | None = None) -> Encoded:
    """Ids and labels (-100 on every non-answer token) of one conversation, truncated to `max_length`
    from the left so the last answer stays whole (see the module doc)."""
    eot = end_of_turn(tokenizer) if eot is None else eot
    text = render(tokenizer, messages)
    spans = answer_spans(text, messages, eot)
    ids, which = _tokenize(tokenizer, text, spans)
    labels = [i if j >= 0 else IGNORE for i, j in zip(ids, which)]
    n_answer = sum(j >= 0 for j in which)
    out = Encoded(ids, labels, len(ids) - n_answer, n_answer)
    if len(ids) <= max_length:
        return out
    last = [k for k, j in enumerate(which) if j == len(spans) - 1]  # the last answer's tokens
    first, end = last[0], last[-1] + 1
    ids, labels = ids[:end], labels[:end]  # tokens after the last answer carry no label
    bos = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
    if len(ids) > max_length:
        if end - first + bos > max_length:
            out.too_long = True
            return out
        cut = len(ids) - max_length
        ids, labels = ids[:bos] + ids[bos + cut:], labels[:bos] + labels[bos + cut:]
        out.cut = cut
    out.input_ids, out.labels = ids, labels
    return out


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> list[int]:
    """The ids a model answers from: the conversation with the generation prompt, its oldest tokens dropped
    beyond `max_length` (a leading BOS kept)."""
    ids = tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    if len(ids) > max_length:
        bos = 1 if ids[0] == tokenizer.bos_token_id else 0
        ids = ids[:bos] + ids[len(ids) - max_length + bos:]
    return list(ids)


class SFTCollator:
    """Pads each batch on the right to its longest example: input ids with the pad token, attention mask
    0, labels -100 (so padding never counts in the loss). Other dataset columns (`length`) are dropped.

    Packed rows (`packing.pack`: features with `position_ids`) are padded the same way but get no attention
    mask: their `position_ids` (padding numbered as one more sequence) tell the model where each conversation
    starts, `use_cache=False` keeps transformers' packed-sequence detection on, and `real_tokens` (the tokens
    that are not padding) is what the trainer's tokens/s counts (`WorkbenchTrainer` takes it out)."""

    def __init__(self, tokenizer: Any):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        packed = "position_ids" in features[0]
        pos = torch.arange(n).repeat(len(features), 1)
        for k, f in enumerate(features):
            m = len(f["input_ids"])
            ids[k, :m] = torch.as_tensor(f["input_ids"])
            mask[k, :m] = 1
            if "labels" in f:
                labels[k, :m] = torch.as_tensor(f["labels"])
            if packed:
                pos[k, :m] = torch.as_tensor(f["position_ids"])
                pos[k, m:] = torch.arange(n - m)
        if packed:
            return {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False,
                    "real_tokens": int(mask.sum())}
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
