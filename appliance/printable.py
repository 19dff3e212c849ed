"""Text from outside, made safe to print: what could drive the terminal is shown, never sent.

Prompts, model replies, manifest and key fields, file names and the error messages that quote them
reach a terminal (or a file someone will `cat`). A terminal obeys what it is sent: ESC starts
sequences that set the title (OSC 0), write the clipboard (OSC 52) or clear the screen (CSI 2J);
CR and BS rewrite what is already on the line. So every character of these kinds is replaced by
its Python-style escape (`\\x1b`, `\\u202e`), which reads as what it is:

- C0 controls (U+0000-U+001F) except newline and tab, which text needs, and DEL (U+007F);
- C1 controls (U+0080-U+009F): U+009B is a one-character CSI and U+009D an OSC to some terminals;
- bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they reorder
  what is displayed, so the text read is not the text stored ("Trojan Source", CVE-2021-42574);
- lone surrogates (U+D800-U+DFFF), which undecodable input leaves behind: they cannot be encoded
  for output at all.

Each rule maps one code point to one escape, with no state, so text escaped in pieces (a streamed
reply) reads exactly as the whole escaped at once. A backslash is left as it is: the escapes are
for safety, not a reversible encoding, and paths and code stay readable.
"""

KEPT = frozenset("\n\t")
_RANGES = (range(0x20), range(0x7F, 0xA0), range(0x202A, 0x202F), range(0x2066, 0x206A), range(0xD800, 0xE000))
_ESCAPES = {cp: f"\\x{cp:02x}" if cp <= 0xFF else f"\\u{cp:04x}" for r in _RANGES for cp in r if chr(cp) not in KEPT}


def printable(text: str) -> str:
    """`text` with every character that could act on a terminal written as its visible escape."""
    return text.translate(_ESCAPES)
