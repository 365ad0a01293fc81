"""lmstack.apps: the application layer on top of ``lmstack.generate``.

    retrieval   chunking, BM25 (our own, CJK-aware), exact / faiss vector index, reciprocal rank fusion
    store       a document store built from a directory of txt / jsonl / md files (safetensors + JSON)
    dense       a bi-encoder initialised from a run's model, trained DPR-style with in-batch negatives
    kg          the synthetic world as (entity, relation, value) triples, a small conjunctive query API
    tools       tools in OpenAI's ``tools`` JSON format: calculator (ast, never eval), KG, search, date
    agent       a ReAct loop (Thought / Action / Observation) with a step limit and a timeout
    rag         "context + question" prompts with [n] citations, RAG / agent SFT data, memory
"""
