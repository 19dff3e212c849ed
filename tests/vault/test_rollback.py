"""An older copy of the whole state directory put back: consistent in itself, so only a number kept
outside it can tell. Every vault write raises the generation; `status` shows it, `logs verify
--generation N` refuses one lower than the N the operator noted, and a running appliance refuses
a generation lower than one it has already seen (tests/vault/test_key_hierarchy.py)."""

import re
import shutil

from helpers import appliance, error_line, ok, tree_digest

GENERATION = re.compile(r"^vault: +generation (\d+), written (\S+)", re.M)


def _generation(home) -> int:
    match = GENERATION.search(ok("status"))
    assert match, "status shows no generation"
    return int(match.group(1))


def test_a_state_directory_put_back_shows_an_older_generation(vault_home, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(vault_home, copy)
    before = _generation(vault_home)
    ok("kill-policy", "wipe")  # any write that the copy misses (an unpinned signer, an erase, a session)
    noted = _generation(vault_home)
    assert noted > before
    assert f"vault   generation {noted}," in ok("logs", "verify", "--generation", str(noted))

    shutil.rmtree(vault_home)
    shutil.copytree(copy, vault_home)
    assert _generation(vault_home) == before < noted  # what the operator compares with the number noted
    state = tree_digest(vault_home)
    line = error_line(appliance("logs", "verify", "--generation", str(noted)), 3, "vault-rolled-back")
    assert f"generation {before}" in line and f"you noted generation {noted}" in line
    assert tree_digest(vault_home) == state
    ok("logs", "verify", "--generation", str(before))
