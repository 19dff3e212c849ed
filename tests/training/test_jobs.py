"""The build commands' shared inputs: one prompt-file reader, whose refusal every command gives the same way."""

import pytest
from helpers import appliance, error_line, tree_digest

from appliance.demo import CONTROL_DIR, DATASET, OVERLAY_DIR, RADIO_PAIRS
from appliance.errors import UsageError
from appliance.training.dataset import read_prompts

# Each command with its other inputs valid and PROMPTS where it takes a prompt file.
COMMANDS = {
    "train --preserve": ["train", "--data", str(DATASET), "--preserve", "PROMPTS", "--steps", "1"],
    "train --heal --preserve": ["train", "--heal", str(CONTROL_DIR), "--pairs", str(RADIO_PAIRS), "--preserve", "PROMPTS"],
    "report --prompts": ["report", "--overlay", str(OVERLAY_DIR), "--prompts", "PROMPTS"],
    "steer --neutral": ["steer", "--pairs", str(RADIO_PAIRS), "--neutral", "PROMPTS"],
    "control-report --prompts": ["control-report", "--control", str(CONTROL_DIR), "--prompts", "PROMPTS"],
}


def test_a_prompt_file_is_its_non_blank_lines_stripped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  Write a haiku.  \n\n\t\nWhat is rain?\r\n")
    assert read_prompts(path) == ["Write a haiku.", "What is rain?"]


@pytest.mark.parametrize("data, words", [(b" \n\t\n", "no prompts"), (b"", "no prompts"), (b"caf\xe9\n", "not UTF-8")])
def test_a_prompt_file_without_prompts_is_refused(tmp_path, data, words):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    with pytest.raises(UsageError, match=words):
        read_prompts(path)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_build_command_refuses_an_empty_prompt_file_and_writes_nothing(home, tmp_path, command):
    """Exit 2 before any base is opened: no passphrase is asked, nothing is written, the state dir is not made."""
    prompts = tmp_path / "empty.txt"
    prompts.write_text("\n  \n")
    args = [str(prompts) if a == "PROMPTS" else a for a in COMMANDS[command]]
    before = tree_digest(tmp_path)
    r = appliance("overlay", *args, "--out", str(tmp_path / "out"))
    assert f"{prompts}: no prompts" in error_line(r, 2, "usage")
    assert "base:" not in r.stdout
    assert tree_digest(tmp_path) == before
