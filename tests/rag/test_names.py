import pytest

from rag.errors import InvalidInput
from rag.names import validate_filename, validate_kb_name


@pytest.mark.parametrize("name", ["demo", "my-kb_2", "v1.0", "知识库", "a" * 64])
def test_good_kb_names(name):
    assert validate_kb_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", "a..b", "../etc", ".hidden", "a" * 65, "a\x00b", "a b", "/abs"]
)
def test_bad_kb_names(name):
    with pytest.raises(InvalidInput):
        validate_kb_name(name)


@pytest.mark.parametrize("name", ["notes.txt", "笔记 2024.pdf", "a.b.docx"])
def test_good_filenames(name):
    assert validate_filename(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../secret.txt",
        "a/../../b.txt",
        "/etc/passwd.txt",
        "C:\\x.txt",
        "..\\x.txt",
        "a\x00.txt",
        "",
        "..",
        "x\n.txt",
    ],
)
def test_bad_filenames(name):
    with pytest.raises(InvalidInput):
        validate_filename(name)
