"""Prompt text as Allegro's reference pipeline prepares it for T5.

The reference scripts wrap the user's prompt in a positive template and use a fixed negative
prompt; the pipeline then lower-cases it and, by default, runs a caption cleaner (inherited from
DeepFloyd IF) twice. What T5 sees is that cleaned text, so reproducing the cleaner exactly matters
for parity: tests check `clean_caption` against diffusers' `AllegroPipeline._text_preprocessing`.

`tokenize_for_t5` turns token ids from any T5 tokenizer into what Hugging Face's tokenizer returns
for `padding="max_length", truncation=True, add_special_tokens=True`: ids + EOS, padded to 512.
"""
import html
import re
import urllib.parse
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

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
                         f"got {template!r}")
    return template.replace(PROMPT_PLACEHOLDER, user_prompt.lower().strip())


# ---------------------------------------------------------------------------------------------
# Caption cleaner. Each step is a regex substitution or a function, applied in order; the order
# and every quirk matter, because the output must equal the reference's character for character.

_FILE_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
# A bare domain such as `example.com/path`, optionally followed by a slash, not by an "@".
_BARE_DOMAIN = r"[a-zA-Z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@)"
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
    _substitution(r"\b(?:https?:(?:/{1,3}|[a-zA-Z0-9%])|" + _BARE_DOMAIN + ")", ""),
    _substitution(r"\b(?:www:(?:/{1,3}|[a-zA-Z0-9%])|" + _BARE_DOMAIN + ")", ""),
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
    _substitution(r"\S+\." + _FILE_EXTENSIONS, ""),                # file names
    _substitution(r"[\"']{2,}", '"'),
    _substitution(r"\.{2,}", " "),
    _substitution(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+", " "),        # stray punctuation runs
    _substitution(r"\s+\.\s+", " "),
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
    _substitution(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # a1b2c3…
    _substitution(r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b", ""),    # sizes: 1920x1080 (Latin x, Cyrillic х, ×)
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


def _clean_once(text: str, drop_cjk: Callable[[str], str]) -> str:
    for step in _BEFORE_CJK:
        text = step(text)
    text = drop_cjk(text)
    for step in _AFTER_CJK:
        text = step(text)
    return text


_DROP_ALL_CJK = _substitution(_CJK_ALL, "")
_DROP_CJK_BUT_IDEOGRAPHS = _substitution(_CJK_BUT_IDEOGRAPHS, "")


def clean_caption(text: str, keep_cjk_ideographs: bool = False) -> str:
    """The caption cleaner of Allegro's pipeline: equal to diffusers'
    `AllegroPipeline._text_preprocessing(text, clean_caption=True)` (two passes of the cleaner).

    `keep_cjk_ideographs=True` follows the original rhymes-ai pipeline instead, whose cleaner keeps
    U+4E00..9FFF (it removes the other CJK ranges). T5 v1.1's vocabulary has hardly any of them.
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
    return _clean_once(_clean_once(text, drop_cjk), drop_cjk)


def preprocess_prompt(text: str, clean: bool = True) -> str:
    """What the reference pipeline hands to the T5 tokenizer: the cleaned caption, or with
    `clean=False` the lower-cased, stripped text."""
    return clean_caption(text) if clean else text.lower().strip()


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
