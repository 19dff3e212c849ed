"""The `image` commands: pack a built image into a bundle (build station), and list, use, roll back
the installed versions (appliance). Thin shells over appliance/image/."""

import os
from pathlib import Path

import click

import appliance

from ..errors import NotFound
from ..image.pack import BUILD_INFO, pack_image, read_build_info
from ..image.storage import ImageLoadFailed, commands_text
from ..image.versions import Switch, after_import, list_images, rollback_image, use_image
from ..trust.image_rules import image_record
from ..utc import format_time
from .output import Shown, say, warn
from .unlocking import passphrase_option, unlocked

NAME = click.option("--name", default=None, help="The image item (default: the only image installed).")


@click.group()
def image() -> None:
    """The appliance image: pack it (build station), list, use and roll back its versions (appliance)."""


@image.command("build", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def image_build(args: tuple[str, ...]) -> None:
    """Build the image from this source checkout: runs image/build ARGS (--no-cache, --out DIR, --pack VERSION)."""
    script = Path(appliance.__file__).resolve().parents[1] / "image" / "build"
    if not script.is_file():
        raise NotFound(f"{script} is not here: the image is built from a source checkout, not from an installed appliance")
    os.execv(script, [str(script), *args])


@image.command("pack")
@click.argument("layout", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default="appliance", show_default=True)
@click.option("--version", type=click.IntRange(1), required=True)
@click.option("--build-info", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"The build record (default: LAYOUT/../{BUILD_INFO}).")  # fmt: skip
@click.option("--expires", default=None, help="YYYY-MM-DDTHH:MM:SSZ or +Nd (default: +180d).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def image_pack(layout: Path, name: str, version: int, build_info: Path | None, expires: str | None, out: Path) -> None:
    """Pack the skopeo dir: LAYOUT that image/build exported into an unsigned image bundle."""
    info = read_build_info(build_info or layout.parent / BUILD_INFO)
    manifest = pack_image(layout, out, name=name, version=version, build_info=info, expires=expires, steps=Shown())
    say(f"created {out}: image {manifest.name} v{manifest.version}, manifest sha256 {manifest.sha256}")
    record = image_record(manifest)
    say(f"image manifest digest {record.manifest_digest}, config {record.config_digest}, source {record.source_commit}")


@image.command("list")
@NAME
@passphrase_option
def image_list(name: str | None, passphrase_file: Path | None) -> None:
    """Installed versions of the image, the active one marked."""
    with unlocked(passphrase_file) as vault:
        name, versions = list_images(vault, name)
    for v in versions:
        mark = "*" if v.active else " "
        say(
            f"{mark} {name} v{v.version}  {v.record.manifest_digest}  source {v.record.source_commit}  expires {format_time(v.expires)}"
        )


@image.command("use")
@click.argument("version", type=click.IntRange(1))
@NAME
@passphrase_option
def image_use(version: int, name: str | None, passphrase_file: Path | None) -> None:
    """Make VERSION the image that runs (re-verified first; loaded into container storage where skopeo is)."""
    with unlocked(passphrase_file) as vault:
        switch = use_image(vault, version, name)
    report_switch(switch)


@image.command("rollback")
@NAME
@passphrase_option
def image_rollback(name: str | None, passphrase_file: Path | None) -> None:
    """Make the previous installed version the image that runs (re-verified first)."""
    with unlocked(passphrase_file) as vault:
        switch = rollback_image(vault, name)
    report_switch(switch)


def report_switch(switch: Switch) -> None:
    say(f"image {switch.name}: v{switch.old} -> v{switch.new}" if switch.old else f"image {switch.name}: v{switch.new}")
    if switch.loaded:
        say(f"loaded as localhost/{switch.name}:{switch.new} and localhost/{switch.name}:active")
    else:
        warn(f"note: skopeo is not installed here; the verified layout is kept in {switch.layout}")
        warn(f"note: load it on the host with: {commands_text(switch.layout, switch.name, switch.new)}")


def load_imported(vault, accepted) -> None:
    """After `update import` of an image: load the version it installed into container storage."""
    m = accepted.manifest
    try:
        report_switch(after_import(vault, m.name, m.sha256, m.version))
    except ImageLoadFailed as e:  # the import itself is committed: say so, and how to finish
        warn(f"warning: {e}; the verified version is installed: `appliance image use {m.version}` loads it again")
