"""Printing strings that come from a bundle, a legacy directory or the file system.

A bundle is untrusted input, and so is every string in it (model id, domain
names, provenance) and every file name in its directory. Written raw to a
terminal, such a string can carry escape sequences (clear the screen, fake a
line), bidirectional overrides that reorder what a person reads, or code
points that cannot be encoded at all (a lone surrogate from a file name that
is not UTF-8), which would kill the run with a traceback. :func:`safe_text`
replaces each of those by a visible escape (``\\x1b``, ``\\u202e``,
``\\udcff``); everything else is printed as is.

JSON output needs nothing more: ``json.dumps`` with its default
``ensure_ascii=True`` escapes every non-ASCII code point.
"""

from __future__ import annotations

import re

__all__ = ["safe_lines", "safe_text"]

_UNSAFE = (
    "\x00-\x1f\x7f-\x9f"  # C0 and C1 controls, DEL
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks and overrides
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff"  # lone surrogates (and undecodable file-name bytes)
    "\ufdd0-\ufdef\ufffe\uffff"  # non-characters of the basic plane
)
_PATTERN = re.compile(f"[{_UNSAFE}]")
_PATTERN_KEEP_NL = re.compile(
    f"[{_UNSAFE.replace(chr(0) + '-' + chr(0x1F), chr(0) + '-' + chr(9) + chr(11) + '-' + chr(0x1F))}]"
)


def _escape(m: re.Match[str]) -> str:
    cp = ord(m.group())
    return f"\\x{cp:02x}" if cp <= 0xFF else f"\\u{cp:04x}"


def safe_text(text: object) -> str:
    """``str(text)`` with control, bidi, surrogate and non-character code points escaped."""
    return _PATTERN.sub(_escape, str(text))


def safe_lines(text: str) -> str:
    """:func:`safe_text` for a block of lines: newlines are kept, everything else escaped."""
    return _PATTERN_KEEP_NL.sub(_escape, text)
