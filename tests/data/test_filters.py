"""Each document filter on crafted examples: one that must pass and ones that must fail for a named reason."""

import sysconfig
from pathlib import Path

import pytest

from lmstack.data.clean import (CodeFilter, FiltersConfig, GopherQualityFilter, GopherRepetitionFilter,
                                LanguageFilter, LengthConfig, LengthFilter, MetadataConfig, MetadataFilter,
                                StopWordFilter, annotate, apply_filters, build_filters, dup_ngram_char_fraction,
                                normalize_text, top_ngram_char_fraction)
from lmstack.data.text import detect_kind, detect_script, split_sentences, words

PROSE = ("The history of the river valley is long and full of surprises. Farmers settled there because the soil "
         "was rich, and they built small villages with wooden houses. Over the centuries the villages grew into "
         "towns, and the towns became trading centres that were connected to the coast by roads. Merchants carried "
         "grain, wool and salt to the harbour, and they brought back tools, cloth and news from distant places. "
         "Today the valley is known for its orchards and for the old stone bridge that still crosses the river.")
CHINESE = ("这座城市位于河流的南岸，历史非常悠久。很多年前，农民在这里种植水稻和蔬菜，他们的生活简单而安静。"
           "后来，商人们沿着河流来到这里，建立了市场和码头。城市慢慢变大了，人们修建了学校、医院和图书馆。"
           "今天，这里是一个热闹的地方，每年都有很多游客来参观古老的桥和美丽的花园。我们都很喜欢这座城市。")


def doc(text, **kw):
    return annotate({"text": text, "source": "t", "id": "x", **kw})


def test_cjk_words_one_character_each():
    assert words("我爱Python编程，真的！ Hello, world") == ["我", "爱", "Python", "编", "程", "真", "的", "Hello,", "world"]
    assert split_sentences("Hello there. How are you? 我很好。你呢？好的！") == [
        "Hello there.", "How are you?", "我很好。", "你呢？", "好的！"]


def test_script_and_code_detection():
    assert detect_script(PROSE) == "en"
    assert detect_script(CHINESE) == "zh"
    assert detect_script("The cat 猫 sat 坐 on the mat 垫子 today 今天") == "mixed"
    assert detect_kind(PROSE) == "prose" and detect_kind(CHINESE) == "prose"
    code = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert detect_kind(code) == "code"


def test_length_filter():
    f = LengthFilter(LengthConfig(min_chars=20, max_chars=1000, min_words=5, max_words=100))
    assert f.keep(doc(PROSE[:200])) is True
    assert f.keep(doc("too short")) == "length:too_few_chars"
    assert f.keep(doc("x" * 2000)) == "length:too_many_chars"
    assert f.keep(doc("supercalifragilistic expialidocious")) == "length:too_few_words"
    assert f.seen == 4 and f.kept == 1 and sum(f.removed.values()) == 3
    assert f.examples["length:too_few_chars"][0].endswith("too short")


def test_gopher_quality_rules():
    f = GopherQualityFilter()
    assert f.keep(doc(PROSE)) is True
    assert f.keep(doc(CHINESE)) is True  # CJK: no mean-word-length rule on 1-char words, Chinese stop words count
    assert f.keep(doc("A short note about the weather.")) == "gopher_quality:too_few_words"
    long_words = " ".join(["incomprehensibilities", "counterrevolutionaries", "the"] * 20)
    assert f.keep(doc(long_words)) == "gopher_quality:mean_word_length"
    hashes = " ".join(["#tag the and of word"] * 20)
    assert f.keep(doc(hashes)) == "gopher_quality:symbol_ratio"
    bullets = "\n".join(f"• item number {i} of the list and more words here" for i in range(12))
    assert f.keep(doc(bullets)) == "gopher_quality:bullet_lines"
    ellipsis = "\n".join(f"and then the story went on with line {i} of the text..." for i in range(12))
    assert f.keep(doc(ellipsis)) == "gopher_quality:ellipsis_lines"
    numbers = " ".join(str(i * 7919) for i in range(60)) + " the and"
    assert f.keep(doc(numbers)) == "gopher_quality:alpha_words_ratio"
    no_stop = " ".join(["apple banana cherry melon grape lemon orange peach"] * 8)
    assert f.keep(doc(no_stop)) == "gopher_quality:stop_words"


def test_gopher_quality_skips_code():
    code = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    f = GopherQualityFilter()
    d = doc(code)
    assert d["kind"] == "code"
    assert f.keep(d) is True and f.skipped == 1


def test_repetition_fractions_by_hand():
    ws = "a b a b a b c".split()
    # most frequent bigram (a, b) occurs 3 times: 3 * 2 chars over 7 chars
    assert top_ngram_char_fraction(ws, 2) == pytest.approx(6 / 7)
    ws = "x y z q x y z".split()
    # the 3-gram "x y z" repeats: words 0-2 and 4-6 are covered (6 of 7 chars)
    assert dup_ngram_char_fraction(ws, 3) == pytest.approx(6 / 7)
    assert dup_ngram_char_fraction("a b c d e f".split(), 3) == 0.0


