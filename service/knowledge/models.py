"""Retell's knowledge-base shapes (retell-sdk's ``knowledge_base_response.py``, ``knowledge_base_create_params.py``,
``knowledge_base_add_sources_params.py``), with Parley's additive fields where Retell's shape has no place for
them: each source's ``status``, ``error_message`` and ``chunk_count``, and the knowledge base's
``error_messages`` (the name Retell's own documentation of ``status`` uses), ``chunk_count`` and
``embedding_model``.

Retell's clients send the create and add-sources bodies as ``multipart/form-data``: the name, the chunk sizes and
``enable_auto_refresh`` as plain fields, ``knowledge_base_texts`` and ``knowledge_base_urls`` as JSON text, and each
file as a ``knowledge_base_files`` part. ``CreateKnowledgeBase`` and ``AddSources`` are those bodies once read
(``api.knowledge``), and they document them in ``/openapi.json``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.retell.models import OBJECT_ID_PATTERN

MAX_FILES = 25
NAME_MAX_CHARS = 39          # Retell: "must be less than 40 characters"
DEFAULT_MAX_CHUNK = 2_000
DEFAULT_MIN_CHUNK = 400
KB_ID_PATTERN = OBJECT_ID_PATTERN

Status = Literal["in_progress", "complete", "error", "refreshing_in_progress"]
SourceStatus = Literal["pending", "complete", "error"]


class KnowledgeBaseText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1)


class _Parley(BaseModel):
    """Parley's additive fields on every source."""

    status: SourceStatus = Field(default="pending", description="Parley's: pending, complete or error")
    error_message: str | None = Field(default=None, description="Parley's: why the source could not be ingested")
    chunk_count: int = Field(default=0, description="Parley's: how many chunks the source was split into")


class DocumentSource(_Parley):
    type: Literal["document"] = "document"
    source_id: str
    filename: str
    file_url: str = Field(description="Parley's reference to the stored document (not a downloadable URL)")
    file_size: int
    content_sha256: str | None = Field(default=None, description="Parley's: the SHA-256 of the file's bytes")


class TextSource(_Parley):
    type: Literal["text"] = "text"
    source_id: str
    title: str
    content_url: str = Field(description="Parley's reference to the stored text (not a downloadable URL)")
    content_sha256: str | None = Field(default=None, description="Parley's: the SHA-256 of the text")


class UrlSource(_Parley):
    type: Literal["url"] = "url"
    source_id: str
    url: str


Source = Annotated[DocumentSource | TextSource | UrlSource, Field(discriminator="type")]


class KnowledgeBaseResponse(BaseModel):
    """Retell's knowledge-base object."""

    knowledge_base_id: str
    knowledge_base_name: str
    status: Status
    enable_auto_refresh: bool = False
    knowledge_base_sources: list[Source] = Field(default_factory=list)
    last_refreshed_timestamp: int | None = None
    max_chunk_size: int = DEFAULT_MAX_CHUNK
    min_chunk_size: int = DEFAULT_MIN_CHUNK
    error_messages: list[str] | None = Field(default=None, description="Parley's: why sources failed, one line each")
    chunk_count: int = Field(default=0, description="Parley's: the chunks searchable now")
    embedding_model: str | None = Field(default=None, description="Parley's: the model its vectors come from")


class _Sources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    knowledge_base_texts: list[KnowledgeBaseText] = Field(default_factory=list)
    knowledge_base_urls: list[Annotated[str, Field(pattern=r"^https?://", max_length=2_048)]] = Field(
        default_factory=list, max_length=100)
    knowledge_base_files: list[bytes] = Field(
        default_factory=list, max_length=MAX_FILES,
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
        description=f"Files (.txt, .md, .pdf, .docx, .html, .csv), at most {MAX_FILES}; each a multipart file part")


class AddSources(_Sources):
    """``POST /add-knowledge-base-sources/{id}`` (multipart/form-data)."""

    @model_validator(mode="after")
    def _something(self) -> AddSources:
        if not (self.knowledge_base_texts or self.knowledge_base_urls or self.knowledge_base_files):
            raise ValueError("give at least one of knowledge_base_texts, knowledge_base_urls, knowledge_base_files")
        return self


class CreateKnowledgeBase(_Sources):
    """``POST /create-knowledge-base`` (multipart/form-data)."""

    knowledge_base_name: str = Field(min_length=1, max_length=NAME_MAX_CHARS)
    max_chunk_size: int = Field(default=DEFAULT_MAX_CHUNK, ge=200, le=10_000)
    min_chunk_size: int = Field(default=DEFAULT_MIN_CHUNK, ge=1, le=10_000)
    enable_auto_refresh: bool = False

    @model_validator(mode="after")
    def _sizes(self) -> CreateKnowledgeBase:
        if self.min_chunk_size >= self.max_chunk_size:
            raise ValueError(f"min_chunk_size ({self.min_chunk_size}) must be less than max_chunk_size "
                             f"({self.max_chunk_size})")
        return self
