"""The benchmark's new query kind and its baselines (bench/rag_bench.py), on tiny data."""

from types import SimpleNamespace

import pytest

from bench.rag_bench import (
    BenchChunk,
    BM25Baseline,
    TfidfBaseline,
    baseline_metrics,
    first_relevant,
    news_from_tagged,
    overlaps,
    rank_metrics,
    split_half,
)

TAGGED = [
    # three sentences; the second names the most proper nouns (江泽民, 北京, 新华社)
    "今天/t  天气/n  很/d  好/a  。/w  江/nr  泽民/nr  在/p  北京/ns  会见/v  新华社/nt  记者/n  代表/n  。/w  "
    "大家/r  都/d  很/d  高兴/a  地/u  回家/v  去/v  了/y  。/w",
    "只有/c  两/m  句/q  。/w  北京/ns  上海/ns  很/d  大/a  。/w",  # too short to ask about
]


def test_news_query_is_the_name_heaviest_sentence_and_is_removed_from_its_paragraph():
    files, queries = news_from_tagged(TAGGED, per_file=10)
    assert len(files) == 1 and len(queries) == 1
    query, (name, start, end) = queries[0]
    text = files[0][1].decode("utf-8")
    assert query == "江泽民在北京会见新华社记者代表。"
    assert query not in text  # never matches its own text verbatim
    assert text[start:end] == "今天天气很好。大家都很高兴地回家去了。"
    assert text.splitlines()[1] == "只有两句。北京上海很大。"
    assert name == files[0][0]
    hit = SimpleNamespace(filename=name, start=end - 3, end=end + 20)
    assert overlaps(hit, (name, start, end))
    assert not overlaps(SimpleNamespace(filename=name, start=end, end=end + 5), (name, start, end))


def test_split_half_is_disjoint_complete_and_independent_of_order():
    queries = [(f"问题{i}", i) for i in range(40)]
    dev, test = split_half(queries)
    assert dev and test and not {q for q, _ in dev} & {q for q, _ in test}
    assert len(dev) + len(test) == 40
    assert split_half(queries[::-1])[0] == dev[::-1]


CHUNKS = [
    BenchChunk("a.txt", "刘备关羽张飞桃园结义", 0, 10),
    BenchChunk("b.txt", "诸葛亮草船借箭", 0, 7),
    BenchChunk("c.txt", "今天天气很好", 0, 6),
]


@pytest.mark.parametrize("baseline", [TfidfBaseline, BM25Baseline])
def test_baselines_rank_the_planted_chunk_first(baseline):
    ranker = baseline(CHUNKS)
    queries = [("桃园结义", "a.txt"), ("草船借箭", "b.txt"), ("天气", "c.txt"), ("龘", "c.txt")]
    metrics = baseline_metrics(ranker, CHUNKS, queries, lambda c, name: c.filename == name)
    # the last query shares nothing with any chunk: it must count as a miss, not a lucky rank
    assert metrics["recall@1"] == pytest.approx(0.75)
    assert metrics["mrr"] == pytest.approx(0.75)


def test_length_fair_recall_counts_characters_returned_before_the_first_relevant_chunk():
    def rank(sizes: list[int], relevant_at: int | None):
        items = [("字" * size, i == relevant_at) for i, size in enumerate(sizes)]
        return first_relevant(items, lambda item, _: item, None)

    # found second behind one 2,000-character chunk; third behind two short ones; never
    behind_long, behind_short, missed = (
        rank([2000, 300], 1),
        rank([100, 100, 300], 2),
        rank([50], None),
    )
    assert behind_long == (2, 2000) and behind_short == (3, 200) and missed == (None, None)
    ranks, offsets = zip(behind_long, behind_short, missed, strict=True)
    row = rank_metrics(list(ranks), list(offsets))
    # recall@1 sees neither; recall@5 both; by characters returned only the one behind short
    # chunks is within 1,500, both within 3,000
    assert row["recall@1"] == 0 and row["recall@5"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["recall@1500ch"] == pytest.approx(1 / 3, abs=1e-4)
    assert row["recall@3000ch"] == pytest.approx(2 / 3, abs=1e-4)
