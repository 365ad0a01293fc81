"""Stage ``apps``: build the knowledge graph and the document store of the run's world, train a dense
retriever, fine-tune the chat model on RAG and tool-use data, and measure it against the model alone.

Held out from everything this stage trains on: the world's ``sft_only`` people (never in pretraining text, but
taught by the ``sft`` stage's conversations, so the chat model knows many of their facts; never in the RAG /
agent / retriever training data here), ``n_fictional_heldout`` invented people (in no training data at all:
the measure of facts the model never saw) and the EVAL phrasings of questions. Artifacts::

    apps/kg.json                   triples (+ entity groups)
    apps/index/                    store.json + vectors.safetensors: entity passages, BM25 + dense
    apps/sft_train.jsonl           RAG + agent + replayed chat conversations
    checkpoints/dense/             the bi-encoder (model.safetensors, config.json, dense.json)
    checkpoints/apps/              the fine-tuned chat model
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.align import common
from lmstack.apps import evaluate as E
from lmstack.apps.agent import ModelPolicy, ReActAgent
from lmstack.apps.agent_data import PlanPolicy, agent_sft_examples, arithmetic_questions, plan_for
from lmstack.apps.copying import CopyConfig, CopyLoss, copy_warmup, page_copy_loss, repeat_loss
from lmstack.apps.dense import DenseConfig, DenseEncoder, train_dense
from lmstack.apps.extraction import evaluate_extraction, extraction_sft_examples
from lmstack.apps.kg import KnowledgeGraph, kg_from_world_json
from lmstack.apps.rag import RagPipeline, calibrate_min_score, rag_sft_examples
from lmstack.apps.rerank import CrossEncoder, RerankConfig, train_reranker
from lmstack.apps.store import DocumentStore, StoreConfig
from lmstack.apps.synthetic import augmented_graph, copy_chat_examples, extra_fact_questions, world_train_phrasings
from lmstack.apps.tools import ToolBox, calculator_tool, date_tool, kg_tools, search_tool
from lmstack.apps.worldqa import (answer_clause, entity_passages, fact_questions, multihop_questions,
                                   no_answer_clause)
from lmstack.report import markdown_table, table_cell
from lmstack.runs import atomic_write_text

HELD_OUT_GROUP = "sft_only"


@dataclass
class Config:
    init_from: str = "sft"          # chat checkpoint to fine-tune (the dense retriever starts from pretrain)
    k: int = 1                      # passages per RAG prompt. 1: BM25 recall@1 is 1.00 on the world's questions
                                    # and the invented people's, and one passage took RAG on never-seen people
                                    # 0.12 -> 0.45 (k=3 -> 1, quote answers, lr 1.5e-3; notes r2s5/apps.md)
    retrieval_mode: str = "hybrid"  # bm25 | dense | hybrid (dense and hybrid need dense_steps > 0)
    # one BM25 hard negative per question (DPR). r2s9, seed 7, the support (question-passage cosine) of the best
    # passage with the gold one in the store vs removed, AUROC on the held-out invented people: 0.914 without,
    # 0.920 with, 0.997 with dense_fictional too (0.987 with two negatives)
    dense: DenseConfig = field(default_factory=lambda: DenseConfig(steps=200, batch_size=32, lr=5e-4,
                                                                   hard_negatives=1))
    dense_fictional: bool = True    # the dense retriever also trains on the training invented people's questions
                                    # (6,208 pairs instead of 1,408): many more names to tell apart
    rag_cutoff: bool = True         # RAG answers "cannot find" when the question's dense similarity to the best
                                    # passage is below a threshold fitted on the training invented people
                                    # (rag.calibrate_min_score); the report shows the model with and without it.
                                    # r2s9, seeds 1337 / 7 (with the defaults here): never-seen RAG 0.84 / 0.89
                                    # through it (0.85 / 0.90 without), 'cannot find' 0.89 / 0.975 (0.48 / 0.36)
    rag_cutoff_keep: float = 0.95   # share of those answerable questions whose best passage the cut-off lets through
    rerank: RerankConfig = field(default_factory=RerankConfig)  # steps = 0: no cross-encoder reranker
    rag_rerank: bool = False        # RAG retrieves through the reranker (its recall is reported either way)
    copy: CopyConfig = field(default_factory=CopyConfig)  # copy warm-up before SFT (copying.py); off by default
    steps: int = 1200               # SFT steps on RAG + agent data. 600 -> 1200 (seeds 1337 / 7): arithmetic
                                    # agent 0.77 -> 0.93 / 0.75 -> 0.87, never-seen RAG 0.65 -> 0.65 / 0.67 -> 0.73,
                                    # multi-hop 0.50 -> 0.58 / 0.53 -> 0.55; twice the SFT time
    batch_size: int = 16
    lr: float = 3e-3                # 5e-4 underfit the RAG task (0.23 right on its own training examples);
                                    # never-seen RAG 0.45 / 0.65 / 0.57 at 1.5e-3 / 3e-3 / 6e-3, arithmetic
                                    # agent 0.65 / 0.77 / 0.83, closed-book 0.58 / 0.52 / 0.33 (k=1, quote);
                                    # 3e-3 on seed 7: never-seen RAG 0.67
    no_answer_rate: float = 0.1     # share of RAG examples whose passages lack the answer. 0.45 (world phrasings,
                                    # all 320 never-seen questions): 'cannot find' 0.52 -> 0.66 but RAG 0.81 -> 0.68.
                                    # r2s9, 0.3 -> 0.1 once the score cut-off says 'cannot find' (seeds 1337 / 7):
                                    # the model refuses with the gold passage 0.21 -> 0.09 / 0.05, RAG on never-seen
                                    # people 0.74 -> 0.87 / 0.87
    rag_answer: str = "quote"       # RAG SFT targets: value ("teacher [1]") | quote ("X works as a teacher [1]").
                                    # quote vs value (k=1, lr 3e-3): never-seen RAG 0.65 vs 0.45, world 0.78 vs
                                    # 0.57, but 'cannot find' without the passage 0.43 vs 0.65: it answers more
    rag_no_answer: str = "plain"    # target when the passages lack the answer: plain ("I cannot find the answer in
                                    # the passages.") | subject ("Laura Foster is not in the passages.": opens like
                                    # the quoted answer, so the choice could fall after the copied name). subject
                                    # (apps phrasings, n=60): never-seen RAG 0.65 -> 0.52, refused with the gold
                                    # passage 0.20 -> 0.40, 'cannot find' 0.48 -> 0.42: it does not tell names apart
    rag_prompt: str = "passages_first"  # rag.LAYOUTS: passages_first | question_first (the passages can attend
                                        # to the asked name). question_first, world phrasings, all 320 never-seen
                                        # questions: RAG 0.81 -> 0.77, refused 0.18 -> 0.14, 'cannot find'
                                        # 0.52 -> 0.56: the threshold moves, telling names apart does not improve
    rag_paired: bool = False        # each 'cannot find' example with its answerable twin (same question, gold passage).
                                    # Off: with world phrasings and no_answer_rate 0.43 (so 30% of RAG examples
                                    # still refuse), 'cannot find' 0.50 -> 0.48, never-seen RAG 0.82 -> 0.83 (n=60)
    rag_phrasings: str = "world"    # RAG training questions: apps (worldqa's train forms + synthetic's extra ones)
                                    # | world (+ the world's own training forms, every held-out form left out).
                                    # apps -> world, never-seen RAG on all 320 eval questions: 0.68 -> 0.81
                                    # (seed 1337), 0.71 -> 0.74 (seed 7); 'cannot find' unchanged (~0.55)
    n_arith_train: int = 1200       # r2s6, 300 -> 900 (seeds 1337 / 7): arithmetic agent 0.95 -> 0.98 / 0.95 ->
                                    # 0.97, but never-seen RAG 0.75 -> 0.68 / 0.78 -> 0.73 (a larger share of the mix).
                                    # r2s8's SFT model (120 questions, seeds 1337 / 7), 300 / 600 / 900: arithmetic
                                    # 0.90, 0.78 / 0.92, 0.91 / 0.97, 0.98; never-seen RAG 0.73, 0.77 / 0.90, 0.76 /
                                    # 0.74, 0.70; 'cannot find' 0.56, 0.59 / 0.48, 0.54 / 0.48, 0.58; multi-hop 0.86,
                                    # 0.82 / 0.80, 0.88 / 0.86, 0.79. 900 meets the arithmetic goal on both seeds.
                                    # r2s9, with no_answer_rate 0.1, 900 -> 1200: arithmetic 0.94 / 0.975 ->
                                    # 0.99 / 0.975, never-seen RAG through the cut-off 0.86 / 0.86 -> 0.84 / 0.89
    n_fictional: int = 300          # invented people (synthetic.py) whose facts only the passages / tools hold
    n_fictional_heldout: int = 40   # more invented people, in no training data: RAG vs closed-book on them
    n_rag_train: int = 1200         # RAG examples (0 = every training question)
    n_multihop_train: int = 600     # multi-hop tool traces (0 = all)
    multihop_balance: bool = False  # as many traces of each multi-hop kind (rare kinds repeated): sample_multihop.
                                    # Off: multi-hop 0.50 -> 0.40 with it, its kg_find kinds still 0-1 of 28
    world_rag_share: float = 0.2    # share of RAG examples about world people (facts the model already knows)
    n_copy_chat: int = 0            # "repeat exactly: ..." chat turns in the SFT mix (800 did not help: notes)
    replay_fraction: float = 0.3    # world chat conversations mixed in (as a share of the new data)
    replay_batch_size: int = 0      # + LM loss on this many pretraining windows per SFT step (sft's replay)
    prompt_style: str = "minimal"   # agent system prompt: minimal | names | compact | json (minimal: 5 tokens,
                                    # names: 35, of a 256-token context that also keeps 96 free for the turn)
    spaced_args: bool = True        # agent traces write string tool arguments with a leading space (" nurse"):
                                    # a word copied from the question keeps its BPE token (" nurse", not "n"+"urse";
                                    # agent_data.spaced_strings). Off -> on (seeds 1337 / 7): multi-hop agent
                                    # 0.58 -> 0.70 / 0.55 -> 0.82 ("the chef from X": 2/13 -> 13/13, 0/12 -> 12/12),
                                    # arithmetic 0.93 -> 0.95 / 0.87 -> 0.90 (notes r2s6/agent.md)
    describe_find: bool = False     # kg_find's thought repeats the question's description of the person
                                    # ("Find the nurse from Falneholm.") instead of "Find the person." (plan_for).
                                    # Off: on top of the defaults, multi-hop 0.93 -> 0.82 / 0.92 -> 0.97 and
                                    # arithmetic 0.95 -> 0.92 / 0.95 -> 0.95 (seeds 1337 / 7): no clear gain
    view_context_loss: bool = False  # loss also on the earlier turns an agent trace view shows as context
                                    # (agent_data.inference_views). True taught turns right after the question
                                    # that need a cut observation ("Find its country." of a city never looked up):
                                    # True -> False (with spaced_args, seeds 1337 / 7): multi-hop 0.70 -> 0.93 /
                                    # 0.82 -> 0.92 ("the nurse who likes X": 3/15 -> 14/15, 5/15 -> 14/15),
                                    # arithmetic 0.95 -> 0.95 / 0.90 -> 0.95
    agent_max_steps: int = 6
    eval_examples: int = 120        # per measurement (0 = all); at 60 a rate near 0.9 has an SE of ~0.04
    max_new_tokens: int = 32        # RAG / closed-book answers
    agent_max_new_tokens: int = 96  # one ReAct turn (a thought and a JSON action)


def agent_tools(kg: KnowledgeGraph, store: DocumentStore) -> ToolBox:
    """The agent's tools, the same in training traces, measurements and ``lmstack agent``."""
    return ToolBox([calculator_tool(), date_tool()] + kg_tools(kg) + [search_tool(store, k_default=2)])


