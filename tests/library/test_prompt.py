"""allegro.prompt against the references: the scripts' template strings (as recorded facts), diffusers'
caption cleaner (as the oracle, over a broad corpus) and Hugging Face's T5 tokenizer."""
import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from bench.bench_regex_rules import HOSTILE_UNITS, hostile
from allegro.prompt import (
    NEGATIVE_PROMPT, POSITIVE_TEMPLATE, T5Tokens, apply_template, clean_caption, preprocess_prompt, tokenize_for_t5,
)

# SHA-256 and length of the strings in rhymes-ai/Allegro's inference scripts (facts, not their code).
REFERENCE_FACTS = json.loads((Path(__file__).parents[1] / "data" / "reference_facts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference_preprocessing():
    """diffusers' AllegroPipeline._text_preprocessing, on an instance built without weights."""
    from diffusers import AllegroPipeline
    pipeline = AllegroPipeline.__new__(AllegroPipeline)
    return lambda text, clean: pipeline._text_preprocessing(text, clean_caption=clean)[0]


USER_PROMPTS = [
    "A seaside harbor with bright sunlight and sparkling seawater, with many boats in the water. From an aerial "
    "view, the boats vary in size and color, some moving and some stationary.",
    "A red fox runs through fresh snow at dawn, cinematic lighting, https://example.com/fox.jpeg",
    "  Leading and trailing spaces   ",
    "UPPER CASE PROMPT WITH Mixed Case",
    "",
    "   \n\t  ",
    "a cat",
    "(masterpiece) [brackets] {braces} <angle> |pipes| \\backslash/ *stars*",
]

EDGE_CASES = [
    # URLs and domains
    "visit http://www.example.com/path?query=1&x=2 now", "see https://foo.ru/bar-baz_qux/ and www.test.org",
    "mail me@example.com or @someone_99 today", "link:https:%2F%2Fexample.co%2Fa%20b", "www:abc.it/x",
    "ftp://files.example.net/archive.zip", "example.com@host", "sub.domain.edu/page-1/page_2/",
    "www://gallery of art", "see www:/docs here",
    # HTML and entities
    "<p>Hello <b>bold</b> <i>world</i></p>", "<a href='https://x.com'>click here</a>", "&quot;quoted&quot; &amp; more",
    "&lt;not a tag&gt; &amp;amp; &#39;apos&#39; &eacute;t&eacute;", "<person> walks a <person>", "<br/>line<br>break",
    "<script>alert(1)</script> text", "&amp;quot;x&amp;quot; &amp;amp;y", "chapter 3:45 <br>", "5 < 6 and 7 > 3",
    "unclosed <div class='x'",
    # emoji, accents, CJK, Cyrillic, RTL
    "A dog 🐶 wearing sunglasses 😎 on the beach 🏖️", "Crème brûlée à la française, naïve café",
    "一只猫在屋顶上 a cat on a roof", "日本語のテキスト、カタカナ、ひらがな", "한국어 텍스트와 영어 text",
    "Кошка сидит на окне, размер 10х20", "㈱ ㍻ ㇰ ䷀ 𠀀 mixed ranges", "עברית ועוד ־ מקף", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ－ｄａｓｈ",
    # numbers, ids, sizes, IPs, times
    "192.168.0.1 is an ip, so is 10.0.0.255", "photo 1920x1080 and 3.5×2 and 4х5", "item #12 and #1234 and #123456",
    "order 1234567 and 12345", "article 3:45   ", "abc12345 x1y2z3 ab12cd 12ab34 a1b2c3d4", "page 12 of 300",
    "version 2.0.1, 3.14, 1,000,000", "24fps 4k 8k 35mm 1080p", "time 12:30 pm", "room 101: the end 9:59 ",
    # file names and "jpeg" words
    "image.png photo.JPG scan.jpeg doc.pdf app.apk clip.mp4 vector.eps", "jpeg artifacts and png images",
    "a jpg image, bmp images", "free shipping worldwide shipping download free click for details",
    # quotes, dashes, punctuation
    "\u201csmart quotes\u201d and \u2018single\u2019 and \u00abguillemets\u00bb and `backticks\u00b4",
    "em\u2014dash en\u2013dash minus\u2212sign wave\u301cdash", "'''triple''' \"\"double\"\" ...ellipsis... ..",
    "***AUSVERKAUFT*** #AUSVERKAUFT ®©™ § ¿que? ¡hola!", "this-is-my-cute-cat", "this_is_my_cute_cat",
    "a-b c-d", "word . word , word : word ; word", "end with plus+", "'quoted whole'", "\"double quoted whole\"",
    " 'leading space quote'", "-leading dash", ",leading comma", ".hidden_file", "trailing colon:", "__init__",
    "a,b.c/d e", "hello,world.again", "x : y", "what?!", "50% off", "C++ and C#",
    # escapes, newlines, whitespace
    "line one\nline two\r\nline three\ttab", "literal \\n backslash-n", "multiple     spaces", "\u00a0nbsp\u2003em",
    "%20encoded%21 plus+sign", "100%25 sure", "a+b+c",
    # mojibake for ftfy
    "Ã©tÃ© cafÃ©", "â€œfixedâ€\x9d", "\ufeffbom start",
    # very long
    "a very long prompt " * 200, ("word, " * 300).strip(),
]

FRAGMENTS = [
    "cat", "Dog", " ", "  ", "\n", "\t", ",", ".", "..", "-", "_", "--", "'", '"', "`", "#", "#12", "#123456",
    "@user", "http://", "https://", "www.", "example.com", "/path", "?q=1", "&amp;", "&quot;", "<b>", "</b>", "<p>",
    "123", "4567890", "1.2.3.4", "1920x1080", "a1b2", "x99", "12ab", ".jpg", "file.png", "jpeg", "image",
    "free", "shipping", "download", "click", "for", "page", "7", ":", ";", "!", "?", "(", ")", "[", "]", "{", "}",
    "*", "|", "\\", "\\n", "~", "®", "•", "é", "ü", "ß", "ñ", "中", "文", "カ", "한", "ж", "я", "😀", "🚀", "\u2014",
    "\u201c", "\u201d", "\u2018", "\u2019", "«", "»", "×", "х", "%20", "+", "<person>", "\u3000", "\u00a0",
]


def random_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 30))) for _ in range(count)]


