"""Constants the vault tests share. A plain module (not conftest.py), so test files import it by a
name no other test directory uses (two `conftest` modules on one path shadow each other)."""

PASSPHRASE = b"correct horse battery staple"
