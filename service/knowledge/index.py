"""One knowledge base's chunks as a searcher holds them in memory: a float32 matrix of their unit vectors and an
inverted index of their terms, built from what ``knowledge.store`` keeps in Redis.

Why in process, with numpy: Parley runs on the embedded Valkey, one Redis and Redis Cluster, and none of them
is sure to have a search module (RediSearch, valkey-search). A matrix-vector product over 20,000 chunks of 512
dimensions is ~10 M multiply-adds: about a millisecond of numpy (bench.knowledge measures it), cheaper than any
round trip that would ship the candidates. The price is memory in every process that answers turns: 4 bytes
per dimension per chunk (README: *Knowledge bases*).

BM25 is computed here over the stored term counts (k1 = 1.2, b = 0.75, the usual constants) with numpy: the
query has a handful of terms, so its postings are a few small arrays. rank-bm25, the library on PyPI, is a
dense pure-Python loop over every document per query with no release since 2022; it would cost more than the
few lines it saves.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.knowledge.embeddings import Matrix
from service.knowledge.store import Chunk

K1 = 1.2
B = 0.75
COMMON_AFTER = 50   # chunks from which a term in more than half of them is a stopword
_WORD = re.compile(r"[a-z0-9]+")
# Words that carry no topic: left out of the keyword side so "what are your ..." matches nothing by itself.
STOPWORDS = frozenset((
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing",
    "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
    "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my",
    "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own",
    "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these",
    "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what",
    "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
    "yourself", "please", "hi", "hello", "thanks", "thank", "okay", "ok", "tell", "know", "like", "want", "need",
    "get", "got", "much", "many",
))


def terms(text: str) -> list[str]:
    """The keyword side's terms of ``text``: lowercase words and numbers, accents dropped, stopwords left out, a
    plural's final ``s`` cut (``prices`` matches ``price``)."""
    plain = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    out = []
    for word in _WORD.findall(plain):
        if word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and not word[-2].isdigit():
            word = word[:-1]
        out.append(word)
    return out


def term_counts(text: str) -> dict[str, int]:
    return dict(Counter(terms(text)))


def is_identifier(term: str) -> bool:
    """A SKU, a price, a code: a term with a digit in it, of three characters or more."""
    return len(term) >= 3 and any(c.isdigit() for c in term)


@dataclass
class Index:
    """A knowledge base's chunks, searchable: ``ids[i]`` is row ``i`` of ``vectors`` (None when the vectors are of
    another model than the one asked), with its title and text."""

    version: int
    model: str
    ids: list[str]
    titles: list[str]
    texts: list[str]
    vectors: Matrix | None
    lengths: npt.NDArray[np.float32]
    postings: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = field(default_factory=dict)
    norms: npt.NDArray[np.float32] = field(init=False)   # BM25's length normalisation, per chunk

    def __post_init__(self) -> None:
        average = float(self.lengths.mean()) if len(self.lengths) else 1.0
        self.norms = (K1 * (1 - B + B * self.lengths / (average or 1.0))).astype(np.float32)

    @classmethod
    def load(cls, version: int, model: str, stored: dict[str, str], vectors: dict[str, bytes]) -> Index:
        """``build`` from the chunks as stored (their JSON). CPU only, and tens of ms per thousand chunks: searchers
        run it in a thread, so that the event loop goes on answering other conversations meanwhile."""
        return cls.build(version, model, {cid: Chunk.loads(raw) for cid, raw in stored.items()}, vectors)

    @classmethod
    def build(cls, version: int, model: str, chunks: dict[str, Chunk], vectors: dict[str, bytes]) -> Index:
        ids = sorted(cid for cid in chunks if cid in vectors) if vectors else sorted(chunks)
        vector_rows = [np.frombuffer(vectors[cid], dtype=np.float32) for cid in ids] if vectors else []
        matrix = np.vstack(vector_rows) if vector_rows and len({r.shape[0] for r in vector_rows}) == 1 else None
        # The postings, built flat and grouped with numpy (a Python loop per posting takes seconds at 20,000 chunks).
        all_terms: list[str] = []
        counts: list[int] = []
        rows_of: list[int] = []
        lengths = np.zeros(len(ids), dtype=np.float32)
        for row, cid in enumerate(ids):
            found = chunks[cid].terms
            all_terms.extend(found)
            counts.extend(found.values())
            rows_of.extend([row] * len(found))
            lengths[row] = sum(found.values())
        vocabulary: dict[str, int] = {}
        term_ids = np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for t in all_terms), dtype=np.int64,
                               count=len(all_terms))
        order = np.argsort(term_ids, kind="stable")
        rows = np.asarray(rows_of, dtype=np.int32)[order]
        tfs = np.asarray(counts, dtype=np.float32)[order]
        ends = np.cumsum(np.bincount(term_ids, minlength=len(vocabulary)))
        starts = ends - np.bincount(term_ids, minlength=len(vocabulary))
        postings = {t: (rows[starts[i]:ends[i]], tfs[starts[i]:ends[i]]) for t, i in vocabulary.items()}
        return cls(version=version, model=model, ids=ids, titles=[chunks[c].title for c in ids],
                   texts=[chunks[c].text for c in ids], vectors=matrix if ids else None, lengths=lengths,
                   postings=postings)

    def __len__(self) -> int:
        return len(self.ids)

    def idf(self, term: str) -> float:
        """BM25's idf (the Lucene form, never negative); a term no chunk has gets the highest."""
        n = len(self.ids)
        df = len(self.postings[term][0]) if term in self.postings else 0
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def keyword_scores(self, query_terms: list[str]) -> npt.NDArray[np.float32]:
        """Each chunk's BM25 for the query, divided by what a chunk of average length holding each query term once
        scores (the sum of the terms' idf): 1.0 is "every word of the question is here", 0 "none is"; capped
        at 1."""
        scores = np.zeros(len(self.ids), dtype=np.float32)
        unique = list(dict.fromkeys(query_terms))
        if not unique or not len(self.ids):
            return scores
        # In a knowledge base of some size, a term in more than half the chunks says little about which one is meant
        # (idf at most ln 2, a tenth of a rare term's at 20,000 chunks) and would cost a pass over most rows: there
        # it is a stopword, left out of the score and of the ideal alike. (In a handful of chunks, every term is.)
        n = len(self.ids)
        unique = [t for t in unique if n < COMMON_AFTER or t not in self.postings or len(self.postings[t][0]) * 2 <= n]
        if not unique:
            return scores
        norm = self.norms
        for term in unique:
            if term not in self.postings:
                continue
            rows, tfs = self.postings[term]
            scores[rows] += self.idf(term) * tfs * (K1 + 1) / (tfs + norm[rows])
        ideal = sum(self.idf(term) for term in unique)
        capped: npt.NDArray[np.float32] = np.minimum(scores / ideal, 1.0).astype(np.float32)
        return capped

    def identifier_scores(self, query_terms: list[str]) -> npt.NDArray[np.float32]:
        """The share of the question's identifiers (``is_identifier``) each chunk holds exactly."""
        wanted = [t for t in dict.fromkeys(query_terms) if is_identifier(t)]
        scores = np.zeros(len(self.ids), dtype=np.float32)
        for term in wanted:
            if term in self.postings:
                scores[self.postings[term][0]] += 1.0 / len(wanted)
        return scores
