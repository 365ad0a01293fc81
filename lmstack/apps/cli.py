"""CLI of the application layer: ``lmstack rag``, ``lmstack agent`` and ``lmstack kg``.

    lmstack rag build DOCS --out INDEX [--chunking sentences|tokens --run RUN] [--dense RUN]
    lmstack rag add INDEX DOCS | lmstack rag delete INDEX DOC_ID ... | lmstack rag search INDEX "query"
    lmstack rag ask "question" --run RUN [--index DIR] [--checkpoint apps] [--k 3] [--mode hybrid] [--min-score auto]
    lmstack agent "question" --run RUN [--checkpoint apps] [--max-steps 6] [--timeout 60] [--script FILE]
    lmstack kg build --run RUN | lmstack kg query "?p occupation occupation:carpenter ; ?p birthplace ?c" --run RUN
    lmstack kg ask "In which country was the carpenter who likes singing born?" --run RUN
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fail(msg: str) -> int:
    print(f"lmstack: error: {msg}", file=sys.stderr)
    return 2


def _tokenizer(run: str):
    from lmstack.tokenizer import Tokenizer

    path = Path(run) / "tokenizer" / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer (is {run} a run directory?)")
    return Tokenizer.load(path)


def _apps_stage(run: str | Path) -> dict:
    manifest = Path(run) / "manifest.json"
    if not manifest.exists():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("stages", {}).get("apps", {})


def apps_stage_config(run: str | Path) -> dict:
    """The config the run's apps stage ran with (its manifest), or {} when it has not run."""
    return _apps_stage(run).get("config", {})


def trained_min_score(run: str | Path, option: str = "auto") -> float | None:
    """The RAG score cut-off: ``option`` "off" -> None, a number -> that number, "auto" -> the threshold the
    run's apps stage fitted (its manifest's ``rag_min_score``), else None."""
    if option == "off":
        return None
    if option != "auto":
        try:
            return float(option)
        except ValueError:
            raise ValueError(f"--min-score {option!r}: give auto, off or a number") from None
    value = _apps_stage(run).get("metrics", {}).get("rag_min_score")
    return None if value is None else float(value)


def trained_k(run: str, default: int = 3) -> int:
    """Passages per prompt the run's apps stage trained and measured RAG with (its manifest), else ``default``:
    a model tuned on one-passage prompts should be asked with one passage."""
    return int(apps_stage_config(run).get("k", default))


def trained_layout(run: str) -> str:
    """The RAG prompt layout (``rag.LAYOUTS``) the run's apps stage trained with, else ``passages_first``."""
    return str(apps_stage_config(run).get("rag_prompt", "passages_first"))


def _model(run: str, checkpoint: str, device: str):
    from lmstack.model import load_pretrained

    d = Path(checkpoint) if Path(checkpoint).is_dir() else Path(run) / "checkpoints" / checkpoint
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d}: no checkpoint (train it with `lmstack apps --run {run}`, "
                                "or pass --checkpoint sft / a checkpoint directory)")
    return load_pretrained(d, device=device).eval()


def _encoder_for(store_dir: Path, tokenizer, device: str):
    """The dense encoder a saved store was built with, if any."""
    from lmstack.apps.dense import DenseEncoder
    from lmstack.runs import read_json

    meta = read_json(store_dir / "store.json").get("encoder") if (store_dir / "store.json").exists() else None
    if not meta or meta.get("kind") != "dense":
        return None
    return DenseEncoder.load(meta["source"], tokenizer, device)


# ------------------------------------------------------------------ rag

