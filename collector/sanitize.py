"""What goes out is made safe where it lands (a leaf): text for logs and terminals, CSV cells.

Everything the exchange, a database row or a state file holds is outside text: an asset name, a
Kraken error, a lease holder. Two sinks read text in ways that outside text can abuse:

* **a log or a terminal** reads a line break as the start of a new record (a forged ``CRITICAL``
  line) and ESC, CSI or OSC sequences as commands (a cleared screen, a retitled window, a link).
  :func:`text` escapes every control character as Python would write it in a literal (``\\n``,
  ``\\x1b``, ``\\u2028``), so one value stays one visible line of plain characters;
* **a spreadsheet** runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (and
  tab or CR lead there on some imports). :func:`cell` prefixes such a text cell with ``'``
  (OWASP's rule); numbers are never given to it, so ``-0.5`` stays a number.
"""

from __future__ import annotations

import re

#: C0 controls (line breaks, tab and ESC among them), DEL and the C1 controls (CSI ``\x9b`` and
#: OSC ``\x9d`` start terminal sequences on their own), the Unicode line and paragraph
#: separators (line breaks to some log readers), and the bidirectional overrides and isolates
#: (they make a line read as other text than it holds).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text(value: object) -> str:
    """``value`` as one line of printable text: each control character escaped (``\\n``,
    ``\\x1b``), everything else as it is. A backslash is left alone: the escapes are for a
    person reading, not for parsing back."""
    found = value if isinstance(value, str) else str(value)
    return _CONTROL.sub(_escape, found)


#: The first characters that make a spreadsheet read a cell as a formula (OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: str | None) -> str | None:
    """A CSV *text* cell that no spreadsheet runs: one starting with a formula character gets a
    leading ``'`` (shown, not evaluated, by Excel, LibreOffice and Google Sheets). Give it text
    columns only: numbers are written as they are."""
    if value and value.startswith(FORMULA_START):
        return "'" + value
    return value