def heldout_fictional(kg: KnowledgeGraph, cfg: Config, seed: int) -> tuple[KnowledgeGraph, list[str]]:
    """The world's graph plus ``n_fictional_heldout`` invented people (ids ``h0000``...) drawn from their own
    seeded stream before the training ones, which are then named unlike them (``training_graph``): the
    measured people stay the same whatever ``n_fictional`` is. Returns (graph, held-out ids)."""
    if cfg.n_fictional_heldout <= 0:
        return kg, []
    held = augmented_graph(kg, cfg.n_fictional_heldout, f"heldout:{seed}", id_prefix="h")
    return held, sorted(set(held.entities_of_type("person")) - set(kg.entities_of_type("person")))


def training_graph(kg: KnowledgeGraph, cfg: Config, seed: int) -> KnowledgeGraph:
    """The world's graph plus the ``n_fictional`` invented people of the training data (none named like a
    held-out one)."""
    return augmented_graph(kg, cfg.n_fictional, seed, avoid=heldout_fictional(kg, cfg, seed)[0])


def _split_people(kg: KnowledgeGraph) -> tuple[set, set]:
    people = kg.entities_of_type("person")
    held = {p for p in people if kg.meta.get(p, {}).get("group") == HELD_OUT_GROUP}
    return set(people) - held, held


