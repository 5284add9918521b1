"""What the API and the knowledge-base folders ask: create a knowledge base, add and delete sources, delete it.

Nothing here reads a source: sources are stored ``pending`` (an upload's bytes kept until ingested) and the
knowledge base is scheduled for ``knowledge.ingestion``. What can be judged at once is judged here, so a bad
request is a 422 naming it: a file Parley cannot read (by its suffix), a URL the outbound policy refuses without
DNS (a loopback or private literal address, credentials in the URL).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from service.clock import now_ms
from service.errors import InvalidRequest, OutboundRefused, SourceError
from service.knowledge import parsing
from service.knowledge.models import (
    CreateKnowledgeBase,
    DocumentSource,
    KnowledgeBaseResponse,
    KnowledgeBaseText,
    TextSource,
    UrlSource,
)
from service.knowledge.store import KnowledgeStore, Record
from service.outbound import OutboundPolicy

AnySource = DocumentSource | TextSource | UrlSource
Staged = list[tuple[AnySource, bytes | None]]


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a request (or a file of a knowledge-base folder)."""

    filename: str
    data: bytes


def new_kb_id() -> str:
    return "knowledge_base_" + secrets.token_hex(8)


def new_source_id() -> str:
    return "source_" + secrets.token_hex(8)


def reference(kb_id: str, source_id: str) -> str:
    """What ``file_url`` and ``content_url`` say: where Parley keeps the content (not a URL anyone can fetch)."""
    return f"parley://knowledge-bases/{kb_id}/sources/{source_id}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KnowledgeBases:
    """Knowledge bases as the API manages them."""

    def __init__(self, store: KnowledgeStore, policy: OutboundPolicy) -> None:
        self.store = store
        self._policy = policy

    def stage(self, kb_id: str, texts: list[KnowledgeBaseText], urls: list[str], files: list[Upload],
              source_ids: dict[str, str] | None = None) -> Staged:
        """New pending sources, checked (422 naming each problem); ``source_ids`` gives the ids of some files and
        URLs (a folder's: by file name and by URL, so that processes starting together agree), the others get new
        ids."""
        problems: list[str] = []
        staged: Staged = []
        for n, text in enumerate(texts):
            sid = new_source_id()
            data = text.text.encode()
            staged.append((TextSource(source_id=sid, title=text.title, content_url=reference(kb_id, sid),
                                      content_sha256=sha256(data)), data))
            if not text.text.strip():
                problems.append(f"knowledge_base_texts[{n}].text: is blank")
        for n, url in enumerate(urls):
            try:
                self._policy.check_url(url)
            except OutboundRefused as exc:
                problems.append(f"knowledge_base_urls[{n}]: {exc}")
                continue
            staged.append((UrlSource(source_id=(source_ids or {}).get(url) or new_source_id(), url=url), None))
        for n, upload in enumerate(files):
            try:
                parsing.kind_of(upload.filename)
            except SourceError as exc:
                problems.append(f"knowledge_base_files[{n}]: {exc}")
                continue
            sid = (source_ids or {}).get(upload.filename) or new_source_id()
            staged.append((DocumentSource(source_id=sid, filename=upload.filename, file_url=reference(kb_id, sid),
                                          file_size=len(upload.data), content_sha256=sha256(upload.data)),
                           upload.data))
        if problems:
            raise InvalidRequest("; ".join(problems))
        return staged

    async def create(self, body: CreateKnowledgeBase, files: list[Upload], *, kb_id: str | None = None,
                     declared_in: str | None = None) -> KnowledgeBaseResponse:
        kb_id = kb_id or new_kb_id()
        staged = self.stage(kb_id, body.knowledge_base_texts, body.knowledge_base_urls, files)
        record = Record(knowledge_base_id=kb_id, knowledge_base_name=body.knowledge_base_name,
                        max_chunk_size=body.max_chunk_size, min_chunk_size=body.min_chunk_size,
                        enable_auto_refresh=body.enable_auto_refresh, created_ms=now_ms(), declared_in=declared_in)
        await self.store.create(record, staged)
        await self.store.due.schedule(kb_id)
        return await self.store.response(kb_id)

    async def add(self, kb_id: str, texts: list[KnowledgeBaseText], urls: list[str],
                  files: list[Upload]) -> KnowledgeBaseResponse:
        await self.store.snapshot(kb_id)   # NotFound first
        await self.store.add_sources(kb_id, self.stage(kb_id, texts, urls, files))
        await self.store.due.schedule(kb_id)
        return await self.store.response(kb_id)