def corpus() -> list[str]:
    texts = USER_PROMPTS + EDGE_CASES + random_prompts(600)
    texts += [apply_template(text) for text in USER_PROMPTS + EDGE_CASES[::3]]
    return texts + [POSITIVE_TEMPLATE, NEGATIVE_PROMPT]


def fingerprint(text: str) -> dict:
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "length": len(text)}


def test_template_strings_match_the_reference_scripts():
    """Our template and negative prompt are, character for character, the positive_prompt and negative_prompt
    strings of the original single_inference.py and single_inference_ti2v.py at the recorded commit."""
    scripts = REFERENCE_FACTS["scripts"]
    assert REFERENCE_FACTS["commit"].startswith("f395a54")
    assert set(scripts) == {"single_inference.py", "single_inference_ti2v.py"}
    ours = {"positive_prompt": fingerprint(POSITIVE_TEMPLATE), "negative_prompt": fingerprint(NEGATIVE_PROMPT)}
    for script, strings in scripts.items():
        assert strings == ours, script


def test_apply_template_lowercases_and_strips_like_the_script():
    assert apply_template("  A Red FOX ") == POSITIVE_TEMPLATE.format("a red fox")
    assert apply_template("Hi {there}", "<{}>") == "<hi {there}>"           # braces in the prompt are kept
    assert apply_template("x", "a {} b {}") == "a x b x"
    with pytest.raises(ValueError, match="must contain"):
        apply_template("x", "no placeholder")


def test_clean_caption_equals_diffusers_over_the_corpus(reference_preprocessing):
    mismatches = [(text, clean_caption(text), reference_preprocessing(text, True)) for text in corpus()]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, "first mismatches (input, ours, diffusers):\n" + "\n".join(map(repr, mismatches[:5]))


def test_preprocess_prompt_without_cleaning_equals_diffusers(reference_preprocessing):
    for text in USER_PROMPTS + EDGE_CASES[:20] + [apply_template("A Cat"), NEGATIVE_PROMPT]:
        assert preprocess_prompt(text, clean=False) == reference_preprocessing(text, False)
        assert preprocess_prompt(text, clean=True) == clean_caption(text)