def _multihop_person(kg: KnowledgeGraph, q: dict) -> str:
    first = q["patterns"][0]
    if not first[0].startswith("?"):
        return first[0]
    return kg.query([tuple(p) for p in q["patterns"][:2]])[0]["?p"]


def sample_multihop(questions: list[dict], n: int, balance: bool, rng: random.Random) -> list[dict]:
    """``n`` multi-hop questions (0 = all). ``balance``: the same number of each kind, repeating the rarer kinds'
    questions: descriptions such as "the nurse who likes knitting" are unique for few people, so a plain sample
    holds ~5x fewer of them (the kg_find traces) than of the person_* kinds."""
    if not balance:
        return rng.sample(questions, n) if n and len(questions) > n else questions
    by_kind: dict[str, list] = {}
    for q in questions:
        by_kind.setdefault(q["kind"], []).append(q)
    per_kind = (n or len(questions)) // max(1, len(by_kind))
    out = []
    for kind in sorted(by_kind):
        pool = by_kind[kind]
        out += rng.sample(pool, per_kind) if len(pool) >= per_kind else [pool[i % len(pool)] for i in range(per_kind)]
    return out


def build_sft_data(kg: KnowledgeGraph, store: DocumentStore, cfg: Config, run_path: Path, seed: int,
                   tokenizer=None, max_len: int = 0) -> tuple[Path, dict]:
    """RAG, tool-use, extraction and replayed chat examples. Most RAG questions and tool traces are about
    fictional people (``synthetic.py``), so reading the passage or copying the name into the tool call is the
    only way to answer them; the held-out people stay out of everything."""
    train_people, _ = _split_people(kg)
    allowed = lambda e: not kg.objects(e, "type") == ["person"] or e in train_people  # noqa: E731
    big = training_graph(kg, cfg, seed)
    fictional = set(big.entities_of_type("person")) - set(kg.entities_of_type("person"))
    big_store = DocumentStore(StoreConfig())  # BM25 over world + fictional passages: realistic distractors
    big_store.add_documents([p for p in entity_passages(big) if p["entity"] in fictional or allowed(p["entity"])])
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(big)}
    world_qs = [q for q in fact_questions(kg, "train") if allowed(q["entity"])]
    fict_qs = fact_questions(big, "train", entities=fictional) + extra_fact_questions(big, sorted(fictional))
    n_rag = cfg.n_rag_train or len(world_qs) + len(fict_qs)
    n_world = min(len(world_qs), round(n_rag * cfg.world_rag_share))
    rng = random.Random(seed)
    if cfg.rag_phrasings not in ("apps", "world"):
        raise ValueError(f"apps.rag_phrasings={cfg.rag_phrasings!r}: choose 'apps' or 'world'")
    rag_pool = fict_qs + (extra_fact_questions(big, sorted(fictional), templates=world_train_phrasings())
                          if cfg.rag_phrasings == "world" else [])
    rag_qs = rng.sample(world_qs, n_world) + rng.sample(rag_pool, min(len(rag_pool), n_rag - n_world))
    if cfg.rag_answer not in ("value", "quote"):
        raise ValueError(f"apps.rag_answer={cfg.rag_answer!r}: choose 'value' or 'quote'")
    if cfg.rag_no_answer not in ("plain", "subject"):
        raise ValueError(f"apps.rag_no_answer={cfg.rag_no_answer!r}: choose 'plain' or 'subject'")
    quote = (lambda q: answer_clause(big, q["entity"], q["relation"], q["lang"])) if cfg.rag_answer == "quote" else None  # noqa: E731
    absent = (lambda q: no_answer_clause(big, q["entity"], q["relation"], q["lang"])) if cfg.rag_no_answer == "subject" else None  # noqa: E731
    rag = rag_sft_examples(rag_qs, passages, lambda q, n: [h.text for h in big_store.search(q, n)], cfg.k,
                           cfg.no_answer_rate, seed, quote, absent, cfg.rag_prompt, cfg.rag_paired)
    tools = agent_tools(big, big_store)
    keep = train_people | fictional
    multihop = sample_multihop([dict(q) for q in multihop_questions(big) if _multihop_person(big, q) in keep],
                               cfg.n_multihop_train, cfg.multihop_balance, rng)
    # one-hop facts: half answered with a KG lookup, half by searching the documents
    sample = rng.sample(world_qs + fict_qs, min(len(world_qs + fict_qs), 300))
    facts = [dict(q, kind="fact" if i % 2 else "fact_search") for i, q in enumerate(sample)]
    items = arithmetic_questions(cfg.n_arith_train, seed=seed) + multihop + facts
    # the agent's context at each step, as ModelPolicy builds it (generation prompt included)
    count = (lambda m: len(tokenizer.encode_chat(m, add_generation_prompt=True)[0])) if tokenizer else None  # noqa: E731
    trace_stats: dict = {}
    agent = agent_sft_examples(items, tools, big, cfg.prompt_style, cfg.agent_max_steps, count, max_len,
                               cfg.agent_max_new_tokens, trace_stats, cfg.spaced_args, cfg.describe_find,
                               cfg.view_context_loss)
    replay = []
    world_sft = run_path / "data" / "world" / "sft_train.jsonl"
    if world_sft.exists() and cfg.replay_fraction > 0:
        rows = common.read_jsonl(world_sft)
        n = min(len(rows), int(cfg.replay_fraction * (len(rag) + len(agent))))
        replay = random.Random(seed).sample(rows, n)
    extract = extraction_sft_examples(kg, [p for p in entity_passages(kg) if allowed(p["entity"])])
    copies = copy_chat_examples(big, cfg.n_copy_chat, seed, sorted(keep))
    data = rag + agent + extract + replay + copies
    random.Random(seed).shuffle(data)
    path = run_path / "apps" / "sft_train.jsonl"
    atomic_write_text(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in data))
    over = sum(len(tokenizer.encode_chat(d["messages"])[0]) > max_len for d in data) if tokenizer and max_len else 0
    return path, {"rag_examples": len(rag), "agent_examples": len(agent), "extraction_examples": len(extract),
                  "replay_examples": len(replay), "copy_examples": len(copies), "fictional_people": len(fictional),
                  **trace_stats, "sft_examples_over_context": over}


