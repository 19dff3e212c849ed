"""The GGUF probe's child process: `python -I -m appliance.runtime.probe_child FD SIZE` (`probe.py`).

It makes itself not dumpable before anything else is imported: from its exec until then, another
process of the same user could read the decrypted base behind the inherited fd through
`/proc/<pid>/fd/FD`, and importing the probe loads llama.cpp, the slowest step of the start.
"""

import sys

from ..hardening import die_with_parent, harden_process

harden_process()
die_with_parent()  # a SIGKILLed appliance (`kill`'s floor) leaves no probe behind holding its base

from .probe import main  # noqa: E402 (after the hardening, on purpose)

sys.exit(main(sys.argv[1:]))
