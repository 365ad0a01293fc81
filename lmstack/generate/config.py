"""GenerationConfig: every knob of decoding in one typed dataclass.

Defaults are "plain greedy, nothing filtered": a processor whose parameter sits at its
neutral value (temperature 1, top_k 0, top_p 1, min_p 0, penalties 1/0) is not built at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from lmstack.config import ConfigError, config_from_dict

STRATEGIES = (
    "greedy",
    "sample",
    "beam",
    "contrastive_search",
    "contrastive_decoding",
    "best_of_n",
    "self_consistency",
    "speculative",
)


@dataclass
class GenerationConfig:
    # --- length and stopping
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # stop tokens are masked until this many tokens exist
    stop: list[str] = field(default_factory=list)  # stop strings; the text is cut before them
    stop_token_ids: Optional[list[int]] = None  # None = the tokenizer's <|eos|> and <|end|>
    ignore_eos: bool = False  # keep going through stop tokens (benchmarks)
    # --- strategy
    strategy: str = "greedy"
    seed: Optional[int] = None  # sampling seed; None = fresh entropy
    # --- logits processors (applied in the order below, see processors.build_processors)
    repetition_penalty: float = 1.0  # CTRL / HF: >1 discourages tokens already in prompt+output
    presence_penalty: float = 0.0  # OpenAI: -= p if the token occurs in the output so far
    frequency_penalty: float = 0.0  # OpenAI: -= f * count of the token in the output so far
    no_repeat_ngram_size: int = 0  # 0 = off; n = never repeat an n-gram (HF semantics)
    bad_words: list[str] = field(default_factory=list)  # strings that must never be generated
    bad_words_ids: list[list[int]] = field(default_factory=list)  # same, as token sequences
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    # --- beam search (HF semantics)
    num_beams: int = 4
    length_penalty: float = 1.0  # finished score = sum log p / generated_len ** length_penalty
    early_stopping: Union[bool, str] = False  # True | False | "never"
    num_return_sequences: int = 1  # n-best returned by beam search
    # --- contrastive search (Su et al. 2022)
    penalty_alpha: float = 0.6
    contrastive_k: int = 4
    # --- contrastive decoding (Li et al. 2022)
    cd_alpha: float = 0.1  # plausibility: keep tokens with p_expert >= alpha * max p_expert
    amateur_temperature: float = 1.0
    # --- best-of-n / self-consistency
    n: int = 4
    # --- speculative decoding (Leviathan et al. 2023, Chen et al. 2023)
    num_draft_tokens: int = 4
    # --- outputs
    logprobs: bool = False  # return the log-prob of every generated token (raw model distribution)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"GenerationConfig: {msg}")

        if self.strategy not in STRATEGIES:
            bad(f"strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if self.max_new_tokens < 0:
            bad(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            bad(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.temperature < 0:
            bad(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            bad(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            bad(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            bad(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            bad(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.num_beams < 1:
            bad(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            bad(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            bad(f"num_return_sequences ({self.num_return_sequences}) must be <= num_beams ({self.num_beams})")
        if self.early_stopping not in (True, False, "never"):
            bad(f"early_stopping must be true, false or 'never', got {self.early_stopping!r}")
        if not 0.0 <= self.penalty_alpha <= 1.0:
            bad(f"penalty_alpha must be in [0, 1], got {self.penalty_alpha}")
        if self.contrastive_k < 1:
            bad(f"contrastive_k must be >= 1, got {self.contrastive_k}")
        if not 0.0 <= self.cd_alpha <= 1.0:
            bad(f"cd_alpha must be in [0, 1], got {self.cd_alpha}")
        if self.amateur_temperature <= 0:
            bad(f"amateur_temperature must be > 0, got {self.amateur_temperature}")
        if self.n < 1:
            bad(f"n must be >= 1, got {self.n}")
        if self.num_draft_tokens < 1:
            bad(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            bad("stop strings must be non-empty")

    @property
    def do_sample(self) -> bool:
        """Whether the next token is drawn at random. Temperature 0 turns every sampling strategy greedy."""
        if self.strategy in ("sample", "best_of_n", "self_consistency", "speculative"):
            return self.temperature > 0
        return False

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict, where: str = "generate") -> "GenerationConfig":
        return config_from_dict(cls, data, where)

    def sampling_key(self) -> tuple:
        """Fields that decide how one step's logits turn into a token (rows with equal keys share one pass)."""
        return (
            self.strategy,
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
            self.no_repeat_ngram_size,
            tuple(self.bad_words),
            tuple(tuple(b) for b in self.bad_words_ids),
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.min_new_tokens,
        )


def set_field(cfg: GenerationConfig, key: str, raw: str) -> GenerationConfig:
    """Return a copy of ``cfg`` with ``key`` parsed from text (``/set top_p=0.9`` in the chat CLI)."""
    import tomllib

    names = {f.name for f in dataclasses.fields(cfg)}
    if key not in names:
        raise ConfigError(f"unknown setting {key!r}; valid settings are: {', '.join(sorted(names))}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words such as `sample` or `never`
    if key == "stop" and isinstance(value, str):
        value = [value]
    data = dataclasses.asdict(cfg)
    data[key] = value
    return config_from_dict(GenerationConfig, data, "settings")
