"""A source's bytes as text, through well-kept libraries: pypdf (PDF), python-docx (Word), Beautiful Soup with lxml
(HTML), the csv module (CSV); Markdown and plain text are read as they are (Markdown's headings are what the
chunker looks for).

The kind is told by the file name's suffix, else the content type a URL answered with. Headings survive as
Markdown headings (``# ...``) wherever the format has them (HTML ``h1``-``h6``, Word's Heading styles), so the
chunker can cut there. Anything a parser cannot read is a ``SourceError`` naming the file and why; it is
recorded on the source, never raised to a client.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePath

from service.errors import SourceError

SUFFIXES = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm", ".csv")
CONTENT_TYPES = {
    "text/plain": ".txt", "text/markdown": ".md", "text/x-markdown": ".md", "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "text/html": ".html", "application/xhtml+xml": ".html", "text/csv": ".csv",
}
# HTML elements whose text is not content.
_NOT_CONTENT = ("script", "style", "noscript", "nav", "footer", "header", "form", "svg", "iframe", "template")


def kind_of(filename: str | None, content_type: str | None = None) -> str:
    """The suffix that names how to read a source; ``SourceError`` when Parley reads neither its name's suffix
    nor its content type."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in SUFFIXES:
        return suffix
    if content_type and (found := CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())):
        return found
    what = f"{filename!r}" if filename else "the source"
    raise SourceError(f"{what}: Parley reads {', '.join(SUFFIXES)} files (or text/html, text/plain, "
                      f"application/pdf... URLs){f'; it is {content_type}' if content_type else ''}")


def text_of(data: bytes, kind: str, name: str) -> str:
    """The text of ``data`` read as ``kind`` (a suffix from ``kind_of``); ``SourceError`` when it cannot be read
    or holds no text."""
    try:
        if kind == ".pdf":
            text = _pdf(data)
        elif kind == ".docx":
            text = _docx(data)
        elif kind in (".html", ".htm"):
            text = _html(data)
        elif kind == ".csv":
            text = _csv(_decode(data))
        else:
            text = _decode(data)
    except SourceError:
        raise
    except Exception as exc:   # the boundary: see below
        # The bytes are a user's, and the parsers raise what their internals meet on a broken file (ValueError,
        # struct.error, lxml's XMLSyntaxError, zipfile.BadZipFile, RecursionError...): whatever it is, it is this
        # file that cannot be read, said on its source, and never the ingestion loop's end.
        raise SourceError(f"{name}: could not be read as {kind.lstrip('.')}: {type(exc).__name__}: {exc}") from exc
    text = re.sub(r"[ \t\r\f\v]+\n", "\n", text).strip()
    if not text:
        raise SourceError(f"{name}: holds no text (a scanned PDF needs OCR first)")
    return text


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader  # imported when a PDF comes: most processes never read one
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise SourceError("the PDF is encrypted: upload it without a password")
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except PyPdfError as exc:
        raise ValueError(str(exc)) from exc


def _docx(data: bytes) -> str:
    import docx

    document = docx.Document(io.BytesIO(data))
    lines: list[str] = []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        level = re.fullmatch(r"Heading (\d)", style)
        text = paragraph.text.strip()
        if text:
            lines.append(f"{'#' * int(level.group(1))} {text}" if level else text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return "\n\n".join(lines)


def _html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "lxml")
    for element in soup(_NOT_CONTENT):
        element.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            heading.replace_with(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n")
    for block in soup.find_all(["p", "li", "tr", "div", "br", "section", "article"]):
        block.insert_after("\n\n" if block.name != "br" else "\n")
    body = soup.body or soup
    return re.sub(r"\n{3,}", "\n\n", body.get_text(""))


def _csv(text: str) -> str:
    """Each row as ``header: value`` pairs on one line, a paragraph each: a row is one fact, kept whole."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    header, *body = rows
    if not body:
        return ", ".join(header)
    return "\n\n".join("; ".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value)
                       for row in body)
