"""Text fit to print or store: no secret, no control character, no spreadsheet formula.

Every place that prints or stores a URL, a header, a server message or a name from a file goes
through these helpers:

* :func:`redact` masks credentials: a URL's userinfo (``scheme://user:secret@host``, a password
  holding ``@`` included), password-like query parameters (``?password=``, ``&token=``, ...),
  ``Authorization:`` / ``Proxy-Authorization:`` headers of any scheme, API keys (``sk-...``,
  ``Bearer ...``, the value of ``OPENAI_API_KEY``) and long key-like strings.
* :func:`printable` removes terminal escape sequences (CSI / OSC: clear screen, window title,
  clipboard writes) and every other control character (NUL included), keeping newlines and tabs
  only when asked.
* :func:`csv_cell` neutralises a cell a spreadsheet would run as a formula (``= + - @``, tab,
  carriage return at its start) by a leading apostrophe.
"""

from __future__ import annotations

import os
import re

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#]*@")
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:password|passwd|pwd|pass|secret|token|api[_-]?key|key|access[_-]?token)=)[^&;#\s]*")
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization)\s*[:=]\s*[^\r\n]*")
_KEYS = re.compile(r"(sk-|key-|Bearer\s+|Basic\s+)[A-Za-z0-9_\-+/=.]{6,}")
_LONG = re.compile(r"[A-Za-z0-9_\-]{32,}")
# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), other two-byte ESC sequences
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def redact(text: object, long_tokens: bool = False) -> str:
    """``text`` with every credential it may hold replaced by ``***`` (``long_tokens``: also
    every run of 32+ letters, digits, ``_`` or ``-``, for server text where a key may hide)."""
    s = str(text)
    s = _USERINFO.sub(r"\1***@", s)
    s = _QUERY_SECRET.sub(r"\1***", s)
    s = _AUTH_HEADER.sub(r"\1: ***", s)
    s = _KEYS.sub(r"\1***", s)
    key = os.environ.get("OPENAI_API_KEY", "")
    if len(key) >= 6:
        s = s.replace(key, "***")
    return _LONG.sub("***", s) if long_tokens else s


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` without terminal escape sequences and control characters (newlines and tabs kept
    with ``keep_newlines``, else turned into spaces)."""
    s = _ANSI.sub("", str(text))
    if keep_newlines:
        return _CONTROL.sub("", s.replace("\r\n", "\n"))
    return _CONTROL.sub("", s.replace("\n", " ").replace("\t", " ").replace("\r", " "))


def safe_text(text: object, limit: int | None = None, long_tokens: bool = False) -> str:
    """One printable line with no credential, cut to ``limit`` characters."""
    line = " ".join(printable(redact(text, long_tokens)).split())
    if limit is not None and len(line) > limit:
        return line[:limit] + "..."
    return line


def csv_cell(value: object) -> object:
    """A CSV cell a spreadsheet cannot run: text starting with ``= + - @`` (or a tab / CR) gets a
    leading apostrophe; numbers and other text are returned as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
