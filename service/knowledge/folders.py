"""Knowledge bases declared as folders: ``agents/knowledge/<knowledge base id>/``, loaded at start like agents.

A folder holds the knowledge base's files (``.md``, ``.txt``, ``.pdf``, ``.docx``, ``.html``, ``.csv``), each one
source, and may hold ``knowledge-base.yaml`` for the rest: ``knowledge_base_name`` (default: the folder's name),
``max_chunk_size``, ``min_chunk_size``, ``enable_auto_refresh``, ``knowledge_base_urls``. The folder's name is
the knowledge base's id, which agents name in ``knowledge_base_ids``.

``load`` validates every folder (``parley check`` prints its problems; ``parley serve`` stops on them) and
``publish`` stores them at start: a new folder is created, a file whose bytes changed (or every file, when the
chunk sizes changed) is ingested again, a file or URL that is gone is deleted. A file keeps its source id
(derived from its name), so its chunks are replaced, not added to. Declared knowledge bases are read-only
through the API (409).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.errors import ConfigError, NotFound
from service.knowledge import parsing
from service.knowledge.bases import KnowledgeBases, Upload, sha256
from service.knowledge.models import CreateKnowledgeBase, DocumentSource, UrlSource
from service.knowledge.store import Record
from service.retell.flows import ConversationNode
from service.retell.models import OBJECT_ID_PATTERN, ChatAgent
from service.settings import Settings
from service.validation import describe

FOLDER = "knowledge"
SETTINGS_FILE = "knowledge-base.yaml"


@dataclass
class Folder:
    kb_id: str
    path: Path
    body: CreateKnowledgeBase
    files: list[Upload]


@dataclass
class DeclaredKnowledge:
    bases: dict[str, Folder] = field(default_factory=dict)

    def declared_in(self, kb_id: str) -> Path | None:
        found = self.bases.get(kb_id)
        return found.path if found else None


def file_source_id(name: str) -> str:
    """A folder's source id for a file name or a URL: the same in every process, so two that start together
    write one source, not two."""
    return "file_" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _folder(path: Path, problems: list[str]) -> Folder | None:
    if not re.fullmatch(OBJECT_ID_PATTERN, path.name):
        problems.append(f"{path}: a knowledge base's folder is named by its id: 1 to 128 letters, digits, '_', '.' "
                        "or '-'")
        return None
    data: Any = {}
    settings_file = path / SETTINGS_FILE
    if settings_file.is_file():
        try:
            data = yaml.safe_load(settings_file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            problems.append(f"{settings_file}: not valid YAML: {exc}")
            return None
        if not isinstance(data, dict):
            problems.append(f"{settings_file}: expected a mapping of knowledge_base_name, max_chunk_size, "
                            f"min_chunk_size, enable_auto_refresh, knowledge_base_urls; got {type(data).__name__}")
            return None
    files: list[Upload] = []
    for item in sorted(path.iterdir()):
        if item.name == SETTINGS_FILE or item.name.startswith(".") or not item.is_file():
            continue
        if item.suffix.lower() not in parsing.SUFFIXES:
            problems.append(f"{item}: Parley reads {', '.join(parsing.SUFFIXES)} files in a knowledge base's folder")
            continue
        files.append(Upload(item.name, item.read_bytes()))
    try:
        body = CreateKnowledgeBase.model_validate({"knowledge_base_name": path.name[:39], **data})
    except ValidationError as exc:
        problems.extend(f"{settings_file}: {line}" for line in describe(exc))
        return None
    if not files and not body.knowledge_base_urls:
        problems.append(f"{path}: holds no files and {SETTINGS_FILE} lists no knowledge_base_urls")
        return None
    return Folder(path.name, path, body, files)


def load(settings: Settings) -> DeclaredKnowledge:
    """Every folder under ``<agents dir>/knowledge/``, validated; ``ConfigError`` listing every problem."""
    declared = DeclaredKnowledge()
    root = settings.agents_dir / FOLDER
    if not root.is_dir():
        return declared
    problems: list[str] = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folder = _folder(path, problems)
        if folder is not None:
            declared.bases[folder.kb_id] = folder
    if problems:
        raise ConfigError("invalid knowledge-base folders:\n  " + "\n  ".join(problems))
    return declared


async def publish(bases: KnowledgeBases, declared: DeclaredKnowledge) -> None:
    """Store what the folders declare (see the module's docstring)."""
    for folder in declared.bases.values():
        try:
            snap = await bases.store.snapshot(folder.kb_id)
        except NotFound:
            await bases.create(folder.body, [], kb_id=folder.kb_id, declared_in=str(folder.path))
            snap = await bases.store.snapshot(folder.kb_id)
        body, record = folder.body, snap.record
        resized = (record.max_chunk_size, record.min_chunk_size) != (body.max_chunk_size, body.min_chunk_size)
        await bases.store.put_record(Record(
            knowledge_base_id=folder.kb_id, knowledge_base_name=body.knowledge_base_name,
            max_chunk_size=body.max_chunk_size, min_chunk_size=body.min_chunk_size,
            enable_auto_refresh=body.enable_auto_refresh, created_ms=record.created_ms,
            last_refreshed_timestamp=record.last_refreshed_timestamp, declared_in=str(folder.path),
            ingested_once=record.ingested_once))
        wanted = {file_source_id(f.filename): f for f in folder.files}
        changed = [f for sid, f in wanted.items() if resized or not _same(snap.sources.get(sid), f.data)]
        staged = bases.stage(folder.kb_id, [], [], changed, {f.filename: file_source_id(f.filename) for f in changed})
        # A replaced source keeps its chunk count, so its commit removes the chunks the new text no longer has.
        staged = [(s.model_copy(update={"chunk_count": snap.sources[s.source_id].chunk_count})
                   if s.source_id in snap.sources else s, raw) for s, raw in staged]
        urls = {s.url: sid for sid, s in snap.sources.items() if isinstance(s, UrlSource)}
        new_urls = [u for u in body.knowledge_base_urls if u not in urls]
        staged += bases.stage(folder.kb_id, [], new_urls, [], {url: file_source_id(url) for url in new_urls})
        await bases.store.add_sources(folder.kb_id, staged)
        if resized:   # new chunk sizes: the URL sources are cut again too
            for source in snap.sources.values():
                if isinstance(source, UrlSource) and source.url in body.knowledge_base_urls:
                    await bases.store.put_source(folder.kb_id, source.model_copy(update={"status": "pending"}))
        for sid, source in snap.sources.items():
            gone_file = isinstance(source, DocumentSource) and sid not in wanted
            gone_url = isinstance(source, UrlSource) and source.url not in body.knowledge_base_urls
            if gone_file or gone_url or not isinstance(source, DocumentSource | UrlSource):
                await bases.store.delete_source(folder.kb_id, sid)
        if staged or resized:
            await bases.store.due.schedule(folder.kb_id)


def named_by(agent: ChatAgent) -> set[str]:
    """The knowledge bases an agent file's engine names: its Retell LLM's, or its flow's and its nodes' (its
    local components' included)."""
    if agent.retell_llm is not None:
        return set(agent.retell_llm.knowledge_base_ids or [])
    flow = agent.conversation_flow
    if flow is None:
        return set()
    graphs = [flow, *flow.components]
    return set(flow.knowledge_base_ids).union(*(n.knowledge_base_ids for g in graphs for n in g.nodes
                                                if isinstance(n, ConversationNode)))


def unknown(declared: DeclaredKnowledge, agents: dict[str, ChatAgent]) -> list[tuple[str, str]]:
    """(agent id, knowledge base id) for each knowledge base an agent file names that no folder declares: it works
    only if the API created it (else it is searched as empty), so ``parley check`` and the start warn."""
    return sorted((agent_id, kb_id) for agent_id, agent in agents.items() for kb_id in named_by(agent)
                  if kb_id not in declared.bases)


def _same(source: object, data: bytes) -> bool:
    return isinstance(source, DocumentSource) and source.content_sha256 == sha256(data)
