"""`appliance overlay control-export | control-import | steer`: build-station work on control vectors."""

from pathlib import Path

import click

from .output import say


def _base():
    """The embedded base, verified, and its shape: (model, hidden size, block count, architecture)."""
    from ..runtime.llama import LlamaEngine
    from ..trust.builtin import embedded_pin, verify_pinned

    model = verify_pinned(embedded_pin())
    engine = LlamaEngine(model.path, n_ctx=64, n_threads=1)
    try:
        return model, engine.n_embd, engine.n_layer, engine.metadata("general.architecture") or ""
    finally:
        engine.close()


@click.command("control-export")
@click.option(
    "--control",
    "control_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Directory with control.json + control.safetensors.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The GGUF file to write.")
def control_export(control_dir: Path, out: Path) -> None:
    """Write a control vector as llama.cpp's control-vector GGUF (strength applied: load it unscaled)."""
    from ..overlay.control import load_control_dir
    from ..overlay.control_gguf import export_gguf

    model, hidden, n_layer, arch = _base()
    vector = load_control_dir(control_dir, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    export_gguf(vector, out, model_hint=arch)
    say(f"wrote {out}: blocks {', '.join(map(str, vector.layers))} at strength {vector.strength:g}")


@click.command("control-import")
@click.option("--gguf", "gguf_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for control.json + control.safetensors.",
)
def control_import(gguf_path: Path, out: Path) -> None:
    """Admit a llama.cpp control-vector GGUF (cvector-generator, repeng) for the embedded base, as our two files."""
    from ..overlay.control import save_control
    from ..overlay.control_gguf import import_gguf

    model, hidden, n_layer, _ = _base()
    vector = import_gguf(gguf_path, base_sha256=model.sha256, hidden_size=hidden, n_layer=n_layer)
    save_control(vector, out)
    say(f"wrote {out}/control.json and {out}/control.safetensors: blocks {', '.join(map(str, vector.layers))}")
