"""Test documents built in-process: PDFs (CJK text through a ToUnicode map), docx, zip bombs,
and Chinese texts to save as BOM-less UTF-16 (Windows "Unicode" text files)."""

from __future__ import annotations

import io
import zipfile
import zlib

# Too little ASCII for NUL bytes to betray UTF-16: pure Chinese, Chinese with ASCII and CRLF
# lines, Traditional Chinese.
UTF16_CHINESE = {
    "pure": "话说天下大势，分久必合。" * 20,
    "mixed-crlf": "第1回 宴桃园豪杰三结义\r\n话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。\r\n"
    * 5,
    "traditional": "話說天下大勢，分久必合，合久必分。周末七國分爭，并入於秦。及秦滅之後，楚、漢分爭，又并入於漢。",
}


def make_pdf(pages: list[str], padding: int = 0) -> bytes:
    """A minimal PDF whose pages show `pages` (one line per `\\n`) in a CID font with a ToUnicode
    map, so text extraction returns the exact Chinese text. No glyphs are embedded. With
    `padding`, each page's content stream is Flate-compressed and ends in that many spaces (a
    decompression bomb when large: 80 MB of spaces compress to about 80 KB)."""
    chars = sorted({ch for page in pages for ch in page if ch != "\n"})
    cmap_lines = [f"<{ord(ch):04X}> <{ord(ch):04X}>" for ch in chars]
    cmap = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{len(cmap_lines)} beginbfchar\n" + "\n".join(cmap_lines) + "\nendbfchar\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end"
    )
    objects: list[bytes] = []

    def add(body: str | bytes) -> int:
        objects.append(body.encode("latin-1") if isinstance(body, str) else body)
        return len(objects)

    def stream(data: str) -> bytes:
        raw = data.encode("latin-1")
        return b"<< /Length %d >>\nstream\n" % len(raw) + raw + b"\nendstream"

    catalog = add("")  # filled in below
    pages_obj = add("")
    cmap_obj = add(stream(cmap))
    descriptor = add(
        "<< /Type /FontDescriptor /FontName /XiaoSong /Flags 4 /FontBBox [0 0 1000 1000] "
        "/ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 700 /StemV 80 >>"
    )
    cid_font = add(
        "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /XiaoSong "
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
        f"/FontDescriptor {descriptor} 0 R /DW 1000 /CIDToGIDMap /Identity >>"
    )
    font = add(
        f"<< /Type /Font /Subtype /Type0 /BaseFont /XiaoSong /Encoding /Identity-H "
        f"/DescendantFonts [{cid_font} 0 R] /ToUnicode {cmap_obj} 0 R >>"
    )
    page_ids = []
    for text in pages:
        ops = ["BT", "/F1 12 Tf", "50 780 Td"]
        for line in text.split("\n"):
            hexed = "".join(f"{ord(ch):04X}" for ch in line)
            ops += [f"<{hexed}> Tj", "0 -18 Td"]
        ops.append("ET")
        if padding:
            packed = zlib.compress(("\n".join(ops) + " " * padding).encode("latin-1"), 9)
            content = add(
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed)
                + packed
                + b"\nendstream"
            )
        else:
            content = add(stream("\n".join(ops)))
        page_ids.append(
            add(
                f"<< /Type /Page /Parent {pages_obj} 0 R /MediaBox [0 0 595 842] "
                f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {content} 0 R >>"
            )
        )
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_obj} 0 R >>".encode()
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects[pages_obj - 1] = f"<< /Type /Pages /Kids [{kids}] /Count {len(page_ids)} >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, catalog, xref)
    )
    return out.getvalue()


def encrypt_pdf(data: bytes, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(paragraphs: list[str]) -> bytes:
    import docx

    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_zip_bomb_docx(unpacked_bytes: int) -> bytes:
    """A small .docx-shaped zip whose document.xml unpacks to `unpacked_bytes` of zeros."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as fh:
            block = b"0" * (1 << 20)
            for _ in range(unpacked_bytes // len(block)):
                fh.write(block)
    return out.getvalue()
