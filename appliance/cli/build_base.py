"""`--base NAME` of every build-station command (`appliance overlay ...`): which base a job is for, one way."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click

from .. import paths
from ..store.bases import EMBEDDED, active_model, close_model, open_model
from ..trust.builtin import VerifiedModel, embedded_pin, verify_pinned
from ..vault import Vault
from .output import say
from .unlocking import passphrase_option, unlocked


def base_option(f):
    """`--base NAME` and the `--passphrase-file` an installed base needs."""
    f = passphrase_option(f)
    return click.option(
        "--base",
        "base_name",
        metavar="NAME",
        default=None,
        help=f"The base to build for: {EMBEDDED}, or an installed base (decrypted into memory and verified; needs the "
        "passphrase). Default: the active base (the embedded one where there is no vault).",
    )(f)


@contextmanager
def resolve_build_base(name: Optional[str], passphrase_file: Optional[Path]) -> Iterator[VerifiedModel]:
    """The base NAME, verified, said on stdout (`base: ...`); an installed one's memfd is closed after the job.

    `embedded` is the built-in default, checked against its pin; another NAME an installed base, decrypted
    into a memfd (the job gets its /proc/self/fd path, as llama.cpp does) and checked against its accepted
    manifest. Without NAME, the active base: the store, sealed in the vault, says which, so with a vault
    the passphrase is asked; without one (a build station) it is the embedded default.
    """
    if name == EMBEDDED or (name is None and Vault.state(paths.state_dir()) != "present"):
        model = verify_pinned(embedded_pin())
    else:
        with unlocked(passphrase_file) as vault:  # the data key is needed only for the decryption
            model = active_model(vault) if name is None else open_model(vault, name)
    installed = model.fd is not None  # only an installed base lives in a memfd
    say(
        f"base: {model.name} v{model.version} ({model.origin})"
        if installed
        else f"base: {EMBEDDED} ({model.name} v{model.version})"
    )
    try:
        yield model
    finally:
        close_model(model)
