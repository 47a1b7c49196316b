"""The embedder's training pairs: pairs files, inverse-cloze mining and the benchmark hold-out
rule, which is the very one `make bench-rag` asks by."""

from __future__ import annotations

import json
import random
import re

import pytest

from bench.rag_bench import held_out
from training.config import EmbedderConfig
from training.data.embedder_pairs import (
    HeldOutFilter,
    bench_held_out,
    inverse_cloze_pairs,
    load_pairs,
    read_texts,
    training_pairs,
)
from training.data.formats import DataError

IDIOM_PAIRS = [
    ("比喻做了多余的事，反而不恰当", "画蛇添足"),
    ("比喻死守狭隘经验，不知变通", "守株待兔"),
    ("比喻出了问题以后想办法补救", "亡羊补牢"),
    ("比喻自己欺骗自己", "掩耳盗铃"),
    ("比喻见识狭窄的人", "井底之蛙"),
    ("比喻对不懂道理的人讲道理", "对牛弹琴"),
    ("比喻疑神疑鬼，妄自惊扰", "杯弓蛇影"),
    ("比喻口头上爱好某事物，实际上并不真爱好", "叶公好龙"),
    ("比喻违反事物发展的客观规律，急于求成", "拔苗助长"),
    ("比喻为了得到利益而不顾后果", "杀鸡取卵"),
    ("比喻事后采取措施已经晚了", "临渴掘井"),
    ("比喻做事有充分的把握", "胸有成竹"),
]


def test_pairs_file_with_a_missing_field_names_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="row 2"):
        load_pairs(path)


def test_read_texts_reads_the_pretraining_formats_in_file_order(tmp_path):
    rows = [{"text": f"第{i}段文字。"} for i in range(5)]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        "\n\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    txt = tmp_path / "corpus.txt"
    txt.write_text("甲段。\n\n乙段。\n", encoding="utf-8")
    assert read_texts(jsonl) == [r["text"] for r in rows]
    assert read_texts(jsonl, limit=2) == [rows[0]["text"], rows[1]["text"]]
    assert read_texts(txt) == ["甲段。", "乙段。"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好"}\n{"title": "没有正文"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="row 2"):
        read_texts(bad)


def test_the_training_filter_uses_the_benchmarks_held_out_rule():
    assert held_out is bench_held_out  # defined once, imported by the benchmark
    words = [meaning for meaning, _ in IDIOM_PAIRS] + [w for _, w in IDIOM_PAIRS]
    words += [f"成语{i}" for i in range(300)]
    assert [bench_held_out(w) for w in words] == [held_out(w) for w in words]
    assert 10 < sum(bench_held_out(w) for w in words) < 60  # about a tenth


def held_and_kept_words(n: int) -> tuple[list[str], list[str]]:
    held, kept = [], []
    for i in range(1000):
        word = f"测试成语{i:03d}"
        (held if bench_held_out(word) else kept).append(word)
    return held[:n], kept[:n]


def test_held_out_filter_drops_every_pair_and_text_about_a_benchmark_idiom():
    held, kept = held_and_kept_words(4)
    pairs = [(w, f"释义第{i}条，很长的解释内容") for i, w in enumerate(held[:3] + kept[:3])]
    pairs += [("别的词", f"意思同{held[0]}"), ("又一词", pairs[1][1])]
    # held[3] is no pair's anchor, only named by a pretraining record
    texts = [f"成语“{held[3]}”，读作…，意思是：……", f"成语“{kept[3]}”，意思是：……"]
    filt = HeldOutFilter(pairs, texts)
    assert filt.subjects == set(held)
    survivors = [p for p in pairs if filt.keeps(p)]
    assert survivors == pairs[3:6]  # own pairs, a mention, and a held explanation all dropped
    assert not filt.keeps_text(texts[0]) and filt.keeps_text(texts[1])
    assert not filt.keeps_text(f"小说里写到{held[3]}的故事")

    cfg = EmbedderConfig(ict_pairs=10)
    story = "刘备字玄德，涿郡人也。关羽字云长。张飞字翼德。三人在桃园结义，誓同生死。"
    texts += [
        story,
        "第一回 宴桃园豪杰三结义　斩黄巾英雄首立功。下一句。再一句话在这里。",
        "出处：小说里宴桃园豪杰三结义的故事。例句：他们也学着古人结义。",
    ]
    trained, counts = training_pairs(pairs, cfg, random.Random(0), texts=texts)
    assert counts["dropped_bench_held_out_pairs"] == 5
    assert counts["inverse_cloze_pairs"] >= 1
    text = "\n".join(a + p for a, p in trained)
    assert not any(w in text for w in held)
    assert "宴桃园" not in text  # chapter titles are the benchmark's other queries
    assert counts["dropped_bench_held_out_ict"] == 1  # the 出处 naming a chapter title


def test_inverse_cloze_pairs_take_one_sentence_out_of_its_context():
    texts = [
        "第一句话在这里。第二句话很重要！第三句话也不错？第四句话结束。",
        "只有一句话没有别的",
        "第三回 议温明董卓叱丁原　馈金珠李肃说吕布。后面还有正文内容。",
    ]
    pairs = inverse_cloze_pairs(texts, 10, random.Random(1), context_chars=30)
    assert len(pairs) == 1
    anchor, context = pairs[0]
    assert anchor in texts[0] and anchor not in context
    assert len(context) >= 8
    assert all(piece in texts[0] for piece in re.split("[。！？]", context))


@pytest.mark.slow
def test_no_benchmark_query_reaches_the_default_training_pairs(demo_data, demo_pkg_cache):
    """On the real demo data and the benchmark's own query sets: no held-out idiom, no query
    explanation and no chapter-title half occurs anywhere in what the default embedder trains on."""
    from bench.rag_bench import idiom_set, sanguo_set
    from training.data.demo_heldout import SubstringBlocker

    cfg = EmbedderConfig(
        pairs=str(demo_data / "embedder_pairs.jsonl"), ict_texts=str(demo_data / "pretrain.jsonl")
    )
    pairs, counts = training_pairs(load_pairs(cfg.pairs), cfg, random.Random(0))
    assert counts["inverse_cloze_pairs"] > 30_000
    texts = [a + "\n" + p for a, p in pairs]
    _, idiom_queries = idiom_set(demo_pkg_cache, 10**9)  # every held-out idiom, not just 500
    _, sanguo_queries = sanguo_set(demo_pkg_cache)
    idioms = {header[len("成语：") : -1] for _, header in idiom_queries}
    assert len(idioms) > 2500 and not idioms & {a for a, _ in pairs}
    needles = [
        (idioms, 3),
        ({q for q, _ in idiom_queries}, 6),
        ({h for t, _ in sanguo_queries for h in t.split(" ") if len(h) >= 4}, 4),
    ]
    for strings, k in needles:
        blocker = SubstringBlocker({s for s in strings if len(s) >= k}, k=k)
        assert not {hit for text in texts for hit in blocker.find(text)}
