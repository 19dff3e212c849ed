"""The encrypted, hash-chained, provenance-tagged journal: one file per chat session.

Rules:
- Every record is AES-256-GCM under the session's own data key from the vault, with associated
  data `session_id || seq || prev_hash`; `prev_hash` chains each record to the one before.
- The vault keeps a sealed head (last seq and hash) per session, so a cut-off tail is detected.
- Appending never leaves a half record behind; a failed append raises `JournalWriteFailed`.
- Verification names the first broken record (from 1) and how it broke: modified, deleted,
  reordered, truncated, foreign (copied from another session), replaced (the whole file is
  another session's) or orphan (a file the vault has no key and no erase record for).
"""

from . import provenance
from .frames import Break
from .session_files import Journal, JournalBroken, JournalWriteFailed, Report, read_session, sessions, verify_session

__all__ = [
    "Break",
    "Journal",
    "JournalBroken",
    "JournalWriteFailed",
    "Report",
    "provenance",
    "read_session",
    "sessions",
    "verify_session",
]
