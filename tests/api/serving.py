"""A real `appliance serve` for the API tests: a fresh state dir with a vault, the server inside `unshare -n`,
and the clients no one here wrote (the `openai` package over an httpx2 Unix-socket transport, curl)."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
from helpers import PASSPHRASE, make_vault_home

from appliance.api import socket_path
from appliance.journal import read_session, sessions
from appliance.vault import Vault

MODEL = "smollm2-135m-instruct-q4_1"
OFFLINE = ["unshare", "-n"]


@dataclass
class Served:
    home: Path
    env: dict
    proc: subprocess.Popen

    @property
    def socket(self) -> Path:
        return socket_path(self.home)

    def client(self) -> openai.OpenAI:
        """The official client: the socket's mode and the peer check are the authentication, so any key does."""
        transport = httpx2.HTTPTransport(uds=str(self.socket))
        return openai.OpenAI(
            api_key="local", base_url="http://appliance/v1", http_client=httpx2.Client(transport=transport), max_retries=0
        )

    def http(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket)), base_url="http://appliance", timeout=120)

    def curl(self, *args: str) -> tuple[int, str]:
        """curl --unix-socket: (HTTP status, body)."""
        r = subprocess.run(
            ["curl", "-sS", "--unix-socket", str(self.socket), "-w", "\n%{http_code}", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        text, _, status = r.stdout.rpartition("\n")
        return int(status), text

    def journal(self) -> dict[str, list[dict]]:
        """Every journal session, decrypted (the server keeps running: reading needs no kill-switch)."""
        vault = Vault.unlock(self.home, PASSPHRASE.encode())
        try:
            return {sid: read_session(vault, sid) for sid in sessions(vault)}
        finally:
            vault.zeroize()

    def appliance(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "appliance", *args], env=self.env, capture_output=True, text=True, timeout=300
        )

    def stop(self, kill: bool = True) -> tuple[int, str]:
        """`appliance kill` (unless the test sent its own), then the server's exit code and stderr."""
        if kill and self.proc.poll() is None:
            assert self.appliance("kill").returncode == 0
        _out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


def prepared_home(root: Path) -> tuple[Path, dict]:
    home, passphrase = root / "home", root / "passphrase"
    passphrase.write_bytes(PASSPHRASE.encode() + b"\n")
    make_vault_home(home)
    return home, {**os.environ, "APPLIANCE_HOME": str(home), "APPLIANCE_PASSPHRASE_FILE": str(passphrase)}


def start(home: Path, env: dict) -> Served:
    """`appliance serve` in a network namespace with no interfaces; returns once it says it is serving."""
    proc = subprocess.Popen(
        [*OFFLINE, sys.executable, "-m", "appliance", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise AssertionError(f"serve did not start: {line!r} {proc.communicate()[1]}")
    return Served(home, env, proc)


def chat_body(prompt: str, **fields) -> str:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], **fields})
