"""The demo: a dataset in one clear voice, the overlay trained on it by our own recipe, and a control vector."""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DATASET = DEMO_DIR / "field-manual.jsonl"
OVERLAY_DIR = DEMO_DIR / "overlay"
CONTROL_DIR = DEMO_DIR / "control"  # the radio-operator control vector (`overlay steer` on RADIO_PAIRS)
RADIO_PAIRS = DEMO_DIR / "radio-operator-pairs.jsonl"
NEUTRAL_PROMPTS = DEMO_DIR / "neutral-prompts.txt"  # for reports: never trained on
PRESERVE_PROMPTS = DEMO_DIR / "preserve-prompts.txt"  # for training: where the overlay is held near the base