def _eval_sets(kg: KnowledgeGraph, run_path: Path, cfg: Config, seed: int,
               heldout: tuple[KnowledgeGraph, list[str]]) -> dict[str, list]:
    """The measured question sets; ``heldout`` = ``heldout_fictional``'s (graph, invented people)."""
    _, held = _split_people(kg)
    sub = lambda xs: common_subsample(xs, cfg.eval_examples, seed)  # noqa: E731
    sets = {"facts_heldout": sub([q for q in fact_questions(kg, "eval") if q["entity"] in held]),
            "multihop_heldout": sub([q for q in multihop_questions(kg) if _multihop_person(kg, q) in held]),
            "arith": arithmetic_questions(cfg.eval_examples or 100, seed=seed + 1000)}
    eval_graph, fictional = heldout
    if fictional:
        sets["facts_fictional"] = sub(fact_questions(eval_graph, "eval", entities=fictional))
    facts_path = run_path / "data" / "world" / "facts_eval.jsonl"
    if facts_path.exists():  # the world's own held-out phrasings: paraphrases for the retriever
        sets["world_paraphrases"] = sub(E.facts_eval_questions(common.read_jsonl(facts_path)))
    return sets


def common_subsample(items: list, n: int, seed: int) -> list:
    if n <= 0 or n >= len(items):
        return list(items)
    return random.Random(seed).sample(items, n)


