"""A child of the appliance starts isolated: in /, with the environment it is given, no stray descriptors,
and (Python) importing nothing from where the operator stands."""

import json
import os

from appliance import children

REPORT = (
    "import json, os, struct, sys; print(json.dumps({'cwd': os.getcwd(), 'struct': struct.__file__, "
    "'env': sorted(os.environ), 'fds': sorted(int(fd) for fd in os.listdir('/proc/self/fd'))}))"
)


def test_a_python_child_imports_nothing_from_the_operators_directory(tmp_path, monkeypatch):
    (tmp_path / "struct.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setenv("LANG", "C.UTF-8")
    stray = os.open(tmp_path / "struct.py", os.O_RDONLY)  # inheritable: only pass_fds may reach the child
    os.set_inheritable(stray, True)
    passed = os.open(tmp_path / "struct.py", os.O_RDONLY)
    try:
        r = children.run(children.python("-c", REPORT), keep=("LANG",), extra={"X": "1"}, pass_fds=(passed,),
                         capture_output=True, text=True, check=True)  # fmt: skip
    finally:
        os.close(stray)
        os.close(passed)
    seen = json.loads(r.stdout)
    assert seen["cwd"] == "/"
    assert not seen["struct"].startswith(str(tmp_path)) and not (tmp_path / "ran").exists()
    assert set(seen["env"]) <= {"LANG", "X", "LC_CTYPE"}  # LC_CTYPE: Python's own C-locale coercion
    assert passed in seen["fds"] and stray not in seen["fds"]


def test_a_program_gets_only_the_variables_named(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    r = children.run(["env"], keep=children.TERMINAL, capture_output=True, text=True, check=True)
    names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
    assert "SECRET_TOKEN" not in names and names <= set(children.TERMINAL)