def test_cleaner_quirks_that_reach_t5():
    # The template's parentheses and newlines go; "jpeg" goes even from "jpeg artifacts".
    assert clean_caption(apply_template("A cat")).startswith("masterpiece , best quality , ultra-detailed ,")
    assert "jpeg" not in clean_caption(NEGATIVE_PROMPT) and "artifacts" in clean_caption(NEGATIVE_PROMPT)
    assert clean_caption("") == "" and clean_caption(" \n ") == ""


def test_keep_cjk_ideographs_follows_the_original_pipeline():
    assert clean_caption("一只猫 a cat") == "a cat"
    assert clean_caption("一只猫 a cat", keep_cjk_ideographs=True) == "一只猫 a cat"
    assert clean_caption("㈱ a cat", keep_cjk_ideographs=True) == "a cat"     # other CJK ranges still go


# --- tokenisation --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5_tokenizer():
    from allegro_devtools.runtime import t5_tokenizer_dir
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(t5_tokenizer_dir())


def test_tokenize_for_t5_equals_hf_padding_and_truncation(t5_tokenizer):
    encode = lambda text: t5_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    long_prompt = clean_caption(apply_template("a fox in the snow, " * 120))
    texts = ["", "a cat", "Crème brûlée, naïve café, Кошка, 一只猫, 🐶", clean_caption(NEGATIVE_PROMPT), long_prompt]
    for text in texts:
        for max_length in (512, 8):
            reference = t5_tokenizer(text, padding="max_length", max_length=max_length, truncation=True,
                                     add_special_tokens=True)
            ours = tokenize_for_t5(encode, text, max_length=max_length, decode_fn=t5_tokenizer.decode)
            assert ours.ids == reference.input_ids, (text[:40], max_length)
            assert ours.attention_mask == reference.attention_mask
            assert len(ours.ids) == max_length and ours.ids[ours.length - 1] == t5_tokenizer.eos_token_id
            untruncated = t5_tokenizer(text).input_ids
            assert ours.truncated == (len(untruncated) > max_length)
            if ours.truncated:   # the text diffusers' warning shows
                assert ours.dropped_text == t5_tokenizer.decode(untruncated[max_length - 1:-1])
    assert len(encode(long_prompt)) > 600 and tokenize_for_t5(encode, long_prompt).truncated


def test_tokenize_for_t5_edges():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    exact = tokenize_for_t5(encode, "abc", max_length=4)          # 3 tokens + EOS fill it exactly
    assert exact == T5Tokens([97, 98, 99, 1], [1, 1, 1, 1], truncated=False)
    cut = tokenize_for_t5(encode, "abcd", max_length=4)
    assert cut.ids == [97, 98, 99, 1] and cut.truncated and cut.dropped_ids == [100] and cut.dropped_text is None
    assert tokenize_for_t5(encode, "", max_length=3).ids == [1, 0, 0]
    with pytest.raises(ValueError):
        tokenize_for_t5(encode, "a", max_length=0)


# --- bounded cleaning ----------------------------------------------------------------------------
# The reference's cleaner has regular expressions whose time grows with the square of a word's or a
# whitespace run's length, and it reads the whole prompt. Ours gives the same text with linear rules
# and reads a bounded prefix (allegro.prompt.prepare_for_t5).

LINEAR_FRAGMENTS = ["a", "b", "X", "1", "12", "123456", ".", "..", "-", "_", "/", "//", ":", "@", "%", " ", "  ", "\n",
                    "é", "http:", "https://", "www:", "www.", ".com", ".co", ".it", ".org", "com", ".png", ".jpeg",
                    "jpg", "x", "×", "х", "<b>", "&amp;", "#", "#12", "'", '"', "page 1", "free", "shipping",
                    "download", "click on", ",", "a1b2", "1.5", "\t", "中", "—"]


def test_linear_rules_equal_the_reference_on_url_number_and_word_shapes(reference_preprocessing):
    """The rewritten rules (URLs and bare domains, file names, sizes, a1b2c3 codes, space-dot-space) against
    diffusers on strings made of exactly the pieces those rules look at."""
    rng = random.Random(7)
    texts = ["".join(rng.choice(LINEAR_FRAGMENTS) for _ in range(rng.randint(1, 25))) for _ in range(3000)]
    texts += ["http:a.com", "a.com/b.org", "a.com_x.org", "_-a.com", "x.co.uk", "a.comx", "a.com-@", "é.com",
              "a.com@b.org", "a1a" + "1" * 50 + "_", "1" * 40 + "x" + "1" * 40 + "_", "a" + " " * 30 + ". b"]
    mismatches = [(t, clean_caption(t), reference_preprocessing(t, True)) for t in texts]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, "first mismatches (input, ours, diffusers):\n" + "\n".join(map(repr, mismatches[:5]))


