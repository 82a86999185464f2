"""Prompt text as Allegro's reference pipeline prepares it for T5.

The reference scripts wrap the user's prompt in a positive template and use a fixed negative
prompt; the pipeline then lower-cases it and, by default, runs a caption cleaner (inherited from
DeepFloyd IF) twice. What T5 sees is that cleaned text, so reproducing the cleaner exactly matters
for parity: tests check `clean_caption` against diffusers' `AllegroPipeline._text_preprocessing`.

`tokenize_for_t5` turns token ids from any T5 tokenizer into what Hugging Face's tokenizer returns
for `padding="max_length", truncation=True, add_special_tokens=True`: ids + EOS, padded to 512.

`prepare_for_t5` is the bounded path a node takes: T5 reads 512 tokens, so it cleans and tokenizes
growing prefixes of the prompt (at most `PROMPT_WINDOWS[-1]` characters), each step linear in its
input, with a cancel callback between steps. Every prompt up to `PROMPT_WINDOWS[0]` characters is
cleaned whole, exactly as the reference does.
"""
import html
import re
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .config import TEXT_TOKENS
from .quoting import quote

# Model-usage data, reproduced byte for byte from rhymes-ai/Allegro `single_inference.py` (and
# `single_inference_ti2v.py`, which uses the same two strings). Trailing spaces and newlines are
# part of them; the cleaner later removes most of that, but `clean=False` keeps it.
POSITIVE_TEMPLATE = (
    "\n"
    "(masterpiece), (best quality), (ultra-detailed), (unwatermarked), \n"
    "{} \n"
    "emotional, harmonious, vignette, 4k epic detailed, shot on kodak, 35mm photo, \n"
    "sharp focus, high budget, cinemascope, moody, epic, gorgeous\n"
)
NEGATIVE_PROMPT = (
    "\n"
    "nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, \n"
    "low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry.\n"
)

PROMPT_PLACEHOLDER = "{}"


def apply_template(user_prompt: str, template: str = POSITIVE_TEMPLATE) -> str:
    """The template with the prompt in place of `{}`; the prompt is lower-cased and stripped first,
    as the reference scripts do. Other braces in a custom template are left alone."""
    if PROMPT_PLACEHOLDER not in template:
        raise ValueError(f"The prompt template must contain {PROMPT_PLACEHOLDER} where the prompt goes; "
                         f"got {quote(template)}")
    return template.replace(PROMPT_PLACEHOLDER, user_prompt.lower().strip())


# ---------------------------------------------------------------------------------------------
# Caption cleaner. Each step is a regex substitution or a function, applied in order; the order
# and every quirk matter, because the output must equal the reference's character for character.

_FILE_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
# A bare domain such as `example.com/path`, optionally followed by a slash, not by an "@": the
# reference's `[a-zA-Z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)`, split into the
# run of domain characters and the tail from the dot on (see `_remove_urls`).
_DOMAIN_CHARS = re.compile(r"[a-zA-Z0-9.\-]+")
_DOMAIN_TAIL = re.compile(r"\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)")
_WORD_BOUNDARY = re.compile(r"\b")
# Every kind of dash: hyphen-minus, Armenian, Hebrew maqaf, Canadian syllabics, Mongolian, the
# U+2010..2015 block, the U+2E.. supplemental dashes, wave dashes, Katakana double hyphen, the
# small/presentation forms and the fullwidth hyphen-minus.
_DASHES = (
    "-\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
    "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d"
)
# From CJK strokes (U+31C0) to the end of the CJK Unified Ideographs (U+9FFF): the reference
# deletes seven adjacent ranges one after another, which is the same as deleting their union.
_CJK_ALL = "[\u31c0-\u9fff]+"
# The original rhymes-ai pipeline left the main ideograph block (U+4E00..9FFF) in place.
_CJK_BUT_IDEOGRAPHS = "[\u31c0-\u4dff]+"


def _substitution(pattern: str, replacement: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)
    return lambda text: compiled.sub(replacement, text)


def _url_remover(scheme: str) -> Callable[[str], str]:
    return lambda text: _remove_urls(text, re.compile(r"\b" + scheme + r":(?:/{1,3}|[a-zA-Z0-9%])"))


