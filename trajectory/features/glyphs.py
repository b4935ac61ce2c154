"""Token text in the feature figures: visible escapes, fonts that have the characters,
and a visible stand-in for characters no installed font can draw.

Tokens are drawn in DejaVu Sans Mono (:data:`FONT`, monospace: the example rows are
laid out by character count). A character it lacks is drawn with the first other
installed outline font that has it (matplotlib falls back along the family list that
:func:`font_families` gives). A character no installed font has is written
``⟨U+30C7⟩`` — never a ``\\u30c7`` escape that reads like part of the token, nor an
empty box — and the figure says what that means (:data:`MISSING_GLYPH_NOTE`).
Control and invisible format characters are shown as escapes (``\\n``, ``\\x00``,
``\\u200b``), since they have nothing to draw.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, Iterable

FONT = "DejaVu Sans Mono"
#: the form of a character no installed font has a glyph for
MISSING_GLYPH = "⟨U+{:04X}⟩"
MISSING_GLYPH_NOTE = ("⟨U+XXXX⟩ = a character no installed font can draw "
                      "(install a font that has it, e.g. Noto Sans CJK for Japanese/Chinese)")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
#: fonts never used as fallbacks: "Last Resort" (shipped with matplotlib) maps every
#: character to a placeholder box, and the TeX math fonts' character maps are not
#: Unicode (their codes stand for other symbols)
_SKIPPED_FONTS = re.compile(r"Last Resort|cm[a-z]+10$|STIXSize|STIXNonUnicode")


def _charmap(path: str) -> frozenset[int] | None:
    """Code points of the font file at ``path``; ``None`` if matplotlib cannot draw with
    it (unreadable, or a bitmap-only font such as colour emoji, which has no scalable size)."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(path)
        font.set_size(12, 72)
        return frozenset(font.get_charmap())
    except Exception:  # any font matplotlib cannot use only costs us its glyphs
        return None


@functools.lru_cache(maxsize=1)
def _mono_chars() -> frozenset[int]:
    from matplotlib import font_manager

    return _charmap(font_manager.findfont(font_manager.FontProperties(family=[FONT]))) or frozenset(range(128))


@functools.lru_cache(maxsize=1)
def _fallback_fonts() -> tuple[tuple[str, frozenset[int]], ...]:
    """``(family, code points)`` of every other installed font matplotlib can draw with
    (placeholder and TeX math fonts left out), by family name (a stable order); read once, and only
    when :data:`FONT` lacks a character."""
    from matplotlib import font_manager

    chars: dict[str, set[int]] = {}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: (e.name, e.fname)):
        if entry.name != FONT and not _SKIPPED_FONTS.match(entry.name):
            cmap = _charmap(entry.fname)
            if cmap:
                chars.setdefault(entry.name, set()).update(cmap)
    return tuple((name, frozenset(c)) for name, c in chars.items())


@functools.lru_cache(maxsize=65536)
def font_for(ch: str) -> str | None:
    """The font family that draws ``ch``: :data:`FONT` if it has it, else the first
    installed font that does; ``None`` when none does."""
    if ord(ch) in _mono_chars():
        return FONT
    return next((name for name, chars in _fallback_fonts() if ord(ch) in chars), None)


def font_families(texts: Iterable[str]) -> list[str]:
    """``[FONT, ...]`` plus the fallback families the characters of ``texts`` need, in
    first-use order: the ``family`` to draw them with."""
    families = [FONT]
    for text in texts:
        for ch in text:
            name = font_for(ch)
            if name is not None and name not in families:
                families.append(name)
    return families


def display_width(text: str) -> int:
    """Width of ``text`` in monospace columns (wide East Asian characters count 2)."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def display_token(token: str, max_len: int = 24, renderable: Callable[[str], bool] | None = None) -> str:
    """A token as it can be drawn.

    Newlines/tabs become ``\\n``/``\\t``; other control and format characters
    ``\\xNN``/``\\uNNNN``; a character ``renderable`` rejects (default: no installed font
    has it, :func:`font_for`) ``⟨U+XXXX⟩``; ``$`` is kept literal (callers turn math text
    off); a whitespace-only token is shown as ``·`` per space so it stays visible. Longer
    than ``max_len``: cut with ``…`` (never inside a ``⟨U+XXXX⟩``).
    """
    if token and not token.strip(" "):
        return "·" * min(len(token), max_len)
    renderable = renderable or (lambda ch: font_for(ch) is not None)
    parts = []
    for ch in token:
        if ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in _INVISIBLE:
            parts.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        elif not renderable(ch):
            parts.append(MISSING_GLYPH.format(ord(ch)))
        else:
            parts.append(ch)
    if sum(map(len, parts)) <= max_len:
        return "".join(parts)
    out = ""
    for part in parts:
        if len(out) + len(part) > max_len - 1:
            break
        out += part
    return out + "…"


def tick_label(token: str, max_len: int = 20) -> str:
    """:func:`display_token` for tick labels (``$`` escaped: tick labels parse math)."""
    return display_token(token, max_len).replace("$", r"\$")