def rag_main(argv: list[str] | None = None) -> int:
    from lmstack.apps.store import DocumentStore, StoreConfig

    ap = argparse.ArgumentParser(prog="lmstack rag", description="document index and retrieval-augmented answers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="index a directory or file of .txt / .md / .jsonl documents")
    b.add_argument("docs")
    b.add_argument("--out", required=True, help="index directory (store.json + vectors.safetensors)")
    b.add_argument("--chunking", choices=["sentences", "tokens"], default="sentences")
    b.add_argument("--max-chars", type=int, default=400)
    b.add_argument("--chunk-tokens", type=int, default=128)
    b.add_argument("--overlap-tokens", type=int, default=32)
    b.add_argument("--run", help="run directory: its tokenizer for token chunking")
    b.add_argument("--dense", metavar="RUN", help="also embed chunks with RUN/checkpoints/dense")
    b.add_argument("--backend", choices=["exact", "faiss"], default="exact")
    a = sub.add_parser("add", help="add or update documents in an index (unchanged files are skipped)")
    a.add_argument("index")
    a.add_argument("docs")
    a.add_argument("--run", help="run directory: tokenizer (token chunking) and dense encoder of the index")
    d = sub.add_parser("delete", help="remove documents by id (a file path, or a jsonl row's id)")
    d.add_argument("index")
    d.add_argument("ids", nargs="+")
    d.add_argument("--run", help="run directory whose dense encoder built the index (keeps its vectors)")
    s = sub.add_parser("search", help="print the top chunks for a query")
    s.add_argument("index")
    s.add_argument("query")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--mode", choices=["bm25", "dense", "hybrid"], default="bm25")
    s.add_argument("--run", help="run directory whose tokenizer the dense encoder needs")
    q = sub.add_parser("ask", help="answer a question from retrieved passages, with [n] citations")
    q.add_argument("question")
    q.add_argument("--run", required=True)
    q.add_argument("--index", help="index directory (default RUN/apps/index)")
    q.add_argument("--checkpoint", default="apps")
    q.add_argument("--k", type=int, help="passages per prompt (default: what the run's apps stage used, else 3)")
    q.add_argument("--mode", choices=["auto", "bm25", "dense", "hybrid"], default="auto",
                   help="auto = hybrid when the index has dense vectors, else bm25")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--min-score", default="auto", help="dense-similarity cut-off below which the answer is "
                   "'cannot find' without asking the model: auto (the one the run's apps stage fitted), off, or a number")
    q.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            tok = _tokenizer(args.run) if args.run else None
            encoder = None
            if args.dense:
                from lmstack.apps.dense import DenseEncoder
                tok = tok or _tokenizer(args.dense)
                encoder = DenseEncoder.load(Path(args.dense) / "checkpoints" / "dense", tok)
            cfg = StoreConfig(chunking=args.chunking, max_chars=args.max_chars, chunk_tokens=args.chunk_tokens,
                              overlap_tokens=args.overlap_tokens, backend=args.backend)
            store = DocumentStore(cfg, encoder=encoder, tokenizer=tok)
            stats = store.add_path(args.docs)
            store.save(args.out)
            print(f"indexed {stats['added']} documents, {stats['chunks']} chunks -> {args.out}")
        elif args.cmd in ("add", "delete", "search"):
            index = Path(args.index)
            tok = _tokenizer(args.run) if getattr(args, "run", None) else None
            encoder = _encoder_for(index, tok, "cpu") if tok is not None else None
            store = DocumentStore.load(index, encoder=encoder, tokenizer=tok)
            if args.cmd == "delete" and store.has_vectors and store.index is None:
                return _fail("this index holds dense vectors: pass --run RUN so they are kept up to date")
            if args.cmd == "add":
                stats = store.add_path(args.docs)
                store.save(index)
                print(f"added {stats['added']}, updated {stats['updated']}, unchanged {stats['unchanged']} "
                      f"documents ({stats['chunks']} new chunks)")
            elif args.cmd == "delete":
                print(f"removed {store.delete(args.ids)} chunks")
                store.save(index)
            else:
                for i, h in enumerate(store.search(args.query, args.k, mode=args.mode), start=1):
                    print(f"[{i}] {h.score:.4f}  {h.doc_id}\n    {h.text}")
        else:
            from lmstack.apps.rag import RagPipeline

            tok = _tokenizer(args.run)
            index = Path(args.index) if args.index else Path(args.run) / "apps" / "index"
            store = DocumentStore.load(index, encoder=_encoder_for(index, tok, args.device), tokenizer=tok)
            mode = args.mode if args.mode != "auto" else ("hybrid" if store.index is not None else "bm25")
            k = args.k if args.k is not None else trained_k(args.run)
            min_score = trained_min_score(args.run, args.min_score)
            if store.encoder is None and args.min_score == "auto":
                min_score = None  # a BM25-only index has no similarity to cut on
            pipe = RagPipeline(store, _model(args.run, args.checkpoint, args.device), tok, k, mode,
                               args.max_new_tokens, layout=trained_layout(args.run), min_score=min_score)
            answer = pipe.ask(args.question)
            print(answer.render())
            if answer.support is not None:
                print(f"\n(similarity of the question to [1]: {answer.support:.3f}"
                      f"{'' if min_score is None else f'; cut-off {min_score:.3f}'}"
                      f"{': below it, so the model was not asked' if answer.gated else ''})")
    except (FileNotFoundError, ValueError, KeyError) as e:
        return _fail(str(e).strip('"'))
    return 0


# ------------------------------------------------------------------ agent