def _remove_urls(text: str, scheme: re.Pattern) -> str:
    """The reference's `re.sub(r"\b(?:SCHEME:(?:/{1,3}|[a-zA-Z0-9%])|BARE_DOMAIN)", "", text)`, in linear time.

    The regex tries the bare domain at every word boundary inside a run of domain characters, each
    try scanning to the run's end: quadratic on "a.a.a.a…" or "a-b-c-…". But the try at a position
    p succeeds exactly when the run has a dot d > p whose tail (`_DOMAIN_TAIL`) matches, and then
    ends where the tail at the LAST such dot ends (the greedy run gives back characters from the
    right). So each run's last good dot is found once, and the scan below visits the same match
    starts the regex would, in the same order (the scheme alternative first at a shared position).
    """
    domains = []                                    # (run start, last good dot, end of its tail)
    for run in _DOMAIN_CHARS.finditer(text):
        start, dot = run.start(), run.end()
        while (dot := text.rfind(".", start + 1, dot)) > start:
            tail = _DOMAIN_TAIL.match(text, dot)
            if tail:
                domains.append((start, dot, tail.end()))
                break
    pieces, position, index = [], 0, 0
    scheme_match = scheme.search(text)
    while True:
        if scheme_match is not None and scheme_match.start() < position:
            scheme_match = scheme.search(text, position)
        domain_match = None
        while index < len(domains) and domain_match is None:
            start, dot, end = domains[index]
            # The first word boundary p with start <= p < dot (the search stops at the dot, so a
            # boundary it reports at the dot itself is an artefact of that limit, not one).
            boundary = _WORD_BOUNDARY.search(text, max(start, position), dot) if dot > position else None
            if boundary is None or boundary.start() >= dot:
                index += 1
            else:
                domain_match = (boundary.start(), end)
        candidates = [m for m in ((scheme_match.span() if scheme_match else None), domain_match) if m]
        if not candidates:
            break
        begin, end = min(candidates, key=lambda span: span[0])      # the scheme wins a tie (listed first)
        pieces.append(text[position:begin])
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _strip_html(text: str) -> str:
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning
    with warnings.catch_warnings():
        # A caption that looks like a file name or URL makes bs4 warn; the text is still parsed.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        return BeautifulSoup(text, features="html.parser").text


def _split_slugs(text: str) -> str:
    """this-is-a-slug / this_is_a_slug → words, but only when there are more than three joiners."""
    if text.count("-") + text.count("_") > 3:
        return text.replace("-", " ").replace("_", " ")
    return text


def _fix_encoding(text: str) -> str:
    import ftfy
    return html.unescape(html.unescape(ftfy.fix_text(text)))


def _normalise(text: str) -> str:
    return urllib.parse.unquote_plus(str(text)).strip().lower()


_BEFORE_CJK = (
    _normalise,
    _substitution(r"<person>", "person"),
    # Two URL passes: "https:" + up to three slashes, or a bare domain (the second pass looks for
    # "www:" instead of "https:"). A full URL goes in two matches, scheme then domain and path,
    # which stops at a dot: "https://a.com/x.jpeg" leaves ".jpeg" (a later rule takes "jpeg").
    _url_remover("https?"),
    _url_remover("www"),
    _strip_html,
    _substitution(r"@\w+\b", ""),                                  # @nicknames
)

