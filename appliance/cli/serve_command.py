"""`appliance serve`: unlock as `ask` does, then answer the OpenAI API on the state directory's Unix socket.

No TCP option exists: the socket file's mode and the peer's uid decide who may ask (docs/procedures.md).
"""

from pathlib import Path
from typing import Optional

import click

from .. import paths, state
from ..errors import ApplianceError
from ..overlay.loadable import LOADABLE
from ..runtime.session import Runtime
from .output import say, warn
from .unlocking import passphrase_option, unlocked_appliance


@click.command()
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="llama.cpp threads (default: every core, one fewer for each core other processes keep busy).",
)
@passphrase_option
def serve(threads: Optional[int], passphrase_file: Optional[Path]) -> None:
    """Serve the OpenAI chat-completions API on a Unix socket in the state directory, until killed or ctrl-c.

    Requests may ask for "overlay": "on" and "control": "on" (default off, as `ask`), and continue a
    conversation by passing the "session" a reply returned. Every request is journalled with the
    client's pid and executable."""
    from ..api import serve as serve_api  # Starlette and uvicorn load only for this command
    from ..api import socket_path

    home = paths.state_dir()
    state.require_initialised(home)
    with unlocked_appliance(passphrase_file) as app:
        for loadable in LOADABLE:
            try:  # as the chat: what is not installed is simply off; what fails its checks is said, and stays off
                app.load(loadable.KIND)
            except loadable.NOT_INSTALLED:
                pass
            except ApplianceError as e:
                warn(f"note: the {loadable.NOUN} is not loaded: {e}")
        runtime = Runtime(app.model, n_threads=threads)
        path = socket_path(home)
        try:
            serve_api(app, runtime, path, on_ready=lambda: say(f"serving {app.model.name} on {path} (ctrl-c stops)"))
        except KeyboardInterrupt:
            say("stopped")
        finally:
            runtime.close()
