"""The air-gapped appliance: a local model, a signed removable overlay, an encrypted journal.

Layers, dependencies pointing down only:

    cli/                  command line (and, later, the terminal UI)
    runtime/              llama.cpp decode loop, sampler, chat template, Session
    overlay/              Takens-LoRA maths (numpy, torch) and its file format
    trust/                hashing and the pinned manifests that gate every load
    errors, paths         typed failures with exit codes; where state lives
"""

import os

__version__ = "0.1.0"

# Offline by construction: no library we load may reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
