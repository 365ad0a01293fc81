"""Layer 0 data: readers (``sources``), filters (``clean``), PII masking (``pii``), exact and MinHash
dedup plus decontamination (``dedup``), the quality classifier (``quality``), mixing (``mix``), the
synthetic world (``world``), token shards (``shards``) and the ``data`` stage (``stage``).

Import from the submodules, e.g. ``from lmstack.data.dedup import MinHashDeduplicator``; this package
imports nothing eagerly so that worker processes start fast.
"""