def run(ctx, cfg: Config):
    from lmstack.align.sft import Config as SftConfig, train_sft
    from lmstack.pipeline import StageResult

    run_path = ctx.run.path
    common.set_seed(ctx.seed)
    kg = kg_from_world_json(run_path / "data" / "world" / "world.json")
    kg.save(run_path / "apps" / "kg.json")
    tokenizer = common.load_tokenizer(run_path)
    ctx.log(f"knowledge graph: {len(kg)} triples")

    # ------------------------------------------------------------ retrievers
    encoder = None
    if cfg.dense.steps > 0:
        base = common.load_model(run_path, "pretrain", ctx.device, needed_by="apps")
        encoder = DenseEncoder(base, tokenizer, cfg.dense, str(common.checkpoint_dir(run_path, "dense")))
        pairs, negatives = dense_training_data(kg, cfg, ctx.seed)
        dense_history = train_dense(encoder, pairs, cfg.dense, negatives=negatives)
        encoder.save(common.checkpoint_dir(run_path, "dense"))
    elif cfg.retrieval_mode != "bm25":
        raise ValueError(f"apps.retrieval_mode={cfg.retrieval_mode!r} needs a dense retriever: set apps.dense.steps > 0")
    store = DocumentStore(StoreConfig(), encoder=encoder)
    store.add_documents(entity_passages(kg))
    store.save(run_path / "apps" / "index")
    reranker = _train_reranker(ctx, cfg, kg, store, tokenizer, run_path) if cfg.rerank.steps > 0 else None

    # ------------------------------------------------------------ fine-tuning
    model = common.load_model(run_path, cfg.init_from, ctx.device, needed_by="apps")
    copy_stats = _copy_stats(model, tokenizer, "before")
    if cfg.copy.steps > 0:
        copy_warmup(model, tokenizer, cfg.copy)
        copy_stats.update(_copy_stats(model, tokenizer, "after_warmup"))
    ctx.log(f"copying (loss on a repeated random string, nats): {copy_stats}")
    sft_path, data_stats = build_sft_data(kg, store, cfg, run_path, ctx.seed, tokenizer, model.config.max_seq_len)
    ctx.log(f"SFT data: {data_stats}")
    sft_cfg = SftConfig(init_from=cfg.init_from, steps=cfg.steps, batch_size=cfg.batch_size,
                        optim=common.finetune_optim(lr=cfg.lr), replay_batch_size=cfg.replay_batch_size,
                        schedule=common.finetune_schedule(warmup_steps=min(10, cfg.steps // 10)))
    copy_in_sft = None
    if cfg.copy.sft_batch_size > 0:  # keep the copy mechanism in use while SFT trains the chat format
        copy_loss = CopyLoss(model, tokenizer, cfg.copy, cfg.copy.sft_batch_size, seed_offset=1)
        copy_in_sft = lambda: cfg.copy.sft_weight * copy_loss()  # noqa: E731
    summary = train_sft(model, tokenizer, sft_cfg, sft_path, ctx, "apps", extra_loss=copy_in_sft)
    out_dir = common.checkpoint_dir(run_path, "apps")
    common.save_finetuned(model, out_dir, None, {"stage": "apps", "steps": cfg.steps, "init_from": cfg.init_from,
                                                 "final_loss": summary["history"][-1]}, str(out_dir))

    # ------------------------------------------------------------ measurements
    metrics, report = measure(ctx, cfg, kg, store, model, tokenizer, run_path, reranker)
    copy_stats.update(_copy_stats(model, tokenizer, "after_sft"))
    metrics.update(final_loss=round(summary["history"][-1], 4), **data_stats, **copy_stats)
    from lmstack.align.familiarity import carry_over

    metrics.update(carry_over(model, tokenizer, run_path, out_dir, ctx.seed))  # `lmstack chat --stage apps` gated too
    if encoder is not None:
        metrics["dense_final_loss"] = round(sum(dense_history[-10:]) / len(dense_history[-10:]), 4)
    return StageResult(metrics=metrics, report=report, artifacts={
        "kg": "apps/kg.json", "index": "apps/index", "sft_data": "apps/sft_train.jsonl",
        "checkpoint": "checkpoints/apps", **({"dense": "checkpoints/dense"} if encoder is not None else {}),
        **({"rerank": "checkpoints/rerank"} if reranker is not None else {})})


def dense_training_data(kg: KnowledgeGraph, cfg: Config, seed: int) -> tuple[list[tuple[str, str]], dict]:
    """The dense retriever's (question, passage) pairs, training-form questions about the places and the
    training people (plus, with ``dense_fictional``, the training invented people: more names to tell apart
    than the world's), and their BM25 hard negatives (``bm25_negatives``)."""
    graph = training_graph(kg, cfg, seed) if cfg.dense_fictional else kg
    train_people, _ = _split_people(kg)
    train_people |= set(graph.entities_of_type("person")) - set(kg.entities_of_type("person"))
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(graph)}
    allowed = [q for q in fact_questions(graph, "train")
               if graph.objects(q["entity"], "type") != ["person"] or q["entity"] in train_people]
    pairs = [(q["question"], passages[(q["entity"], q["lang"])]) for q in allowed]
    return pairs, bm25_negatives(graph, allowed, cfg.dense.hard_negatives)


def bm25_negatives(kg: KnowledgeGraph, questions: list[dict], n: int) -> dict[str, list[str]]:
    """question -> the ``n`` passages BM25 ranks highest for it among the passages of the questions' entities
    other than its own (people with a similar name, mostly): the dense retriever's hard negatives."""
    if n <= 0:
        return {}
    entities = {q["entity"] for q in questions}
    lexical = DocumentStore(StoreConfig())
    lexical.add_documents(p for p in entity_passages(kg) if p["entity"] in entities)
    return {q["question"]: [h.text for h in lexical.search(q["question"], n + 2)
                            if h.doc_id.rsplit(":", 1)[0] != q["entity"]][:n] for q in questions}


def _copy_stats(model, tokenizer, when: str) -> dict:
    """Loss on the repeat of random strings (whole vocabulary, and digits/letters only) and on a code's digits
    where a fresh copy page repeats it, in nats per token (the page code's first showing as the reference)."""
    page = page_copy_loss(model, tokenizer)
    return {f"repeat_loss_{when}": round(repeat_loss(model, tokenizer), 3),
            f"repeat_loss_digits_{when}": round(repeat_loss(model, tokenizer, digits=True), 3),
            f"page_code_loss_first_{when}": round(page["first"], 3),
            f"page_code_loss_repeat_{when}": round(page["repeat"], 3)}


def _train_reranker(ctx, cfg: Config, kg, store, tokenizer, run_path: Path) -> CrossEncoder:
    """Cross-encoder from the pretrained model; negatives are BM25's top passages about other entities."""
    train_people, _ = _split_people(kg)
    passages = {(p["entity"], p["lang"]): p["text"] for p in entity_passages(kg)}
    examples = []
    for q in fact_questions(kg, "train"):
        if kg.objects(q["entity"], "type") == ["person"] and q["entity"] not in train_people:
            continue
        negatives = [h.text for h in store.search(q["question"], 12) if not h.doc_id.startswith(q["entity"] + ":")]
        examples.append((q["question"], passages[(q["entity"], q["lang"])], negatives))
    base = common.load_model(run_path, "pretrain", ctx.device, needed_by="apps")
    reranker = CrossEncoder(base, tokenizer, cfg.rerank).to(ctx.device)
    train_reranker(reranker, examples, cfg.rerank)
    reranker.save(common.checkpoint_dir(run_path, "rerank"))
    return reranker


def fictional_store(heldout: tuple[KnowledgeGraph, list[str]], store: DocumentStore) -> DocumentStore | None:
    """The world's passages plus those of the held-out invented people (``heldout_fictional``'s graph and ids;
    same encoder as ``store``)."""
    eval_graph, fictional = heldout
    if not fictional:
        return None
    out = DocumentStore(StoreConfig(), encoder=store.encoder)
    out.add_documents(entity_passages(eval_graph))
    return out


def _retrieval_section(sets: dict, stores: dict, reranker, tokenizer) -> tuple[dict, list[str]]:
    rows, metrics = [], {}
    for name, store in stores.items():
        if name not in sets:
            continue
        modes = ["bm25"] + (["dense", "hybrid"] if store.encoder is not None else [])
        for mode in modes:
            r = E.retrieval_recall(lambda q, k: store.search(q, k, mode=mode), sets[name])
            rows.append((name, mode, len(sets[name]), r["recall@1"], r["recall@5"]))
            metrics[f"{name}_{mode}_recall@1"] = round(r["recall@1"], 4)
            metrics[f"{name}_{mode}_recall@5"] = round(r["recall@5"], 4)
        if reranker is not None:
            mode = modes[-1]
            pipe = RagPipeline(store, None, tokenizer, k=5, mode=mode, reranker=reranker)
            r = E.retrieval_recall(lambda q, k: pipe.retrieve(q)[:k], sets[name])
            rows.append((name, f"{mode} + rerank", len(sets[name]), r["recall@1"], r["recall@5"]))
            metrics[f"{name}_rerank_recall@1"] = round(r["recall@1"], 4)
            metrics[f"{name}_rerank_recall@5"] = round(r["recall@5"], 4)
    return metrics, ["**Retrieval** (gold = the passage of the asked entity in the question's language):\n",
                     markdown_table(["questions", "retriever", "n", "recall@1", "recall@5"], rows), ""]


# row label, metric key prefix, eval set, store key: the old row keeps its unprefixed metric keys
QA_ROWS = [("people held out of the apps SFT, known from pretraining / SFT", "", "facts_heldout", "world"),
           ("invented people in no training data (never seen)", "fictional_", "facts_fictional", "fictional")]


def fit_cutoff(cfg: Config, kg: KnowledgeGraph, store: DocumentStore, tokenizer, seed: int) -> dict | None:
    """``rag.calibrate_min_score`` on the training invented people (``training_graph``), over the world's
    passages plus theirs. None when the cut-off is off or there is no encoder."""
    if not cfg.rag_cutoff or store.encoder is None:
        return None
    big = training_graph(kg, cfg, seed)
    fictional = sorted(set(big.entities_of_type("person")) - set(kg.entities_of_type("person")))
    if not fictional:
        return None
    calib = DocumentStore(StoreConfig(), encoder=store.encoder)
    calib.add_documents(entity_passages(big))
    pipe = RagPipeline(calib, None, tokenizer, cfg.k, cfg.retrieval_mode)
    # the world's own training forms (synthetic.world_train_phrasings): the dense retriever never trains on them
    questions = common_subsample(extra_fact_questions(big, fictional, templates=world_train_phrasings()), 240, seed)
    return calibrate_min_score(pipe, questions, lambda q: [f"{q['entity']}:en", f"{q['entity']}:zh"], cfg.rag_cutoff_keep)


def _qa_section(cfg: Config, sets: dict, stores: dict, model, tokenizer, reranker,
                cutoff: dict | None = None) -> tuple[dict, list[str], list]:
    """Closed-book vs RAG on each QA_ROWS set; 'cannot find' with the gold passages removed; how often RAG
    says it cannot find the answer although the gold passage was retrieved; with ``cutoff`` (``fit_cutoff``'s)
    also RAG and 'cannot find' through the score cut-off."""
    metrics, rows, samples = {}, [], []
    min_score = cutoff["min_score"] if cutoff else None
    for label, prefix, name, store_key in QA_ROWS:
        if name not in sets or stores.get(store_key) is None:
            continue
        pipe = RagPipeline(stores[store_key], model, tokenizer, cfg.k, cfg.retrieval_mode, cfg.max_new_tokens, reranker,
                           layout=cfg.rag_prompt, min_score=min_score)
        qa = E.rag_qa(pipe, sets[name])
        metrics.update({prefix + key: round(value, 4) for key, value in qa.items() if key not in ("n", "samples")})
        rows.append((label, qa["n"], qa["closed_book"], qa["rag"], qa["rag_cited"], qa["rag_refused"],
                     qa["cannot_find"]))
        if cutoff:
            rows.append(("the same, through the score cut-off", qa["n"], "", qa["gated_rag"], "", qa["gated_refused"],
                         qa["gated_cannot_find"]))
        samples += qa["samples"][:3]
    lines = [f"**QA: closed-book vs RAG** (eval phrasings; RAG with {cfg.retrieval_mode}"
             f"{' + rerank' if reranker else ''}, k={cfg.k}):\n",
             markdown_table(["questions about", "n", "closed-book", "RAG", "RAG, citing the gold passage",
                             "RAG says 'cannot find' (gold retrieved or not)",
                             "'cannot find' when the passages lack it"], rows), ""]
    if cutoff:
        metrics.update(rag_min_score=cutoff["min_score"], rag_cutoff_train_kept=round(cutoff["kept"], 4),
                       rag_cutoff_train_cut=round(cutoff["cut"], 4))
        lines += [f"The score cut-off answers \"cannot find\" without asking the model when the question's dense "
                  f"similarity to the best passage is below {cutoff['min_score']:.3f}, fitted on {cutoff['n']} training "
                  f"questions about invented people (in training phrasings) to let {cutoff['keep']:.2f} of their "
                  f"passages through: it let {cutoff['kept']:.2f} through and cut {cutoff['cut']:.2f} of the best "
                  "passages left when theirs were removed. `lmstack rag ask` and "
                  "`lmstack serve --rag` apply it.\n"]
    return metrics, lines, samples


def measure(ctx, cfg: Config, kg, store, model, tokenizer, run_path: Path, reranker=None) -> tuple[dict, str]:
    heldout = heldout_fictional(kg, cfg, ctx.seed)
    sets = _eval_sets(kg, run_path, cfg, ctx.seed, heldout)
    stores = {"world": store, "fictional": fictional_store(heldout, store)}
    metrics, lines = _retrieval_section(sets, {"facts_heldout": store, "world_paraphrases": store,
                                               "facts_fictional": stores["fictional"]}, reranker, tokenizer)
    qa_metrics, qa_lines, samples = _qa_section(cfg, sets, stores, model, tokenizer,
                                                reranker if cfg.rag_rerank else None,
                                                fit_cutoff(cfg, kg, store, tokenizer, ctx.seed))
    metrics.update(qa_metrics, **{f"n_{name}": len(items) for name, items in sets.items()})
    lines += qa_lines

    tools = agent_tools(kg, store)
    model_agent = lambda q: ReActAgent(ModelPolicy(model, tokenizer, cfg.agent_max_new_tokens), tools,  # noqa: E731
                                       cfg.agent_max_steps, prompt_style=cfg.prompt_style)
    plan_agent = lambda q: ReActAgent(PlanPolicy(plan_for(q, kg, cfg.describe_find), cfg.spaced_args),  # noqa: E731
                                      tools, cfg.agent_max_steps, prompt_style=cfg.prompt_style)
    agent_rows = []
    for name in ("arith", "multihop_heldout"):
        alone = E.model_alone(model, tokenizer, sets[name], cfg.max_new_tokens)
        agent = E.agent_accuracy(model_agent, sets[name])
        plan = E.agent_accuracy(plan_agent, sets[name], progress=False)
        agent_rows.append((name, agent["n"], alone, agent["accuracy"], agent["mean_steps"],
                           json.dumps(agent["stop_reasons"]), plan["accuracy"]))
        metrics.update({f"{name}_model_alone": round(alone, 4), f"{name}_agent": round(agent["accuracy"], 4)})
        if name == "multihop_heldout":  # right / asked per question kind: which plans the agent has learnt
            for kind, (right, asked) in agent["by_kind"].items():
                metrics.update({f"{name}_agent_{kind}": round(right / asked, 4), f"n_{name}_{kind}": asked})
    lines += ["**Model alone vs agent with tools** (ReAct, greedy; 'plan' = the same tools driven by the "
              "question's known plan, the upper bound of the loop):\n",
              markdown_table(["questions", "n", "model alone", "agent", "mean steps", "stop reasons",
                                     "plan"], agent_rows), ""]
    _, held = _split_people(kg)
    ex = evaluate_extraction(model, tokenizer, kg, common_subsample(
        [p for p in entity_passages(kg) if p["entity"] in held], cfg.eval_examples, ctx.seed))
    metrics.update(extraction_precision=round(ex["precision"], 4), extraction_recall=round(ex["recall"], 4))
    lines += [f"**Triple extraction** from {ex['n']} passages about held-out people (scored against the "
              "knowledge graph's triples):\n",
              markdown_table(["passages", "precision", "recall"], [(ex["n"], ex["precision"], ex["recall"])]), ""]
    if samples:
        lines.append("Sample answers (closed-book / RAG / passages without the answer; RAG answers as the pipeline "
                     "gives them, through the score cut-off when it is on):\n")
        lines.append(markdown_table(["question", "closed-book", "RAG", "no gold passage", "reference"],
                                    [tuple(table_cell(x, 100) for x in s) for s in samples]))
    return metrics, "\n".join(lines) + "\n"
