"""A verified session as text: one line of provenance per message, and the Markdown export.

The Markdown is escaped (`appliance.printable`): the file will be `cat` to a terminal, and the chat
UI shows the same text.
"""

import json
from typing import Optional

from ..printable import printable
from .index import client_text


def provenance_line(r: dict) -> str:
    base = r.get("base") or {}
    system = f"; preset {r['preset']}" if r.get("preset") else ""
    system += f"; system prompt {json.dumps(r['system_prompt'])}" if r.get("system_prompt") else ""
    control = f"; control vector {_switched(r['control'])}" if r.get("control") else ""
    client = f"; client {client_text(r['client'])}" if r.get("client") else ""
    device = f"; device {device_text(r['device'])}" if isinstance(r.get("device"), dict) else ""  # older records: none
    return (f"base {base.get('name')} v{base.get('version')} {str(base.get('sha256'))[:12]}; overlay {_switched(r.get('overlay'))}"
            f"{control}; settings {json.dumps(r.get('settings'))}{system}{client}{device}")  # fmt: skip


def device_text(device: dict) -> str:
    """`cpu`, or the card and its layers: `NVIDIA H100 80GB HBM3 (31/31 layers)`."""
    if "gpu_layers" not in device:
        return str(device.get("name"))
    return f"{device.get('name')} ({device.get('gpu_layers')}/{device.get('of')} layers)"


def _switched(item: Optional[dict]) -> str:
    """An overlay's or control vector's record: name, version, on or off, its signers."""
    if not item:
        return "none"
    strength = f" strength {item['strength']:.3g}" if isinstance(item.get("strength"), (int, float)) else ""
    return f"{item['name']} v{item['version']} {'on' if item['on'] else 'off'}{strength} signers {','.join(item['signers'])}"


def markdown_transcript(session_id: str, records: list[dict]) -> str:
    """Each message under its provenance (`logs export` and the chat UI's sessions screen)."""
    lines = [f"# Session {session_id}", ""]
    for n, r in enumerate(records, 1):
        if r["kind"] == "message":
            lines += [f"## {n}. {r['role']} ({r['time']})", "", f"*{provenance_line(r)}*", "", r["text"], ""]
        else:
            lines += [
                f"## {n}. {r['kind']} ({r['time']})",
                "",
                f"`{json.dumps({k: v for k, v in r.items() if k not in ('kind', 'time')})}`",
                "",
            ]
    return printable("\n".join(lines))
