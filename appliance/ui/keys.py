"""Every key of the UI, in one table: the screens' BINDINGS, the help screen and the command palette read it.

Keys are chosen to reach the app through tmux and common terminals: F-keys and ctrl+letters that
are not also a terminal control character Textual reads as another key (ctrl+m is enter, ctrl+i
is tab, ctrl+h is backspace) and that tmux does not take (its prefix is ctrl+b).
"""

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    key: str
    action: str
    title: str  # short, for the footer
    help: str  # one line, for the help screen and the palette
    priority: bool = False  # reaches the screen even while the prompt (a TextArea) has focus
    builtin: bool = False  # handled by a widget or by Textual itself: listed in help, not bound again
    footer: bool = True  # 80 columns hold about seven keys; the rest are in help and the palette

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.title, show=self.footer, priority=self.priority)


APP_KEYS = (
    Key(
        "f9",
        "kill",
        "Kill",
        "Kill-switch: stop the reply, overlay off, keys zeroed, journal `kill`, lock. No confirmation.",
        True,
    ),
    Key("f1", "help", "Help", "This help: every key and what the divergence meter costs."),
    Key("ctrl+p", "command_palette", "Palette", "Command palette: search every command below.", builtin=True),
    Key("ctrl+q", "quit", "Quit", "Lock (keys zeroed) and leave.", True, footer=False),
)

CHAT_KEYS = (
    Key("enter", "send", "Send", "Send the prompt (in the prompt box).", builtin=True),
    Key(
        "ctrl+j",
        "newline",
        "Newline",
        "New line in the prompt; a multi-line paste stays one message; up/down at the edges recall earlier prompts.",
        builtin=True,
    ),
    Key(
        "ctrl+e",
        "external_editor",
        "Editor",
        "Write the prompt in $VISUAL/$EDITOR (else vi): a 0600 file under the state dir, wiped as the editor exits.",
        True,
        footer=False,
    ),
    Key("escape", "stop", "Stop", "Stop the reply now (within one token).", True),
    Key(
        "f2",
        "toggle_overlay",
        "Overlay",
        "Switch the overlay ON/OFF; the next reply is what a fresh session in that state says.",
        True,
    ),
    Key(
        "ctrl+t",
        "toggle_control",
        "Control",
        "Switch the control vector ON/OFF (beside the overlay); the next reply is what a fresh session in that state says.",
        True,
        footer=False,
    ),
    Key(
        "f3",
        "toggle_audit",
        "Audit",
        "Divergence meter on/off: KL(what is on || base) over each reply made with the overlay or control vector on.",
        True,
    ),
    Key(
        "ctrl+r",
        "regenerate",
        "Regenerate",
        "Regenerate the last reply with a new seed (journalled `regenerate`, keeping the replaced reply).",
        True,
        footer=False,
    ),
    Key(
        "ctrl+l",
        "edit_last",
        "Edit last",
        "Edit and resend the last prompt: it comes back in the prompt box; enter sends it in place of the last exchange "
        "(journalled `edit`; the old exchange stays in the journal). Again to cancel.",
        True,
        footer=False,
    ),
    Key(
        "ctrl+o",
        "copy_reply",
        "Copy",
        "Copy the last reply (as shown, escaped) to the clipboard by OSC 52: the terminal must allow OSC 52 "
        "(tmux: `set -g set-clipboard on`).",
        True,
        footer=False,
    ),
    Key(
        "ctrl+g",
        "copy_code",
        "Copy code",
        "Copy one code block of the last reply by OSC 52 (the terminal must allow it): the last block, and each press "
        "the one before.",
        True,
        footer=False,
    ),
    Key("f4", "sessions", "Sessions", "Past sessions: open (decrypted, with provenance), verify, export Markdown.", True),
    Key("f5", "new_session", "New", "New session: empty history, new journal session.", True, footer=False),
    Key(
        "f6",
        "system_prompt",
        "Presets",
        "System prompt: pick a preset (`appliance preset add`), the model's default, or write one for this session.",
        True,
        footer=False,
    ),
    Key("f7", "erase_overlay", "Erase ovl", "Crypto-erase the overlay (type its name to confirm).", True, footer=False),
    Key(
        "f8",
        "erase_journal",
        "Erase log",
        "Crypto-erase every journal session (type `erase logs` to confirm).",
        True,
        footer=False,
    ),
)

SESSIONS_KEYS = (
    Key("enter", "open", "Open", "Open the selected session (decrypted, each message with its provenance).", builtin=True),
    Key(
        "r",
        "resume",
        "Resume",
        "Continue the selected session in the chat: its history and system prompt, in a new journal session linked to it.",
    ),
    Key(
        "slash",
        "search",
        "Search",
        "Search every session for a word or phrase (any case), decrypted in memory, the newest first; no index of words is written.",
    ),
    Key("n", "next_page", "Next page", "The next page of older sessions (50 a page, the newest first)."),
    Key("p", "previous_page", "Prev page", "The previous page of newer sessions.", footer=False),
    Key("v", "verify", "Verify", "Verify every session's hash chain and sealed head; breaks are named."),
    Key("e", "export", "Export", "Export the selected session as Markdown."),
    Key("escape", "back", "Back", "Back to the chat."),
)

SECTIONS = (("Everywhere", APP_KEYS), ("Chat", CHAT_KEYS), ("Sessions", SESSIONS_KEYS))


def bindings(keys: tuple[Key, ...]) -> list[BindingType]:
    return [k.binding() for k in keys if not k.builtin]
