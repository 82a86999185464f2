"""How a value the user gave is shown in a message: the one place that quotes user input.

Messages go into ComfyUI's history, its UI and the server log, so a quoted value must stay short
whatever was typed or linked in (a million-entry index list, a megabyte of text, a huge number or
nested list arriving through the API). Every message that repeats a user's value quotes it here.
"""

QUOTE_LIMIT = 200          # characters of a quoted value; enough to recognise it, never a flood


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), cut to about `limit` characters with how long the whole was (text: its characters;
    anything else: its repr's). Huge integers are not turned into digits at all (Python refuses
    ints of over 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters in all)"
    try:
        text = repr(value)
    except ValueError:                     # e.g. a list holding an integer too long to print
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters in all)"
