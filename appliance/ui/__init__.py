"""The terminal UI (`appliance chat`), in Textual.

core.py        ChatCore: vault, kill-switch, journal, overlay, session; no widgets
divergence.py  the divergence meter (a shadow base decoder, KL per position)
keys.py        the one table of keys: bindings, help, command palette
app.py         ApplianceApp: screens, the kill key, the palette
loading.py     the loading screen: the base verified and loaded on a worker, shown as a progress bar
unlock.py, chat.py, sessions.py, help.py, modals.py   the screens
reply_worker.py  a reply written on a worker thread and streamed into its view; its header
handoff.py     the chat's hand-off of the prompt to $EDITOR and back
widgets.py     status bar (and how it shows a status snapshot), prompt with history, message
external_editor.py  ctrl+e: the prompt in $EDITOR on a 0600 scratch file, wiped after
code_blocks.py the code blocks of a reply (ctrl+g copies one)
appliance.tcss the theme
"""

from .app import ApplianceApp
from .core import ChatCore

__all__ = ["ApplianceApp", "ChatCore"]
