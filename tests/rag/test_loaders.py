import json

import pytest

from rag.errors import InvalidInput, TooLarge
from rag.loaders import load_bytes
from tests.rag.files import UTF16_CHINESE, encrypt_pdf, make_docx, make_pdf, make_zip_bomb_docx

TEXT = "守株待兔比喻死守狭隘经验，不知变通。"


@pytest.mark.parametrize("ext", [".txt", ".md", ".markdown"])
def test_plain_text_files_keep_their_text(ext):
    loaded = load_bytes(("# 标题\n\n" + TEXT).encode("gbk"), "notes" + ext)
    assert loaded.pages[0].page_content == "# 标题\n\n" + TEXT
    assert loaded.encoding == "gb18030"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_windows_unicode_text_without_bom_is_read(encoding):
    text = UTF16_CHINESE["pure"]
    loaded = load_bytes(text.encode(encoding), "三国演义.txt")
    assert loaded.pages[0].page_content == text
    assert loaded.encoding == encoding


def test_pdf_pages_are_separate_documents_with_page_numbers():
    loaded = load_bytes(make_pdf(["第一页：" + TEXT, "第二页：画蛇添足。"]), "book.pdf")
    assert [d.metadata["page"] for d in loaded.pages] == [1, 2]
    assert TEXT in loaded.pages[0].page_content
    assert "画蛇添足" in loaded.pages[1].page_content
    assert loaded.format == "pdf"


def test_docx_paragraphs_are_read():
    loaded = load_bytes(make_docx(["第一段：" + TEXT, "第二段：画蛇添足。"]), "report.docx")
    assert TEXT in loaded.pages[0].page_content and "画蛇添足" in loaded.pages[0].page_content


def test_html_drops_markup_and_scripts():
    html = f"<html><head><meta charset='gbk'><style>p{{}}</style><script>var x='脚本';</script></head><body><h1>标题</h1><p>{TEXT}</p></body></html>"
    loaded = load_bytes(html.encode("gbk"), "page.html")
    text = loaded.pages[0].page_content
    assert "标题" in text and TEXT in text and "脚本" not in text and "<p>" not in text
    assert loaded.encoding == "gb18030"


def test_csv_rows_become_key_value_lines():
    data = "成语,释义\n守株待兔,死守狭隘经验\n画蛇添足,做了多余的事\n".encode("utf-8-sig")
    text = load_bytes(data, "idioms.csv").pages[0].page_content
    assert text.splitlines() == [
        "成语: 守株待兔；释义: 死守狭隘经验",
        "成语: 画蛇添足；释义: 做了多余的事",
    ]


def test_json_and_jsonl_records_become_text():
    records = [
        {"word": "守株待兔", "meaning": "死守狭隘经验"},
        {"word": "画蛇添足", "tags": ["寓言"]},
    ]
    text = (
        load_bytes(json.dumps(records, ensure_ascii=False).encode("utf-16"), "a.json")
        .pages[0]
        .page_content
    )
    assert "word: 守株待兔；meaning: 死守狭隘经验" in text and '["寓言"]' in text
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode()
    assert load_bytes(lines, "a.jsonl").pages[0].page_content.count("\n") == 1


@pytest.mark.parametrize(
    ("data", "name", "match"),
    [
        (b"", "empty.txt", "empty"),
        (b"   \n\n ", "blank.txt", "no text"),
        (bytes(range(256)) * 20, "junk.txt", "binary"),
        (b"hello", "tool.exe", "unsupported file type"),
        (b"hello", "README", "unsupported file type"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog", "broken.pdf", "not a readable PDF"),
        (b"not a zip at all", "fake.docx", "not a readable .docx"),
        (b"{oops", "bad.json", "not valid JSON"),
        (b'{"a": 1}\n{oops', "bad.jsonl", "line 2"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(data, name, match):
    with pytest.raises(InvalidInput, match=match):
        load_bytes(data, name)


def test_encrypted_pdf_is_rejected():
    with pytest.raises(InvalidInput, match="encrypted"):
        load_bytes(encrypt_pdf(make_pdf([TEXT])), "secret.pdf")


def test_zip_bomb_docx_is_refused_before_unpacking():
    bomb = make_zip_bomb_docx(8 << 20)
    assert len(bomb) < 100_000
    with pytest.raises(TooLarge, match="unpacks to"):
        load_bytes(bomb, "bomb.docx", max_unzipped_bytes=1 << 20)


def test_pdf_decompression_bomb_is_refused():
    bomb = make_pdf([TEXT], padding=80 << 20)  # one content stream inflating to 80 MB
    assert len(bomb) < 200_000
    with pytest.raises(TooLarge, match="decompression bomb"):
        load_bytes(bomb, "bomb.pdf")


def test_pdf_text_beyond_the_unpacked_limit_is_refused():
    pdf = make_pdf([TEXT] * 3)
    assert len(load_bytes(pdf, "ok.pdf").pages) == 3
    with pytest.raises(TooLarge, match="XIAOPHI_KB_MAX_UNZIPPED_BYTES"):
        load_bytes(pdf, "long.pdf", max_unzipped_bytes=len(TEXT.encode()) * 2)
