"""Knowledge bases: Retell's knowledge-base API, background ingestion, and retrieval for the turn.

::

    models.py     Retell's knowledge-base shapes (pydantic), with Parley's additive fields
    store.py      a knowledge base's record, sources, chunks and vectors in Redis ({kb:<id>} keys)
    due.py        the ingestion work queue ({knowledge}:due), claimed with a lease
    bases.py      what the API asks: create, add sources (stored pending, checked at once)
    folders.py    knowledge bases declared as folders under agents/knowledge/
    parsing.py    files to text (pypdf, python-docx, Beautiful Soup, csv)
    chunking.py   text to chunks (headings, paragraphs, sentences; min and max size)
    embeddings.py texts to unit vectors (any OpenAI-compatible /v1/embeddings)
    ingestion.py  the background loop: claim, fetch, parse, chunk, embed, store; refresh; re-embed
    index.py      one knowledge base in memory: vectors, and BM25 over its terms
    search.py     retrieval: fused ranking, top_k, filter_score, the per-process cache

It sits beside ``catalog``, ``webhooks`` and ``sms`` and imports none of them; it uses ``storage``, ``retell``
and the base modules, and never opens the Redis connection (``create_app`` passes it).
"""
