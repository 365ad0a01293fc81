"""`lmstack chat RUN_OR_CHECKPOINT` and `lmstack generate CKPT --prompt ...`.

A run directory resolves to its most aligned checkpoint (ppo, dpo, sft, then pretrain) and its
tokenizer (RUN/tokenizer/tokenizer.json); a checkpoint directory needs a tokenizer.json next to
it or in the run it belongs to (CKPT/../../tokenizer/tokenizer.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional, TextIO

import torch

from lmstack.config import ConfigError
from lmstack.model.io import CheckpointError

from .config import STRATEGIES, GenerationConfig, set_field
from .engine import Engine
from .sequence import chat_prompt_ids, model_max_len

STAGE_PREFERENCE = ("ppo", "dpo", "sft", "pretrain")
STREAMABLE = ("greedy", "sample")


def rate_summary(n_tokens: int, t_start: float, t_first: float | None, t_end: float) -> str:
    """Time to first token and the decode rate after it, reported apart: a short answer's overall
    rate is dominated by the prompt's prefill and would look many times slower than decoding is."""
    if not n_tokens or t_first is None:
        return f"{n_tokens} tokens in {t_end - t_start:.2f} s"
    text = f"{n_tokens} tokens, first after {t_first - t_start:.2f} s"
    if n_tokens > 1 and t_end > t_first:
        text += f", then {(n_tokens - 1) / (t_end - t_first):.1f} tok/s"
    return text


