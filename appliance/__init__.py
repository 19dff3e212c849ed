"""The air-gapped appliance: a local model, a signed removable overlay, an encrypted journal.

Layers, dependencies pointing down only (tests/test_architecture.py holds the table; README.md
says what each part holds):

    cli                   the `appliance` command
    ui                    the Textual chat
    service, demo         the unlocked appliance that `ask` and the chat share; `init --demo`
    emergency             what a kill does
    erase                 crypto-erase by kind, calling each owner
    store, training       verified import and loading; overlay training and its report
    journal, runtime, presets
                          the encrypted journal (and resuming a session from it); llama.cpp and
                          the decode loop; prompt presets encrypted in the vault
    vault, trust          keys and sealed state; manifests, bundles, signatures, the trust policy
    state, state_files, overlay
                          the state dir; the reader of sealed state files; the Takens-LoRA maths
    errors, fsutil, hardening, paths, printable, utc
                          typed failures with reason codes; durable writes; process protections;
                          where state lives; escaping outside text; UTC time
"""

import os

__version__ = "0.1.0"

# Offline by construction: no library we load may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