def agent_main(argv: list[str] | None = None) -> int:
    from lmstack.apps.agent import PROMPT_STYLES, ModelPolicy, ReActAgent, ScriptedPolicy
    from lmstack.apps.tools import ToolBox, calculator_tool, date_tool, kg_tools, search_tool

    ap = argparse.ArgumentParser(prog="lmstack agent", description="answer with a ReAct loop over tools; prints the trace")
    ap.add_argument("question")
    ap.add_argument("--run", help="run directory: model, tokenizer, apps/kg.json and apps/index")
    ap.add_argument("--checkpoint", default="apps")
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole run")
    ap.add_argument("--prompt-style", choices=list(PROMPT_STYLES), default="minimal")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="per turn; also the room the context keeps free (as the apps stage)")
    ap.add_argument("--script", help="replay model turns from a file (turns separated by a line '---')")
    ap.add_argument("--tools-json", action="store_true", help="print the tools in OpenAI format and exit")
    ap.add_argument("--no-search", action="store_true", help="leave out the document-search tool")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    try:
        tools = [calculator_tool(), date_tool()]
        if args.run:
            from lmstack.apps.kg import KnowledgeGraph
            from lmstack.apps.store import DocumentStore

            kg_path, index = Path(args.run) / "apps" / "kg.json", Path(args.run) / "apps" / "index"
            if kg_path.exists():
                tools += kg_tools(KnowledgeGraph.load(kg_path))
            if (index / "store.json").exists() and not args.no_search:
                tools.append(search_tool(DocumentStore.load(index), k_default=2))  # as the apps stage trains
        box = ToolBox(tools)
        if args.tools_json:
            print(json.dumps(box.schemas(), indent=2, ensure_ascii=False))
            return 0
        if args.script:
            turns = [t.strip() for t in Path(args.script).read_text(encoding="utf-8").split("\n---\n")]
            policy = ScriptedPolicy(turns)
        elif args.run:
            policy = ModelPolicy(_model(args.run, args.checkpoint, args.device), _tokenizer(args.run),
                                 args.max_new_tokens)
        else:
            return _fail("give --run RUN (a trained model) or --script FILE")
        result = ReActAgent(policy, box, args.max_steps, args.timeout, args.prompt_style).run(args.question)
        print(result.trace())
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    return 0 if result.stop_reason == "final_answer" else 1


# ------------------------------------------------------------------ kg

def _parse_patterns(text: str) -> list[tuple[str, str, str]]:
    patterns = []
    for n, part in enumerate(p for p in text.split(";") if p.strip()):
        terms = part.split()
        if len(terms) != 3:
            raise ValueError(f"pattern {n + 1} {part.strip()!r}: expected 'subject relation object'")
        patterns.append(tuple(terms))
    return patterns


def kg_main(argv: list[str] | None = None) -> int:
    from lmstack.apps.kg import KnowledgeGraph, kg_from_world_json
    from lmstack.apps.worldqa import answer_with_graph, multihop_questions

    ap = argparse.ArgumentParser(prog="lmstack kg", description="the world's knowledge graph")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_text in (("build", "write RUN/apps/kg.json from the run's world"),
                            ("query", "conjunctive query: 's p o ; s p o' (?x = variable)"),
                            ("ask", "answer a multi-hop question by graph lookups"),
                            ("examples", "print multi-hop questions with their answers")):
        p = sub.add_parser(name, help=help_text)
        if name in ("query", "ask"):
            p.add_argument("text")
        p.add_argument("--run", help="run directory (default graph: RUN/apps/kg.json)")
        p.add_argument("--kg", help="a kg.json file instead of --run")
        if name == "examples":
            p.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            if not args.run:
                return _fail("kg build needs --run RUN (reads RUN/data/world/world.json)")
            kg = kg_from_world_json(Path(args.run) / "data" / "world" / "world.json")
            out = kg.save(Path(args.kg) if args.kg else Path(args.run) / "apps" / "kg.json")
            print(f"{len(kg)} triples -> {out}")
            return 0
        if args.kg:
            kg = KnowledgeGraph.load(args.kg)
        elif args.run and (Path(args.run) / "apps" / "kg.json").exists():
            kg = KnowledgeGraph.load(Path(args.run) / "apps" / "kg.json")
        elif args.run:
            kg = kg_from_world_json(Path(args.run) / "data" / "world" / "world.json")
        else:
            return _fail("give --run RUN or --kg FILE")
        if args.cmd == "query":
            rows = kg.query(_parse_patterns(args.text))
            for r in rows:
                print("  ".join(f"{k}={v} ({kg.name(v)})" if kg.objects(v, "type") else f"{k}={v}" for k, v in r.items()))
            print(f"{len(rows)} result(s)")
        elif args.cmd == "ask":
            answer = answer_with_graph(kg, args.text)
            if answer is None:
                return _fail("not a known multi-hop question form, an unknown name, or no unique answer "
                             "(see `lmstack kg examples`)")
            print(answer)
        else:
            for q in multihop_questions(kg)[:args.n]:
                print(f"{q['question']}  ->  {q['answer']}")
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    return 0
