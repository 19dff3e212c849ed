"""The code blocks of a reply, as Markdown reads them (fenced and indented), for copying one at a time."""

from markdown_it import MarkdownIt

_PARSER = MarkdownIt("commonmark")


def code_blocks(markdown: str) -> list[str]:
    """Each block's text, in order, as the chat shows it in a code box (no fences, no indentation, no final
    newline: pasted into a shell, a block must not run by itself)."""
    return [t.content.removesuffix("\n") for t in _PARSER.parse(markdown) if t.type in ("fence", "code_block")]
