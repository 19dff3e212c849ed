"""A base under a memory cap: what it needs (from its GGUF header), where the cap is read, and the real
`appliance ask` refused under a cgroup too small for it (exit 3, nothing loaded) and running under one it fits."""

import secrets
from pathlib import Path

import pytest
from helpers import TEST_KDF, appliance, error_line, tree_digest

from appliance import state
from appliance.runtime.memory import Cap, Need, NotEnoughMemory, gguf_shape, memory_cap, require_room, runtime_need
from appliance.trust.builtin import embedded_pin
from appliance.vault import Vault

MIB = 1 << 20


def test_the_embedded_models_need_is_read_from_its_header():
    pin = embedded_pin()
    need = runtime_need(gguf_shape(pin.path), pin.size, n_ctx=4096, sequences=2, n_batch=512)
    # 30 blocks, 3 KV heads of 64: llama.cpp reports 90 MiB of f16 KV cache for one 4096-token sequence
    assert need.kv_cache == 2 * 90 * MIB
    assert need.compute == 4 * 512 * 49152  # the logits of a batch are the widest (llama.cpp reserves 99.4 MiB)
    assert need.total == int((pin.size + need.kv_cache + need.compute) * 1.15)


def test_a_need_over_what_the_cap_leaves_is_refused_naming_both():
    cap = Cap(limit=1000 * MIB, used=600 * MIB, where=Path("/sys/fs/cgroup/x"))
    require_room("base b", Need(300 * MIB, 40 * MIB, 0), cap)  # 391 MiB with the margin: fits in 400
    with pytest.raises(NotEnoughMemory) as refused:
        require_room("base b", Need(300 * MIB, 50 * MIB, 10 * MIB), cap)
    assert str(refused.value).startswith("base b needs 414 MiB (weights 300, KV cache 50, compute 10, + 15 %) of memory;")
    assert "the memory cap leaves 400 MiB (1,000 MiB limit, 600 in use, cgroup /sys/fs/cgroup/x)" in str(refused.value)


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def _write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text + "\n")


def test_the_tightest_cap_over_the_cgroup_and_its_ancestors_counts_v2_and_v1(tmp_path):
    v2, v1 = tmp_path / "unified", tmp_path / "memory"
    _write(v2 / "a", memory_max="max", memory_current="5")
    _write(v2 / "a" / "b", memory_max=str(2000 * MIB), memory_current=str(500 * MIB))
    _write(v2 / "a" / "b" / "c", memory_max="max", memory_current=str(400 * MIB))
    mounts = f"41 23 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n35 31 0:32 / {v1} rw,relatime - cgroup cgroup rw,memory\n"
    proc = _fake_proc(tmp_path, "4:memory:/\n0::/a/b/c\n", mounts)
    assert memory_cap(proc) == Cap(2000 * MIB, 500 * MIB, v2 / "a" / "b")  # an ancestor's limit binds its children
    _write(v1, memory_limit_in_bytes=str((1 << 63) - 4096), memory_usage_in_bytes="7")  # v1's "no limit"
    assert memory_cap(proc) == Cap(2000 * MIB, 500 * MIB, v2 / "a" / "b")
    _write(v1, memory_limit_in_bytes=str(1000 * MIB), memory_usage_in_bytes=str(100 * MIB))
    assert memory_cap(proc) == Cap(1000 * MIB, 100 * MIB, v1)  # 900 MiB free is tighter than 1500
    assert memory_cap(_fake_proc(tmp_path / "none", "0::/\n", mounts)) is None


def _child_cgroup(limit: int) -> Path:
    """A memory cgroup of our own under this process's (cgroup v1 or v2), or a skip where none can be made."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "memory" in controllers.split(","):
            base, limit_file = (
                ("/sys/fs/cgroup", "memory.max") if controllers == "" else ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            )
            group = Path(base + path) / f"appliance-test-{secrets.token_hex(4)}"
            try:
                group.mkdir()
            except OSError:
                continue
            try:
                (group / limit_file).write_text(str(limit))
                return group
            except OSError:
                group.rmdir()
    pytest.skip("no memory cgroup can be made here (needs root, or a delegated cgroup v2 subtree)")


@pytest.fixture
def home_with_vault(home, tmp_path, monkeypatch):
    state.initialise(home)
    Vault.create(home, b"memory cap passphrase", cost=TEST_KDF).zeroize()  # the test KDF: the cap is for the base
    (tmp_path / "pp").write_text("memory cap passphrase")
    (tmp_path / "pp").chmod(0o600)
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(tmp_path / "pp"))
    return home


@pytest.mark.parametrize("limit, fits", [(300 * MIB, False), (1200 * MIB, True)])
def test_ask_under_a_cgroup_memory_cap(home_with_vault, limit, fits):
    group = _child_cgroup(limit)
    enter = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
    try:
        before = tree_digest(home_with_vault)
        r = appliance("ask", "Say hello.", "--max-tokens", "4", "--temperature", "0", prefix=enter)
        if fits:
            assert r.returncode == 0 and r.stdout.strip(), r.stderr
        else:
            line = error_line(r, 3, "not-enough-memory")
            assert "base smollm2-135m-instruct-q4_1 needs 425 MiB (weights 94, KV cache 180, compute 96, + 15 %)" in line
            assert f"cgroup {group}" in line and tree_digest(home_with_vault) == before
    finally:
        group.rmdir()
