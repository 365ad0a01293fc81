"""lmstack.apps: the application layer on top of ``lmstack.generate``.

    chunking     split documents by tokens (with overlap) or by sentences (Chinese-aware)
    bm25         our BM25 (Lucene / Okapi IDF) with CJK tokenisation
    vectors      exact inner-product index (numpy), faiss backend, reciprocal rank fusion
    store        document store from txt / md / jsonl files: BM25 + dense, safetensors + JSON, add / delete
    dense        bi-encoder from a run's decoder, trained DPR-style with in-batch negatives
    rerank       cross-encoder reranker (decoder + linear head, listwise loss)
    kg           the world as (entity, relation, value) triples and a conjunctive query solver
    worldqa      fact and multi-hop questions and passages rendered from the graph
    tools        tools in OpenAI's ``tools`` JSON format: calculator (ast, never eval), KG, search, date
    agent        the ReAct loop (Thought / Action / Observation) with a step limit and a timeout
    agent_data   tool-use SFT traces from real tool runs
    rag          "passages + question" prompts with [n] citations, RAG SFT data, RagPipeline
    extraction   triple extraction data and precision / recall against the graph
    memory       conversation memory that summarises and recalls evicted turns
    recommend    next-item recommendation: Recall/NDCG, popularity, item-kNN, implicit ALS, LM recommenders
    evaluate     the measurements; stage: the ``apps`` pipeline stage; cli: ``lmstack rag | agent | kg``
"""