_AFTER_CJK = (
    _substitution("[" + _DASHES + "]+", "-"),
    _substitution("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]", '"'),   # quotes of every style → "
    _substitution("[\u2018\u2019]", "'"),
    _substitution(r"&quot;?", ""),
    _substitution(r"&amp", ""),
    _substitution(r"(?:\d{1,3}\.){3}\d{1,3}", " "),                # IPv4 addresses
    _substitution(r"\d:\d\d\s+$", ""),                             # a trailing "article id"
    _substitution(r"\\n", " "),                                    # a literal backslash-n
    _substitution(r"#\d{1,3}\b", ""),
    _substitution(r"#\d{5,}\b", ""),
    _substitution(r"\b\d{6,}\b", ""),
    # File names. The reference's `\S+\.ext` is tried at every character of a long word (quadratic);
    # a try inside a word can only succeed if the try at the word's start did, so only starts are tried.
    _substitution(r"(?<!\S)\S+\." + _FILE_EXTENSIONS, ""),
    _substitution(r"[\"']{2,}", '"'),
    _substitution(r"\.{2,}", " "),
    _substitution(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+", " "),        # stray punctuation runs
    _substitution(r"(?<!\s)\s+\.\s+", " "),                          # `\s+\.\s+`, tried at run starts only
    _split_slugs,
    _fix_encoding,
    _substitution(r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),               # product codes: ab1234
    _substitution(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),               # ab12cd
    _substitution(r"\b\d+[a-zA-Z]+\d+\b", ""),                     # 12ab34
    _substitution(r"(worldwide\s+)?(free\s+)?shipping", ""),
    _substitution(r"(free\s)?download(\sfree)?", ""),
    _substitution(r"\bclick\b\s(?:for|on)\s\w+", ""),
    # Not only file names: any word starting with an extension goes ("pdfs" → "s"), so the negative
    # prompt's "jpeg artifacts" reaches T5 as "artifacts".
    _substitution(r"\b" + _FILE_EXTENSIONS + r"(\simage[s]?)?", ""),
    _substitution(r"\bpage\s+\d+\b", ""),
    # a1b2c3…: a match always ends where the word does, so a word that goes on with "_" or a
    # non-ASCII letter is refused by the lookahead before the quadratic backtracking starts.
    _substitution(r"\b(?=[a-zA-Z\d]+\b)\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    # Sizes: 1920x1080 (Latin x, Cyrillic х, ×). `\d+\.?\d*` written as `\d+(?:\.\d*)?`: the same strings
    # tried in the same order, without splitting one run of digits in two every possible way.
    _substitution(r"\b\d+(?:\.\d*)?[x\u0445\u00d7]\d+(?:\.\d*)?\b", ""),
    _substitution(r"\b\s+:\s+", ": "),
    _substitution(r"(\D[,./])\b", r"\1 "),                         # a space after punctuation glued to a word
    _substitution(r"\s+", " "),
    # No strip here (the reference calls strip() and discards the result), so a leading space
    # keeps the next rule from removing an opening quote.
    _substitution(r"^[\"']([\s\S]+)[\"']$", r"\1"),
    _substitution(r"^['_,\-:;]", ""),
    _substitution(r"['_,\-:+]$", ""),
    _substitution(r"^\.\S+$", ""),
    str.strip,
)


def _no_check() -> None:
    pass


def _clean_once(text: str, drop_cjk: Callable[[str], str], check_interrupt: Callable[[], None]) -> str:
    for step in (*_BEFORE_CJK, drop_cjk, *_AFTER_CJK):
        check_interrupt()
        text = step(text)
    return text


_DROP_ALL_CJK = _substitution(_CJK_ALL, "")
_DROP_CJK_BUT_IDEOGRAPHS = _substitution(_CJK_BUT_IDEOGRAPHS, "")


def clean_caption(text: str, keep_cjk_ideographs: bool = False,
                  check_interrupt: Callable[[], None] = _no_check) -> str:
    """The caption cleaner of Allegro's pipeline: equal to diffusers'
    `AllegroPipeline._text_preprocessing(text, clean_caption=True)` (two passes of the cleaner).

    `keep_cjk_ideographs=True` follows the original rhymes-ai pipeline instead, whose cleaner keeps
    U+4E00..9FFF (it removes the other CJK ranges). T5 v1.1's vocabulary has hardly any of them.
    `check_interrupt` is called between steps (it raises to stop). Every step but the HTML parser is
    linear in the text's length; Python's own HTML parser is quadratic on some broken markup before
    Python 3.13.5/3.12.11, so long texts go through `prepare_for_t5`, which bounds the length.
    Needs the `ftfy` and `beautifulsoup4` packages.
    """
    try:
        import bs4  # noqa: F401
        import ftfy  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Cleaning the caption needs the packages ftfy and beautifulsoup4 ({error.name} is missing): "
            "install them with `pip install ftfy beautifulsoup4`, or turn caption cleaning off."
        ) from error
    drop_cjk = _DROP_CJK_BUT_IDEOGRAPHS if keep_cjk_ideographs else _DROP_ALL_CJK
    return _clean_once(_clean_once(text, drop_cjk, check_interrupt), drop_cjk, check_interrupt)


def preprocess_prompt(text: str, clean: bool = True, check_interrupt: Callable[[], None] = _no_check) -> str:
    """What the reference pipeline hands to the T5 tokenizer: the cleaned caption, or with
    `clean=False` the lower-cased, stripped text."""
    return clean_caption(text, check_interrupt=check_interrupt) if clean else text.lower().strip()


# ---------------------------------------------------------------------------------------------
# Bounded preparation: only what can reach T5's tokens is read

# Growing prefixes of the prompt, in characters. T5's 512 tokens are 2-3K characters of English;
# every prompt up to the first size is cleaned whole (the reference's result exactly), a longer one
# in prefixes until one gives enough tokens. Nothing beyond the last size is ever read: the HTML
# parser (Python's) takes time growing with the square of some broken markup's length (0.45 s for
# 8K characters of it on a slow CPU), so the last size is what keeps a hostile prompt near a second.
PROMPT_WINDOWS = (2048, 8192)
# Tokens a prefix must give beyond T5's before it is used: cutting the text can change the last
# few words' cleaning (a cut URL or number), never what comes this many tokens earlier.
CUT_MARGIN_TOKENS = 64
_WHITESPACE = re.compile(r"\s")


def cut_at_whitespace(text: str, limit: int) -> str:
    """The longest prefix of at most `limit` characters that ends before a whitespace character
    (so no word is split), or the first `limit` characters if the last half holds no whitespace."""
    if len(text) <= limit:
        return text
    spaces = [m.start() for m in _WHITESPACE.finditer(text, limit // 2, limit + 1)]
    return text[:spaces[-1]] if spaces else text[:limit]


@dataclass
class PreparedPrompt:
    text: str                 # what the tokenizer saw: the (cleaned) prefix of the prompt
    tokens: "T5Tokens"
    read_chars: int           # characters of the prompt that were read
    total_chars: int          # characters of the prompt

    @property
    def unread_chars(self) -> int:
        return self.total_chars - self.read_chars


def prepare_for_t5(text: str, encode_fn: Callable[[str], Sequence[int]], clean: bool = True,
                   max_length: int = TEXT_TOKENS, decode_fn: Callable[[list[int]], str] | None = None,
                   check_interrupt: Callable[[], None] = _no_check,
                   windows: Sequence[int] = PROMPT_WINDOWS) -> PreparedPrompt:
    """`tokenize_for_t5(encode_fn, preprocess_prompt(text, clean))` with bounded work.

    Prefixes of the prompt (cut at whitespace, `windows` characters) are prepared in turn until one
    gives `max_length + CUT_MARGIN_TOKENS` tokens or the whole prompt has been read. A prompt no
    longer than the first window is prepared whole, so its result is the reference's exactly; a
    longer one gives the reference's first tokens unless a rule that looks at the whole text
    applies (more than three hyphens anywhere turn every hyphen into a space; quotes around the
    whole text go). `check_interrupt` is called between steps.
    """
    for limit in windows:
        check_interrupt()
        piece = cut_at_whitespace(text, limit)
        seen = preprocess_prompt(piece, clean, check_interrupt)
        check_interrupt()
        ids = [int(token) for token in encode_fn(seen)]
        if len(piece) == len(text) or len(ids) >= max_length + CUT_MARGIN_TOKENS:
            break
    tokens = tokenize_for_t5(lambda _: ids, seen, max_length, decode_fn=decode_fn)
    tokens.truncated = tokens.truncated or len(piece) < len(text)
    return PreparedPrompt(seen, tokens, len(piece), len(text))


# ---------------------------------------------------------------------------------------------
# Tokenisation

@dataclass
class T5Tokens:
    ids: list[int]                 # max_length ids: tokens, EOS, then padding
    attention_mask: list[int]      # 1 for tokens and EOS, 0 for padding
    truncated: bool
    dropped_ids: list[int] = field(default_factory=list)
    dropped_text: str | None = None   # the cut-off text, when a decode function was given

    @property
    def length(self) -> int:
        """Tokens T5 attends to, EOS included."""
        return sum(self.attention_mask)


def tokenize_for_t5(
    encode_fn: Callable[[str], Sequence[int]],
    text: str,
    max_length: int = 512,
    eos_id: int = 1,
    pad_id: int = 0,
    decode_fn: Callable[[list[int]], str] | None = None,
) -> T5Tokens:
    """Pad/truncate like a Hugging Face T5 tokenizer called with `padding="max_length",
    max_length=max_length, truncation=True, add_special_tokens=True`.

    `encode_fn` maps text to token ids WITHOUT special tokens (for a Hugging Face tokenizer:
    `lambda t: tok(t, add_special_tokens=False).input_ids`). The result keeps the first
    max_length - 1 tokens, appends EOS and pads. `decode_fn`, if given, turns the dropped ids into
    text for a warning (the reference logs that text too).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (room for EOS), got {max_length}")
    tokens = [int(token) for token in encode_fn(text)]
    kept, dropped = tokens[:max_length - 1], tokens[max_length - 1:]
    ids = kept + [eos_id]
    padding = max_length - len(ids)
    dropped_text = decode_fn(dropped) if (dropped and decode_fn is not None) else None
    return T5Tokens(
        ids=ids + [pad_id] * padding,
        attention_mask=[1] * len(ids) + [0] * padding,
        truncated=bool(dropped),
        dropped_ids=dropped,
        dropped_text=dropped_text,
    )
