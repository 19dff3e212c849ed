"""The CLI's only way to the terminal: every line (and every streamed piece) is escaped on its way out.

One choke point rather than an escape at each place that prints outside text: a command cannot
forget it, and tests/test_terminal_injection.py holds that nothing else in the CLI writes output.
"""

import sys

import click

from ..printable import printable


def say(text: str = "") -> None:
    """One line on stdout."""
    click.echo(printable(text))


def warn(text: str) -> None:
    """One line on stderr: notes, warnings, progress, the `error:` line."""
    click.echo(printable(text), err=True)


def stream(piece: str) -> None:
    """A piece of a reply as it is generated, shown at once (escaping is per character: pieces compose)."""
    sys.stdout.write(printable(piece))
    sys.stdout.flush()