ONE_MB = 1 << 20


def test_a_megabyte_prompt_reads_a_bounded_prefix(t5_tokenizer):
    """Whatever its shape, a 1 MB prompt is read up to the last window only; what it reads is what the
    reference reads for that prefix (template or not). The time each takes is printed."""
    from allegro.prompt import PROMPT_WINDOWS, prepare_for_t5
    encode = lambda text: t5_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    for name, unit in HOSTILE_UNITS.items():
        for text in (hostile(unit, ONE_MB), apply_template(hostile(unit, ONE_MB))):
            start = time.perf_counter()
            prepared = prepare_for_t5(text, encode)
            seconds = time.perf_counter() - start
            print(f"{name}: {seconds:.2f} s, read {prepared.read_chars} characters, {prepared.tokens.length} tokens")
            assert prepared.read_chars <= PROMPT_WINDOWS[-1] and prepared.total_chars == len(text)
            assert len(prepared.tokens.ids) == 512
            assert prepared.tokens.truncated == (prepared.read_chars < len(text) or prepared.tokens.length == 512)
            assert prepared.text == clean_caption(text[:prepared.read_chars])


def test_prompts_that_fit_are_prepared_exactly_as_the_reference(reference_preprocessing, t5_tokenizer):
    """Every prompt of the corpus, and prompts longer than the first window that still fit in 512 tokens
    once cleaned (URLs, markup and whitespace the cleaner deletes): the reference's ids and mask."""
    from allegro.prompt import PROMPT_WINDOWS, prepare_for_t5
    encode = lambda text: t5_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    long_fitting = ["a fox " + "https://example.com/a/b.html " * 200 + "in the snow",
                    "<p>" + "<span class='x'></span>" * 200 + "a fox in the snow</p>",
                    "a fox" + " " * 6000 + "in the snow", "🦊" * 6000 + " a fox", "a-fox " + "#123 " * 1000,
                    "a " * 1500 + "fox"]
    assert all(PROMPT_WINDOWS[0] < len(text) <= PROMPT_WINDOWS[-1] for text in long_fitting)
    for text in corpus() + long_fitting:
        for clean in (True, False):
            reference = tokenize_for_t5(encode, reference_preprocessing(text, clean))
            ours = prepare_for_t5(text, encode, clean=clean)
            assert (ours.tokens.ids, ours.tokens.attention_mask) == (reference.ids, reference.attention_mask), text[:80]
            assert ours.read_chars == len(text) or reference.truncated


def test_long_prompts_give_the_reference_first_tokens(reference_preprocessing, t5_tokenizer):
    """Prompts far over 512 tokens, mixing words with what the cleaner removes: the 511 tokens T5 reads are
    the reference's, though only a prefix was cleaned."""
    from allegro.prompt import prepare_for_t5
    encode = lambda text: t5_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    words = ["the", "fox", "runs", "through", "snow,", "at", "dawn.", "A", "red", "barn", "https://example.com/x.jpg",
             "www.site.org", "<b>bold</b>", "&amp;", "1920x1080", "—", "well-known", "#12", "(masterpiece)",
             "free shipping", "@user", "10.0.0.1", "page 3", "photo.png", "ab1234", "\n", "'quoted'", "😀", "中文"]
    rng = random.Random(3)
    for _ in range(12):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1000, 6000)))
        for candidate in (text, apply_template(text)):
            reference = tokenize_for_t5(encode, reference_preprocessing(candidate, True))
            assert prepare_for_t5(candidate, encode).tokens.ids == reference.ids


def test_cancel_is_checked_between_bounded_steps(t5_tokenizer):
    from allegro.prompt import prepare_for_t5

    class Cancelled(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 20:
            raise Cancelled

    encode = lambda text: t5_tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    with pytest.raises(Cancelled):
        prepare_for_t5(hostile("<a.png\n", ONE_MB), encode, check_interrupt=check)
    assert len(calls) == 20
    counted = []
    prepare_for_t5("a fox", encode, check_interrupt=lambda: counted.append(1))
    assert len(counted) > 60        # before each of the two passes' 35 steps, and around tokenizing