def resolve_checkpoint(path: str | Path, stage: Optional[str] = None) -> tuple[Path, Path]:
    """(checkpoint dir, tokenizer.json) for a run directory or a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        ckpt = path
        candidates = [path / "tokenizer.json", path / "tokenizer" / "tokenizer.json",
                      path.parent.parent / "tokenizer" / "tokenizer.json"]
    elif (path / "checkpoints").is_dir():
        order = (stage,) if stage else STAGE_PREFERENCE
        found = [path / "checkpoints" / s for s in order if (path / "checkpoints" / s / "model.safetensors").exists()]
        if not found:
            present = sorted(p.name for p in (path / "checkpoints").iterdir() if p.is_dir())
            want = f"stage {stage!r}" if stage else f"any of {', '.join(STAGE_PREFERENCE)}"
            raise CheckpointError(f"{path}/checkpoints: no model.safetensors for {want} (present: {present or 'none'}); "
                                  "run the pipeline first (lmstack run) or pass a checkpoint directory")
        ckpt = found[0]
        candidates = [ckpt / "tokenizer.json", path / "tokenizer" / "tokenizer.json"]
    else:
        raise CheckpointError(f"{path}: neither a run directory (with checkpoints/) nor a checkpoint directory "
                              "(with config.json and model.safetensors)")
    for c in candidates:
        if c.exists():
            return ckpt, c
    raise CheckpointError(f"{ckpt}: no tokenizer found; looked at {', '.join(str(c) for c in candidates)}")


def load_engine(path: str, stage: Optional[str] = None, device: str = "cpu", cfg: Optional[GenerationConfig] = None,
                draft: Optional[str] = None, amateur: Optional[str] = None) -> tuple[Engine, Path]:
    from lmstack.model import load_pretrained
    from lmstack.tokenizer import Tokenizer

    ckpt, tok_path = resolve_checkpoint(path, stage)
    model = load_pretrained(ckpt, device=device).eval()
    tokenizer = Tokenizer.load(tok_path)
    draft_model = load_pretrained(resolve_checkpoint(draft)[0], device=device).eval() if draft else None
    amateur_model = load_pretrained(resolve_checkpoint(amateur)[0], device=device).eval() if amateur else None
    if model.config.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{ckpt}: model vocab {model.config.vocab_size} < tokenizer vocab {tokenizer.vocab_size} "
                              f"({tok_path}); they do not belong together")
    return Engine(model, tokenizer, cfg, draft_model=draft_model, amateur_model=amateur_model), ckpt


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("path", help="run directory (runs/NAME) or checkpoint directory")
    p.add_argument("--stage", help="which checkpoint of a run, e.g. reason or apps (default: the first present of "
                                    + ", ".join(STAGE_PREFERENCE) + ")")
    p.add_argument("--strategy", choices=STRATEGIES, help="decoding strategy")
    p.add_argument("--max-new-tokens", type=int, help="most tokens per answer")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any GenerationConfig field, e.g. --set repetition_penalty=1.2 (repeatable)")
    p.add_argument("--draft", help="draft checkpoint for --strategy speculative")
    p.add_argument("--amateur", help="amateur checkpoint for --strategy contrastive_decoding")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def _config_from_args(args, base: GenerationConfig) -> GenerationConfig:
    cfg = base
    for key, val in (("strategy", args.strategy), ("max_new_tokens", args.max_new_tokens),
                     ("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                     ("seed", args.seed)):
        if val is not None:
            cfg = cfg.replace(**{key: val})
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set top_p=0.9")
        k, v = item.split("=", 1)
        cfg = set_field(cfg, k.strip(), v.strip())
    return cfg


HELP = """commands:
  /strategy NAME      greedy | sample | beam | contrastive_search | contrastive_decoding | best_of_n | self_consistency | speculative
  /set KEY=VALUE      change a setting, e.g. /set temperature=0.7  /set top_p=0.9  /set stop=["\\n\\n"]
  /settings           show the current settings
  /system TEXT        set the system message (and reset the conversation)
  /reset              forget the conversation
  /help               this text
  /quit               leave (or Ctrl-D)"""


class ChatSession:
    """The chat loop, separate from argv/stdin so it can be driven by tests or other front ends."""

    def __init__(self, engine: Engine, out: TextIO, err: TextIO, system: Optional[str] = None, gate=None):
        self.engine = engine
        self.out = out
        self.err = err
        self.system = system
        self.gate = gate  # lmstack.align.familiarity.FamiliarityGate: "I don't know." for names the model never read
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def command(self, line: str) -> bool:
        """Handle a slash command; False means quit."""
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            print(HELP, file=self.out)
        elif name == "reset":
            self.reset()
            print("(conversation cleared)", file=self.out)
        elif name == "settings":
            for f in dataclasses.fields(self.engine.cfg):
                print(f"  {f.name} = {getattr(self.engine.cfg, f.name)!r}", file=self.out)
        elif name == "strategy":
            self._set("strategy", rest)
        elif name == "set":
            if "=" not in rest:
                print("usage: /set KEY=VALUE (see /settings for the keys)", file=self.out)
            else:
                k, v = rest.split("=", 1)
                self._set(k.strip(), v.strip())
        elif name == "system":
            self.system = rest or None
            self.reset()
            print("(system message set, conversation cleared)", file=self.out)
        else:
            print(f"unknown command /{name}; type /help", file=self.out)
        return True

    def _set(self, key: str, value: str) -> None:
        try:
            new = set_field(self.engine.cfg, key, value)
        except (ConfigError, ValueError) as e:
            print(f"error: {e}", file=self.out)
            return
        if new.strategy == "speculative" and self.engine.draft_model is None:
            print("error: strategy 'speculative' needs a draft model (start with --draft CKPT)", file=self.out)
            return
        if new.strategy == "contrastive_decoding" and self.engine.amateur_model is None:
            print("error: strategy 'contrastive_decoding' needs an amateur model (start with --amateur CKPT)", file=self.out)
            return
        self.engine.cfg = new
        print(f"  {key} = {getattr(new, key)!r}", file=self.out)

    def _fit_context(self) -> list[int]:
        """Prompt ids; drop the oldest turns (keeping the system message) when the context is full."""
        limit = model_max_len(self.engine.model)
        while True:
            ids = chat_prompt_ids(self.engine.tokenizer, self.messages)
            if limit is None or len(ids) + min(self.engine.cfg.max_new_tokens, limit // 2) <= limit:
                return ids
            first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                return ids  # a single message too long: let generate() explain
            del self.messages[first:first + 2]
            print("(context full: dropped the oldest turn)", file=self.err)

    def reply(self, user_text: str) -> str:
        self.messages.append({"role": "user", "content": user_text})
        ids = self._fit_context()
        cfg = self.engine.cfg
        if self.gate is not None:
            stop, surprise, name = self.gate.check(self.engine.model, self.engine.tokenizer, [self.messages])[0]
            if stop:
                text = self.gate.reply(self.messages)
                print(text, file=self.out)
                print(f"[unknown-entity gate: {name!r} surprises the model by {surprise:.1f} nats "
                      f"> {self.gate.threshold:.1f}; the model was not asked]", file=self.err)
                self.err.flush()
                self.messages.append({"role": "assistant", "content": text})
                return text
        t0, t_first = time.perf_counter(), None
        n_tokens, finish = 0, "length"
        if cfg.strategy in STREAMABLE:
            parts = []
            for chunk in self.engine.stream([ids]):
                if chunk.token_id is not None:
                    n_tokens += 1
                    t_first = t_first or time.perf_counter()
                if chunk.text:
                    parts.append(chunk.text)
                    self.out.write(chunk.text)
                    self.out.flush()
                if chunk.finish_reason:
                    finish = chunk.finish_reason
            text = "".join(parts)
        else:
            gen = self.engine.generate([ids])[0]
            text, n_tokens, finish = gen.text, len(gen.token_ids), gen.finish_reason
            self.out.write(text)
        self.out.write("\n")
        print(f"[{rate_summary(n_tokens, t0, t_first, time.perf_counter())}, {cfg.strategy}, finish={finish}]",
              file=self.err)
        self.err.flush()
        self.messages.append({"role": "assistant", "content": text})
        return text


def chat_main(argv: list[str]) -> int:
    p = _base_parser("lmstack chat", "Multi-turn chat with a trained model; type /help for commands.")
    p.add_argument("--system", help="system message")
    p.add_argument("--image", help="a picture to ask about: PATH is then an `lmstack multimodal` output directory")
    p.add_argument("--gate", choices=("auto", "off"), default="auto",
                   help="the unknown-entity gate saved beside the checkpoint (familiarity/): auto = use it when present")
    args = p.parse_args(argv)
    if args.image:
        from lmstack.multimodal.cli import image_chat
        return image_chat(args.path, args.image, args.max_new_tokens or 32)
    try:
        cfg = _config_from_args(args, GenerationConfig(strategy="sample", temperature=0.7, top_p=0.9, max_new_tokens=256))
        engine, ckpt = load_engine(args.path, args.stage, args.device, cfg, args.draft, args.amateur)
        gate = None
        if args.gate == "auto":
            from lmstack.align.familiarity import FamiliarityGate
            gate = FamiliarityGate.beside(ckpt)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"lmstack chat: {e}", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty()
    session = ChatSession(engine, sys.stdout, sys.stderr, args.system, gate)
    print(f"lmstack chat: {ckpt} ({engine.model.num_params() / 1e6:.2f}M params, strategy {cfg.strategy}"
          f"{', unknown-entity gate' if gate else ''}); /help for commands, /quit to leave", file=sys.stderr)
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                print(file=sys.stdout)
                return 0
        else:
            raw = sys.stdin.readline()
            if not raw:
                return 0
            line = raw.rstrip("\n")
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        if not interactive:
            print(f"you> {line}", file=sys.stdout)
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        try:
            session.reply(line)
        except ValueError as e:
            session.messages.pop()
            print(f"\nerror: {e}", file=sys.stdout)
        except KeyboardInterrupt:
            session.messages.pop()
            print("\n(interrupted)", file=sys.stdout)


def generate_main(argv: list[str]) -> int:
    p = _base_parser("lmstack generate", "Complete text prompts with a trained model.")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable); default: read stdin")
    p.add_argument("--stream", action="store_true", help="print tokens as they come (greedy/sample, one prompt at a time)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    args = p.parse_args(argv)
    try:
        cfg = _config_from_args(args, GenerationConfig(max_new_tokens=128))
        engine, _ckpt = load_engine(args.path, args.stage, args.device, cfg, args.draft, args.amateur)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"lmstack generate: {e}", file=sys.stderr)
        return 2
    prompts = args.prompt or [sys.stdin.read()]
    try:
        if args.stream and not args.json and cfg.strategy in STREAMABLE:
            for prompt in prompts:
                t0, t_first, n = time.perf_counter(), None, 0
                sys.stdout.write(prompt)
                for chunk in engine.stream(prompt):
                    if chunk.token_id is not None:
                        n += 1
                        t_first = t_first or time.perf_counter()
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                print(f"[{rate_summary(n, t0, t_first, time.perf_counter())}]", file=sys.stderr)
            return 0
        gens = engine.generate(prompts)
    except ValueError as e:
        print(f"lmstack generate: {e}", file=sys.stderr)
        return 2
    for prompt, g in zip(prompts, gens):
        if args.json:
            row = {"prompt": prompt, "text": g.text, "finish_reason": g.finish_reason,
                   "tokens": len(g.token_ids), "score": g.score}
            if len(g.extra.get("beams", [])) > 1:
                row["beams"] = [{"text": b.text, "score": b.score} for b in g.extra["beams"]]
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(prompt + g.text)
    return 0
