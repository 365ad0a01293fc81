"""ELMo in small: train a bidirectional LSTM LM (lmstack family "bilstm") on the world's pretraining
documents, then probe which relation a sentence states (birthplace, occupation, capital, ...) from
its static token embeddings and from its contextual biLSTM features, on held-out sentence templates.
An untrained biLSTM is probed too, as the control for "the probe itself learned it".

    .venv/bin/python benchmarks/elmo_probe.py [--quick] [--steps 1500]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lmstack.data.world import WorldConfig, build_world
from lmstack.eval.probe import elmo_relation_probe
from lmstack.machine import run_benchmark
from lmstack.model import ModelConfig, build_model
from lmstack.tokenizer import SPECIAL_TOKENS, train_tokenizer
from lmstack.train.optim import OptimConfig
from lmstack.train.schedule import ScheduleConfig
from lmstack.train.trainer import TrainConfig, Trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps: proves the pipeline runs")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.vocab = 10, 64, 512
    world = build_world(WorldConfig(), 0)
    texts = [d["text"] for d in world.docs]
    tok = train_tokenizer(texts, args.vocab, special_tokens=list(SPECIAL_TOKENS), progress=False)
    stream = np.concatenate([np.array([tok.bos_id] + list(tok.encode(t)), dtype=np.int64) for t in texts])
    cfg = ModelConfig.preset("bilstm", vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=2)
    torch.manual_seed(0)
    untrained = build_model(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    train_cfg = TrainConfig(steps=args.steps, batch_size=16, seq_len=128, loader="random", eval_every=0,
                            ckpt_every=0, log_every=max(1, args.steps // 10), dtype="fp32", grad_clip=1.0,
                            optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                            schedule=ScheduleConfig(kind="cosine", warmup_steps=max(1, args.steps // 20)))
    summary = Trainer(model, train_cfg, train_tokens=stream, bos_id=tok.bos_id, device=args.device,
                      log=lambda m: None).train()
    rows = {"untrained biLSTM": elmo_relation_probe(untrained.to(args.device), tok, world, device=args.device),
            "trained biLSTM": elmo_relation_probe(model, tok, world, device=args.device)}
    first = next(iter(rows.values()))
    print(f"\nbiLSTM LM: {model.num_params():,} parameters, {args.steps} steps, final loss "
          f"{summary.final_loss:.3f} (mean of both directions)")
    print(f"probe: {len(first['relations'])} relations, {first['n_train']} train / {first['n_test']} test "
          f"sentences (held-out templates), majority-class accuracy {first['chance']:.3f}\n")
    print("| features | static (layer 0) | contextual (top biLSTM layer) | ELMo (layer 0 + top layer) |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['static']:.3f} | {r['contextual']:.3f} | {r['elmo']:.3f} |")
    trained = rows["trained biLSTM"]
    print(f"result: probe_static={trained['static']:.3f}")
    print(f"result: probe_contextual={trained['contextual']:.3f}")
    print(f"result: probe_elmo={trained['elmo']:.3f}")
    print(f"result: probe_contextual_untrained={rows['untrained biLSTM']['contextual']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_benchmark(main))
