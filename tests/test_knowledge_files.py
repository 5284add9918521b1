"""Sources as text and as chunks: each file format through its library (a PDF, a Word document, HTML, CSV,
Markdown); chunks within min/max size, cut at headings, then paragraphs, then sentences, each keeping its
source's title; knowledge bases declared as folders under agents/knowledge/, loaded at start, re-ingested when a
file changes, read-only through the API, and checked by ``parley check``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import docx
import pytest
import yaml

from service.errors import SourceError
from service.knowledge.chunking import chunk
from service.knowledge.parsing import kind_of, text_of

from .conftest import MakeParley, agent_file
from .test_knowledge_api import until_done


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text is ``lines`` (Helvetica), with a correct cross-reference table."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write("".join(f"{o:010d} 00000 n \n" for o in offsets).encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def word_document() -> bytes:
    document = docx.Document()
    document.add_heading("Insurance", level=1)
    document.add_paragraph("We accept Delta Dental and Aetna PPO.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_each_format_is_read_by_its_library() -> None:
    pdf = text_of(minimal_pdf(["Cleaning costs $120.", "Whitening costs $350."]), ".pdf", "prices.pdf")
    assert "Cleaning costs $120." in pdf and "Whitening costs $350." in pdf
    word = text_of(word_document(), ".docx", "insurance.docx")
    assert word.startswith("# Insurance") and "Aetna PPO" in word
    html = text_of(b"<html><head><style>p {}</style></head><body><nav>Menu</nav><h2>Hours</h2><p>Open 9 to 5."
                   b"</p><script>alert(1)</script></body></html>", ".html", "page.html")
    assert "## Hours" in html and "Open 9 to 5." in html
    assert "alert" not in html and "Menu" not in html and "p {}" not in html
    csv = text_of(b"service,price\ncleaning,$120\nwhitening,$350\n", ".csv", "prices.csv")
    assert csv == "service: cleaning; price: $120\n\nservice: whitening; price: $350"
    assert text_of("# Títle\n\nbody".encode(), ".md", "a.md") == "# Títle\n\nbody"


def test_what_cannot_be_read_says_why() -> None:
    with pytest.raises(SourceError, match=r"'a\.exe': Parley reads"):
        kind_of("a.exe")
    assert kind_of(None, "text/html; charset=utf-8") == ".html"
    with pytest.raises(SourceError, match=r"broken\.pdf: could not be read as pdf"):
        text_of(b"%PDF-1.4 not really", ".pdf", "broken.pdf")
    with pytest.raises(SourceError, match=r"broken\.docx: could not be read as docx"):
        text_of(b"PK not a zip", ".docx", "broken.docx")
    broken_word = io.BytesIO()
    with zipfile.ZipFile(broken_word, "w") as archive:   # a .docx whose XML is broken: lxml's own error
        archive.writestr("[Content_Types].xml", "<Types><broken")
    with pytest.raises(SourceError, match=r"broken\.docx: could not be read as docx"):
        text_of(broken_word.getvalue(), ".docx", "broken.docx")
    with pytest.raises(SourceError, match="holds no text"):
        text_of(b"   \n", ".txt", "empty.txt")


def test_chunks_keep_within_their_sizes_and_cut_at_headings_paragraphs_then_sentences() -> None:
    sentences = " ".join(f"Sentence {n} says something about teeth and gums." for n in range(40))   # ~1,900 chars
    text = (f"# Hours\n\nOpen 9 to 5 on weekdays.\n\n# Parking\n\nFree parking behind the building.\n\n"
            f"# Prices\n\n{sentences}\n\nA short closing paragraph.")
    pieces = chunk(text, "Office", min_size=100, max_size=600)
    sizes = [len(p.text) for p in pieces]
    assert all(size <= 600 for size in sizes), sizes
    # A chunk under min_size is one that fits with neither neighbour.
    for n, size in enumerate(sizes):
        if size < 100:
            assert all(size + 2 + sizes[m] > 600 for m in (n - 1, n + 1) if 0 <= m < len(sizes)), sizes
    # The two short sections are merged rather than standing alone, their headings kept; then Prices.
    assert pieces[0].title == "Office › Hours"
    assert pieces[0].text == "# Hours\n\nOpen 9 to 5 on weekdays.\n\n# Parking\n\nFree parking behind the building."
    assert pieces[1].title == "Office › Prices" and pieces[1].text.startswith("# Prices\n\nSentence 0 says")
    assert "gums. Sentence 1 says" in pieces[1].text   # sentences of one paragraph joined as they were
    assert all(p.text.endswith(".") for p in pieces)   # cut between sentences, never inside one
    words = "word " * 500
    hard = chunk(words, "T", min_size=10, max_size=300)
    assert all(len(p.text) <= 300 for p in hard) and "".join(p.text.replace(" ", "") for p in hard) == \
        words.replace(" ", "")
    assert [p.text for p in chunk("One paragraph.", "T", min_size=400, max_size=2000)] == ["One paragraph."]


async def test_a_folder_declares_a_knowledge_base_loaded_at_start_and_re_ingested_when_changed(
        make_parley: MakeParley, tmp_path: Path) -> None:
    folder = tmp_path / "agents" / "knowledge" / "dental"
    folder.mkdir(parents=True)
    (folder / "hours.md").write_text("# Hours\n\nOpen Monday to Friday, 8am to 6pm.\n")
    (folder / "prices.pdf").write_bytes(minimal_pdf(["A cleaning costs $120."]))
    (folder / "knowledge-base.yaml").write_text("knowledge_base_name: Dental office\nmin_chunk_size: 50\n")
    parley = await make_parley()
    kb = await until_done(parley, "dental")
    assert kb["knowledge_base_name"] == "Dental office" and kb["status"] == "complete"
    assert sorted(s["filename"] for s in kb["knowledge_base_sources"]) == ["hours.md", "prices.pdf"]
    hours_id = next(s["source_id"] for s in kb["knowledge_base_sources"] if s["filename"] == "hours.md")
    response = await parley.api("DELETE", "/delete-knowledge-base/dental")
    assert response.status == 409 and "agents/knowledge/dental" in (await response.json())["message"]

    await parley.client.close()
    (folder / "hours.md").write_text("# Hours\n\nOpen Monday to Saturday, 7am to 7pm.\n")
    (folder / "prices.pdf").unlink()
    parley.llm.embedded.clear()
    again = await make_parley()
    kb = await until_done(again, "dental")
    assert [(s["filename"], s["source_id"]) for s in kb["knowledge_base_sources"]] == [("hours.md", hours_id)]
    assert [t for t in again.llm.embedded if "Saturday" in t]   # only the changed file was embedded again
    chunks = await again.redis.hvals("parley:{kb:dental}:chunks")
    assert len(chunks) == 1 and "Saturday" in chunks[0]


def test_parley_check_names_a_bad_folder(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    (agents / "knowledge" / "bad kb").mkdir(parents=True)
    (agents / "knowledge" / "bad kb" / "a.md").write_text("x")
    (agents / "knowledge" / "empty").mkdir()
    (agents / "knowledge" / "odd").mkdir()
    (agents / "knowledge" / "odd" / "a.exe").write_bytes(b"MZ")
    (agents / "knowledge" / "odd" / "knowledge-base.yaml").write_text("max_chunk_size: 5\n")
    (agents / "frontdesk.yaml").write_text(yaml.safe_dump(agent_file()))
    env = {**os.environ, "PARLEY_AGENTS_DIR": str(agents)}
    result = subprocess.run([sys.executable, "-m", "service", "check"], env=env, capture_output=True, text=True,
                            check=False, cwd=Path(__file__).parent.parent)
    assert result.returncode != 0
    assert "bad kb: a knowledge base's folder is named by its id" in result.stderr
    assert "empty: holds no files" in result.stderr
    assert "a.exe: Parley reads .txt" in result.stderr
    assert "max_chunk_size" in result.stderr



def test_parley_check_warns_of_a_knowledge_base_no_folder_declares(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    (agents / "knowledge" / "dental").mkdir(parents=True)
    (agents / "knowledge" / "dental" / "hours.md").write_text("# Hours\n\nOpen 9 to 5.")
    (agents / "frontdesk.yaml").write_text(yaml.safe_dump(agent_file(retell_llm={
        "knowledge_base_ids": ["dental", "made_by_the_api"]})))
    env = {**os.environ, "PARLEY_AGENTS_DIR": str(agents)}
    result = subprocess.run([sys.executable, "-m", "service", "check"], env=env, capture_output=True, text=True,
                            check=False, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert "knowledge base 'made_by_the_api' is declared by no folder" in result.stdout
    assert "'dental'" not in result.stdout
    assert "1 knowledge base folder(s)" in result.stdout