def test_gopher_repetition_rules():
    f = GopherRepetitionFilter()
    assert f.keep(doc(PROSE)) is True
    assert f.keep(doc(CHINESE)) is True
    dup_lines = "\n".join(["Buy cheap watches now at our store"] * 5 + ["unique line one", "unique line two"])
    assert f.keep(doc(dup_lines)) == "gopher_repetition:dup_line_fraction"
    dup_paras = "\n\n".join(["Same paragraph repeated here."] * 3 + ["Other."])
    assert f.keep(doc(dup_paras)) == "gopher_repetition:dup_para_fraction"
    looping = PROSE + " " + " ".join(["the river valley"] * 40)
    assert f.keep(doc(looping)).startswith("gopher_repetition:top_")
    copied = PROSE + " " + PROSE[: len(PROSE) // 2]
    assert f.keep(doc(copied)).startswith("gopher_repetition:dup_")


def test_stop_word_ratio():
    f = StopWordFilter()
    assert f.keep(doc(PROSE)) is True
    assert f.keep(doc(CHINESE)) is True
    keywords = " ".join(["cheap", "watches", "discount", "luxury", "replica", "sale", "free", "shipping"] * 4)
    assert f.keep(doc(keywords)) == "stop_words:too_few_stop_words"
    salad = " ".join(["the", "of", "and", "to", "is", "was", "it", "that"] * 5)
    assert f.keep(doc(salad)) == "stop_words:too_many_stop_words"


def test_language_filter():
    f = LanguageFilter()
    assert f.keep(doc(PROSE)) is True and f.keep(doc(CHINESE)) is True
    assert f.keep(doc("Привет, как дела? Это текст на русском языке, довольно длинный.")) == "language:script_other"
    assert f.keep(doc("12 34 56 78 90 -- ++ == 11 22 33 44 55 66 ab")) == "language:too_few_letters"
    en_only = LanguageFilter(LanguageFilter.Config(allowed=["en"]))
    assert en_only.keep(doc(CHINESE)) == "language:script_zh"
    code = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert en_only.keep(doc(code)) == "language:code_not_allowed"


def test_code_filter():
    f = CodeFilter()
    code = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert f.keep(doc(code)) is True
    minified = "def f():\n    return 1\n" + "x = [" + ", ".join(str(i) for i in range(400)) + "]\n"
    assert f.keep(doc(minified, kind="code")) == "code:max_line_length"
    generated = "# This file is auto-generated. Do not edit.\nimport os\n\ndef f():\n    return os.sep\n"
    assert f.keep(doc(generated, kind="code")) == "code:autogenerated"
    assert f.keep(doc(PROSE)) is True and f.skipped == 1  # prose is not code's business


def test_metadata_filter():
    f = MetadataFilter(MetadataConfig(min_values={"likes": 10, "comments": 2}))
    assert f.keep(doc(PROSE, likes=50, comments=3)) is True
    assert f.keep(doc(PROSE, likes=5, comments=3)) == "metadata:likes_below_10"
    assert f.keep(doc(PROSE, likes=50, comments="many")) == "metadata:non_numeric_comments"
    assert f.keep(doc(PROSE)) is True
    strict = MetadataFilter(MetadataConfig(min_values={"likes": 1}, missing="drop"))
    assert strict.keep(doc(PROSE)) == "metadata:missing_likes"


def test_chain_order_and_merge():
    filters = build_filters(FiltersConfig())
    assert apply_filters(doc(PROSE), filters) is True
    assert apply_filters(doc("tiny"), filters) == "length:too_few_chars"
    stats = [f.stats() for f in filters]
    merged = filters[0].merge_stats(stats[0], stats[0])
    assert merged["seen"] == 2 * stats[0]["seen"]
    assert merged["removed"]["length:too_few_chars"] == 2
    with pytest.raises(ValueError, match="unknown filter 'nope'"):
        FiltersConfig(enabled=["length", "nope"])


def test_normalize_text():
    assert normalize_text("a\r\nb\rc\x00d\u0007e\tf") == "a\nb\ncd" + "e\tf"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC


def test_repetition_rules_for_code_are_looser_but_present():
    f = GopherRepetitionFilter()
    shared_doc = '    """Insert item x in list a, and keep it sorted assuming a is sorted."""\n'
    code = ("def insort_left(a, x):\n" + shared_doc + "    a.insert(bisect_left(a, x), x)\n\n"
            "def insort_right(a, x):\n" + shared_doc + "    a.insert(bisect_right(a, x), x)\n")
    assert f.keep(doc(code, kind="code")) is True  # one shared docstring line: normal in code
    generated = "def table():\n" + "    return codecs.charmap_encode(input, errors, table)\n" * 12
    assert f.keep(doc(generated, kind="code")) == "gopher_repetition:dup_line_fraction"


def test_c4_rules():
    from lmstack.data.clean import C4Filter
    f = C4Filter()
    assert f.keep(doc(PROSE)) is True
    assert f.keep(doc(CHINESE)) is True  # 。！ end Chinese sentences
    assert f.keep(doc(PROSE + " Lorem ipsum dolor sit amet.")) == "c4:lorem_ipsum"
    assert f.keep(doc(PROSE + " Use {name} here.")) == "c4:curly_bracket"
    assert f.keep(doc("One sentence here. And a second one. Only three.")) == "c4:too_few_sentences"
    strict = C4Filter(C4Filter.Config(max_unterminated_line_fraction=0.5))
    menu = PROSE + "\nHome\nAbout us\nContact\nShop now"
    assert strict.keep(doc(menu)) == "c4:unterminated_lines"


def test_fineweb_rules():
    from lmstack.data.clean import FineWebFilter
    f = FineWebFilter()
    assert f.keep(doc(PROSE)) is True
    assert f.keep(doc("\n".join(f"menu item {i}" for i in range(20)))) == "fineweb:line_punct_ratio"
    short = "\n".join(["Short line."] * 1 + [f"Item {i}." for i in range(10)] + [PROSE])
    assert f.keep(doc(short)) == "fineweb:short_line_ratio"
    dup = PROSE + "\nRead more about this story on our website today.\nRead more about this story on our website today."
    assert f.keep(doc(dup)) == "fineweb:char_dup_ratio"
    listy = "\n".join(f"Supercalifragilisticexpialidocious{i} antidisestablishmentarianism." for i in range(40))
    assert f.keep(doc(listy)) == "fineweb:newline_ratio"
