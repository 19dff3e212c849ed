"""Everything under the state dir is its user's alone (folders 0700, files 0600), whatever the umask
the appliance was started under: manifests, accepted records, overlay ciphertext, the pid file."""

import stat
import subprocess
import sys

from bundles import make_bundle
from helpers import ok

from appliance.vault.killswitch import pid_path

LOOSE_UMASK = ["sh", "-c", 'umask 022; exec "$@"', "sh"]  # what a login shell usually gives


def _not_private(home) -> list[str]:
    wrong = []
    for path in [home, *home.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600 if stat.S_ISREG(st.st_mode) else None
        if want is not None and stat.S_IMODE(st.st_mode) != want:
            wrong.append(f"{path.relative_to(home)} {stat.S_IMODE(st.st_mode):04o}")
    return wrong


def test_everything_under_the_state_dir_is_private(keys, tmp_path, monkeypatch):
    home, pp = tmp_path / "home", tmp_path / "pp"
    pp.write_text("a passphrase for the vault")
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(pp))
    bundle = make_bundle(keys, tmp_path / "care.bundle", version=1, seed=31)

    ok("init", prefix=LOOSE_UMASK)
    for who in ("alice", "bob"):
        ok("trust", "add", str(keys.public(who, tmp_path)), "--fingerprint", keys.fpr[who], prefix=LOOSE_UMASK)
    ok("update", "import", str(bundle), prefix=LOOSE_UMASK)
    ask = subprocess.Popen([*LOOSE_UMASK, sys.executable, "-m", "appliance", "ask", "Write a long story.", "--overlay", "on",
                            "--max-tokens", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert ask.stdout.read(1), ask.stderr.read().decode()
        running = _not_private(home)  # the pid file and the open journal session among them
        assert pid_path(home).exists()
    finally:
        ok("kill")
        ask.communicate(timeout=60)
    ok("status", prefix=LOOSE_UMASK)
    assert running == [] and _not_private(home) == []
