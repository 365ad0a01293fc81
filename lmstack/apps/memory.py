"""Conversation memory for a model with a short context: recent turns verbatim, older turns summarised and
retrievable.

When the conversation no longer fits ``budget`` tokens, the oldest turns are evicted into long-term memory.
``messages_for(query)`` then builds the prompt from: the system message, one system note with a summary of
the evicted turns, the evicted turns most relevant to the new query (BM25 over them), and as many recent
turns as fit. The summariser is pluggable (a model call); the default is extractive: the first sentence of
each evicted turn, eliding the middle when it grows too long.
"""

from __future__ import annotations

from typing import Callable, Sequence

from lmstack.apps.bm25 import BM25, search_tokens
from lmstack.data.text import split_sentences


def extractive_summary(turns: Sequence[dict], max_chars: int = 300) -> str:
    parts = []
    for t in turns:
        first = (split_sentences(t["content"]) or [""])[0]
        parts.append(f"{t['role']}: {first}")
    text = " | ".join(parts)
    if len(text) <= max_chars:
        return text
    # the opening turns usually set the topic and the latest lead into the present: keep both ends
    half = (max_chars - 3) // 2
    return text[:half] + " … " + text[-half:]


class ConversationMemory:
    def __init__(self, count_tokens: Callable[[list[dict]], int], budget: int, system: str | None = None,
                 summarize: Callable[[Sequence[dict]], str] = extractive_summary, recall_k: int = 2):
        if budget <= 0:
            raise ValueError(f"memory budget must be > 0 tokens, got {budget}")
        self.count_tokens, self.budget, self.summarize, self.recall_k = count_tokens, budget, summarize, recall_k
        self.system = [{"role": "system", "content": system}] if system else []
        self.recent: list[dict] = []
        self.evicted: list[dict] = []
        self.summary = ""

    def add(self, role: str, content: str) -> None:
        self.recent.append({"role": role, "content": content})
        # keep at least the newest turn; evict whole user/assistant turns from the front
        while len(self.recent) > 1 and self.count_tokens(self.system + self._notes() + self.recent) > self.budget:
            self.evicted.append(self.recent.pop(0))
            self.summary = self.summarize(self.evicted)

    def _notes(self, recalled: Sequence[dict] = (), summary_chars: int | None = None) -> list[dict]:
        if not self.evicted:
            return []
        summary = self.summary
        if summary_chars is not None and len(summary) > summary_chars:
            summary = "…" + summary[len(summary) - summary_chars:] if summary_chars else ""
        text = f"Earlier in this conversation: {summary}"
        if recalled:
            text += "\nRelevant earlier turns:\n" + "\n".join(f"{t['role']}: {t['content']}" for t in recalled)
        return [{"role": "system", "content": text}]

    def recall(self, query: str) -> list[dict]:
        if not self.evicted:
            return []
        index = BM25()
        index.add(search_tokens(t["content"]) for t in self.evicted)
        return [self.evicted[i] for i, _ in sorted(index.top_k(search_tokens(query), self.recall_k))]

    def messages_for(self, query: str) -> list[dict]:
        """The prompt for answering ``query`` (not yet added) within the budget. What gives way first: the
        oldest recent turns, then the summary (shortened, then dropped), then recalled turns."""
        question = [{"role": "user", "content": query}]
        recalled = self.recall(query)
        options = [(recalled[:n], chars) for n in range(len(recalled), -1, -1) for chars in (None, 200, 100, 50, 0)]
        options.append(None)
        for option in options:
            notes = self._notes(*option) if option is not None else []
            recent = list(self.recent)
            while recent and self.count_tokens(self.system + notes + recent + question) > self.budget:
                recent.pop(0)
            if self.count_tokens(self.system + notes + recent + question) <= self.budget:
                return self.system + notes + recent + question
        return self.system + question  # the question alone is over budget: the caller's model must cope
