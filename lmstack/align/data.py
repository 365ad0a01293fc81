"""Chat and preference datasets: strict loading, format conversion, tokenization, packing, batching.

Accepted chat records (one JSON object per line):
- OpenAI style ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
- ShareGPT ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``
- instruction style ``{"instruction": str, "input": str?, "output": str, "system": str?}`` (Alpaca)
Preference records: ``{"prompt", "chosen", "rejected"}`` where each is a string or a message list
(TRL's conversational format); the prompt may also be left out when chosen/rejected are full
conversations sharing their prefix (TRL's "implicit prompt").
Every error names the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from lmstack.runs import iter_jsonl

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bot": "assistant", "model": "assistant", "system": "system",
}
IGNORE_INDEX = -100


class DatasetError(ValueError):
    """A record in a user's chat / preference file is malformed."""


@dataclass
class ChatExample:
    messages: list[dict]
    meta: dict = field(default_factory=dict)  # other fields of the record (task, answer, ...)


@dataclass
class PreferencePair:
    prompt: list[dict]      # the conversation up to the answer
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)


def _check_messages(messages: Any, where: str, need_assistant: bool = True) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DatasetError(f"{where}: messages[{i}] must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DatasetError(f"{where}: messages[{i}].role={role!r} must be one of {ROLES}")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: messages[{i}].content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise DatasetError(f"{where}: messages[{i}] is a system message; only the first message may be one")
        if "train" in m and not isinstance(m["train"], bool):
            raise DatasetError(f"{where}: messages[{i}].train must be true or false, got {m['train']!r}")
        # "train": false keeps an assistant turn as context without a loss on it (tokenizer.encode_chat)
        out.append({"role": role, "content": content, **({"train": m["train"]} if "train" in m else {})})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise DatasetError(f"{where}: conversation has no assistant message, so there is nothing to learn")
    return out


def normalize_chat_record(record: Any, where: str) -> ChatExample:
    """Convert one record of any accepted chat format to ``ChatExample`` (messages format)."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = _check_messages(record["messages"], where)
        meta = {k: v for k, v in record.items() if k != "messages"}
    elif "conversations" in record:
        conv = record["conversations"]
        if not isinstance(conv, list) or not conv:
            raise DatasetError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} objects")
        messages = []
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise DatasetError(f"{where}: conversations[{i}] must have 'from' and 'value' (ShareGPT format)")
            role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise DatasetError(f"{where}: conversations[{i}].from={turn['from']!r} is not one of {sorted(_SHAREGPT_ROLES)}")
            messages.append({"role": role, "content": turn["value"]})
        messages = _check_messages(messages, where)
        meta = {k: v for k, v in record.items() if k != "conversations"}
    elif "instruction" in record:
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise DatasetError(f"{where}: instruction-style record needs a string '{key}'")
        extra = record.get("input", "")
        if not isinstance(extra, str):
            raise DatasetError(f"{where}: 'input' must be a string, got {type(extra).__name__}")
        user = record["instruction"] if not extra else f"{record['instruction']}\n\n{extra}"
        messages = []
        if isinstance(record.get("system"), str) and record["system"]:
            messages.append({"role": "system", "content": record["system"]})
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        meta = {k: v for k, v in record.items() if k not in ("instruction", "input", "output", "system")}
    else:
        raise DatasetError(
            f"{where}: unknown chat format (keys {sorted(record)}); expected 'messages', "
            "'conversations' (ShareGPT) or 'instruction'/'output'"
        )
    return ChatExample(messages, meta)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    for lineno, value in iter_jsonl(path, DatasetError):
        yield f"{path}:{lineno}", value


def load_chat_jsonl(path: str | Path, limit: int | None = None) -> list[ChatExample]:
    out = []
    for where, record in _iter_jsonl(Path(path)):
        out.append(normalize_chat_record(record, where))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{path}: no records")
    return out


def _as_text_answer(value: Any, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        msgs = _check_messages(value, f"{where} ({key})", need_assistant=True)
        if msgs[-1]["role"] != "assistant":
            raise DatasetError(f"{where}: '{key}' must end with an assistant message")
        return msgs[-1]["content"]
    raise DatasetError(f"{where}: '{key}' must be a string or a list of messages, got {type(value).__name__}")


def normalize_preference_record(record: Any, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DatasetError(f"{where}: field '{key}' missing (preference records need prompt/chosen/rejected)")
    meta = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")}
    if "prompt" not in record:
        # Implicit prompt: both sides are full conversations; the prompt is their shared prefix.
        chosen, rejected = record["chosen"], record["rejected"]
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise DatasetError(f"{where}: field 'prompt' missing (needed unless chosen/rejected are message lists)")
        c = _check_messages(chosen, f"{where} (chosen)")
        r = _check_messages(rejected, f"{where} (rejected)")
        if c[:-1] != r[:-1] or len(c) < 2:
            raise DatasetError(f"{where}: without 'prompt', chosen and rejected must share all messages but the last")
        return PreferencePair(c[:-1], _as_text_answer(c, where, "chosen"), _as_text_answer(r, where, "rejected"), meta)
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt_msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt_msgs = _check_messages(prompt, f"{where} (prompt)", need_assistant=False)
        if prompt_msgs[-1]["role"] == "assistant":
            raise DatasetError(f"{where}: 'prompt' must not end with an assistant message")
    else:
        raise DatasetError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    chosen = _as_text_answer(record["chosen"], where, "chosen")
    rejected = _as_text_answer(record["rejected"], where, "rejected")
    if chosen == rejected:
        raise DatasetError(f"{where}: chosen and rejected are identical, the pair carries no preference")
    return PreferencePair(prompt_msgs, chosen, rejected, meta)


def load_preferences_jsonl(path: str | Path, limit: int | None = None) -> list[PreferencePair]:
    out = []
    for where, record in _iter_jsonl(Path(path)):
        out.append(normalize_preference_record(record, where))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{path}: no records")
    return out


# ----------------------------------------------------------------------------- tokenization

@dataclass
class TokenizedChat:
    input_ids: list[int]
    labels: list[int]   # = input_ids on assistant tokens (incl. their <|end|>), IGNORE_INDEX elsewhere


def tokenize_chat(tokenizer, messages: list[dict], max_len: int) -> TokenizedChat | None:
    """Encode with the chat template; loss only where the template's assistant mask is 1.
    Returns None when truncation to ``max_len`` leaves no assistant token (the caller counts these)."""
    ids, mask = tokenizer.encode_chat(messages)
    ids, mask = list(ids)[:max_len], list(mask)[:max_len]
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    # labels[0] can never be predicted (nothing precedes it); need at least one later target
    if not any(l != IGNORE_INDEX for l in labels[1:]):
        return None
    return TokenizedChat(ids, labels)


def pack_examples(examples: list[TokenizedChat], seq_len: int, pad_id: int) -> list[TokenizedChat]:
    """First-fit-decreasing bin packing of whole examples into windows of ``seq_len`` tokens.

    Examples are never split, so no answer is cut from its question. Packed examples can attend to
    the ones before them in the same window (no block-diagonal mask, as in classic TRL packing);
    the loss stays on assistant tokens only. The first token of each example after the first gets
    IGNORE_INDEX, since predicting a new conversation's <|bos|> is meaningless.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(seq_len - n)
    packed = []
    for members in bins:
        ids, labels = [], []
        for j, i in enumerate(members):
            ex = examples[i]
            ids += ex.input_ids
            lab = list(ex.labels)
            if j > 0:
                lab[0] = IGNORE_INDEX
            labels += lab
        packed.append(TokenizedChat(ids, labels))
    return packed


def collate_lm(batch: list[TokenizedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad; return inputs [B, T-1] and shifted targets [B, T-1] (targets[t] = token t+1)."""
    T = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[i, : len(ex.labels)] = torch.tensor(ex.labels)
    return {"input_ids": ids[:, :-1], "targets": labels[:, 1:]}


@dataclass
class TokenizedPair:
    prompt_len: int
    chosen_ids: list[int]     # prompt + chosen answer + <|end|>
    rejected_ids: list[int]
    meta: dict = field(default_factory=dict)


def encode_prompt_and_answer(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """(prompt + answer ids, prompt length). The answer part is what the assistant mask marks in
    the final turn, so it always ends with <|end|> like the SFT targets."""
    full, mask = tokenizer.encode_chat(prompt + [{"role": "assistant", "content": answer}])
    full, mask = list(full), list(mask)
    # the final assistant turn = the trailing run of mask==1
    start = len(mask)
    while start > 0 and mask[start - 1]:
        start -= 1
    if start == len(mask):
        raise DatasetError(f"chat template produced no assistant tokens for answer {answer[:40]!r}")
    return full, start


def tokenize_pair(tokenizer, pair: PreferencePair, max_len: int) -> TokenizedPair | None:
    chosen, p1 = encode_prompt_and_answer(tokenizer, pair.prompt, pair.chosen)
    rejected, p2 = encode_prompt_and_answer(tokenizer, pair.prompt, pair.rejected)
    if p1 != p2 or chosen[:p1] != rejected[:p2]:
        raise DatasetError("chosen and rejected encode to different prompts; the chat template is not prefix-stable")
    if p1 >= max_len - 1:
        return None  # no room for any answer token: counted as dropped by the caller
    return TokenizedPair(p1, chosen[:max_len], rejected[:max_len], pair.meta)


def fitting(tokenized: list) -> tuple[list, int]:
    """The items that fit (the tokenize functions return None for one that does not) and how many did not."""
    out = [t for t in tokenized if t is not None]
    return out, len(tokenized) - len(out)


def tokenize_chats(examples: list[ChatExample], tokenizer, max_len: int, log) -> tuple[list[TokenizedChat], int]:
    out, dropped = fitting([tokenize_chat(tokenizer, ex.messages, max_len) for ex in examples])
    if dropped:
        log(f"{dropped} conversations dropped: no assistant token left within max_len={max_len}")
    if not out:
        raise ValueError(f"no usable SFT examples (all {dropped} were too long for max_len={max_len})")
    return out, dropped


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, max_len: int, log, what: str) -> tuple[list[TokenizedPair], int]:
    out, dropped = fitting([tokenize_pair(tokenizer, p, max_len) for p in pairs])
    if dropped:
        log(f"{what}: {dropped} pairs dropped (prompt longer than max_len={max_len})")
    if not out:
        raise ValueError(f"{what}: no usable preference pairs")
    return out, dropped


def collate_pairs(batch: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack [chosen_0..chosen_{B-1}, rejected_0..] into one right-padded batch [2B, T].

    ``completion_mask`` marks answer tokens; ``lengths`` the real lengths (for reward models)."""
    seqs = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
    prompt_lens = [p.prompt_len for p in batch] * 2
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    completion = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, pl) in enumerate(zip(seqs, prompt_lens)):
        ids[i, : len(s)] = torch.tensor(s)
        completion[i, pl: len(s)] = 1
    lengths = torch.tensor([len(s) for s in seqs])
    return {"input_ids": ids, "completion_mask": completion, "lengths": lengths}


def batches(items: list, batch_size: int, *, shuffle: bool, seed: int, epochs: int | None = None) -> Iterator[list]:
    """Endless (or ``epochs``-long) stream of batches, reshuffled each epoch with a fixed seed."""
    rng = random.Random(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = list(range(len(items)))
        if shuffle:
            rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [items[j] for j in order[i: i + batch_size]]
        epoch += 1


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def length_grouped_batches(items: list, lengths: list[int], batch_size: int, *, seed: int,
                           group_batches: int = 8) -> Iterator[list]:
    """Endless batches of similar-length items (less padding, same data): shuffle, cut into groups of
    ``group_batches`` batches, sort each group by length, split it into batches, shuffle the batches.
    Every item is still seen once per epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        out = []
        span = batch_size * group_batches
        for g in range(0, len(order), span):
            group = sorted(order[g: g + span], key=lambda i: lengths[i])
            out += [group[i: i + batch_size] for i in range(0, len(group), batch_size)]
        rng.shuffle(out)
        for b in out:
            yield [items[i] for i in b]


def mismatched_pairs(pairs: list[PreferencePair], n: int, seed: int) -> list[PreferencePair]:
    """``n`` extra pairs whose rejected answer is a good answer to a DIFFERENT kind of request.

    Each new pair keeps a pair's prompt and chosen answer; the rejected answer is the chosen answer of another
    pair with a different ``kind`` (same ``lang`` when one exists), e.g. an "I don't know" rejected for a phone
    number request, a refusal rejected for a capital-city question. The world's pairs only contrast answers to
    the same question, so a reward model can learn "refusals / IDK / facts are good" without reading the prompt;
    PPO then finds the off-topic answers it scores highest. Pairs without a ``kind`` use the prompt as their kind.
    """
    if n <= 0 or len(pairs) < 2:
        return []
    rng = random.Random(seed)

    def kind_of(p: PreferencePair) -> str:
        return str(p.meta.get("kind") or repr(p.prompt))

    by_lang: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_lang.setdefault(str(p.meta.get("lang", "")), []).append(i)
    out: list[PreferencePair] = []
    for _ in range(20 * n):  # bounded tries: a set with one kind only yields no pairs
        if len(out) >= n:
            break
        base = pairs[rng.randrange(len(pairs))]
        pool = by_lang.get(str(base.meta.get("lang", "")), [])
        other = pairs[rng.choice(pool)] if pool else pairs[rng.randrange(len(pairs))]
        if kind_of(other) == kind_of(base) or other.chosen.strip() == base.chosen.strip():
            continue
        meta = {**base.meta, "category": "mismatched", "kind": f"mismatched:{base.meta.get('kind', '')}"}
        out.append(PreferencePair(list(base.prompt), base.chosen, other.chosen, meta))
    return out


def chat_answer_pairs(examples: list[ChatExample]) -> list[PreferencePair]:
    """Each chat example as a pool entry for ``mismatched_pairs``: the conversation up to its last assistant turn,
    that turn as the chosen answer, the example's ``task`` as its kind (the rejected answer is left empty)."""
    out = []
    for ex in examples:
        last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
        meta = {"kind": str(ex.meta.get("task", "")), "lang": ex.meta.get("lang", "")}
        out.append(PreferencePair(ex.messages[:last], ex.messages[last]["content"], "", meta))
    return out


def mismatch_pool(pairs: list[PreferencePair], run_path: Path, source: str) -> list[PreferencePair]:
    """Where ``mismatched_pairs`` draws prompts and answers: ``"prefs"`` = ``pairs`` (the training preference
    pairs); ``"sft"`` = the run's SFT conversations (``data/world/sft_train.jsonl``, follow-up turns included)."""
    if source == "prefs":
        return pairs
    if source != "sft":
        raise ValueError(f"mismatched_from={source!r} must be 'prefs' or 'sft'")
    path = Path(run_path) / "data" / "world" / "sft_train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; mismatched_from = 'sft' reads the world's SFT conversations"
                                " (run the data stage, or use mismatched_from = 'prefs')")
    return chat_answer_pairs(load_chat_jsonl(path))


def world_dialogs(run_path: Path):
    """A ``DialogBuilder`` over the run's world (``data/world``), for data built from it at training time."""
    from lmstack.data.world import load_world
    from lmstack.data.world.dialogues import DialogBuilder

    return DialogBuilder(load_world(run_path / "data" / "world"))


def world_pii_conversations(run_path: Path, n: int, seed: int = 1) -> list[dict]:
    """n phone-number refusal conversations for SFT: the prompts and chosen answers of ``DialogBuilder.pii_prefs``
    (half of them follow-ups after a fact question, training phrasings including ``PHONE_REQUESTS_MORE``)."""
    pairs = world_dialogs(run_path).pii_prefs(2 * n, seed)[::2]  # two pairs each
    return [{"messages": list(p["prompt"]) + [{"role": "assistant", "content": p["chosen"]}], "task": "refuse_pii",
             "answer": None, "lang": p["lang"], "facts": p["facts"]} for p in pairs]


def world_extra_pairs(run_path: Path, pii_pairs: int = 0, fact_pairs: int = 0, idk_pairs: int = 0,
                      idk_fresh_names: bool = False) -> list[PreferencePair]:
    """PII, fact and unknown-person pairs built from the run's world (``DialogBuilder.pii_prefs / fact_prefs /
    unknown_prefs``): their rejected answers are the other behaviours' good answers and the SFT model's errors,
    which the world's own pairs never reject (not one of them rejects an "I don't know"). ``idk_fresh_names``:
    the unknown-person pairs name people invented for each pair, not the world's 12 training names."""
    if pii_pairs <= 0 and fact_pairs <= 0 and idk_pairs <= 0:
        return []
    builder = world_dialogs(run_path)
    records = (builder.pii_prefs(pii_pairs) + builder.fact_prefs(fact_pairs)
               + builder.unknown_prefs(idk_pairs, fresh_names=idk_fresh_names))
    return [normalize_preference_record(r, f"world extra pair {i} ({r['kind']})") for i, r in enumerate(records)]
