"""``dldc config``: show the resolved configuration, list the profiles, write a full params file.

Registered on :data:`dldc.cli.main`; kept out of :mod:`dldc.cli` so that module stays under the size limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml


@click.group()
def config() -> None:
    """Inspect the resolved configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_obj
def config_show(obj: Any, as_json: bool) -> None:
    """Print the configuration after profile, params file and overrides."""
    data = obj.config().model_dump(mode="json")
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@config.command("profiles")
def config_profiles() -> None:
    """List the profiles (dldc/profiles/*.yaml) a params file can name as ``profile:``."""
    from dldc.config import list_profiles

    for name, about in list_profiles().items():
        click.echo(f"{name}\t{about}")


@config.command("init")
@click.option("--profile", "profile", default="demo", show_default=True, help="Profile to write out in full.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Params file to write (e.g. params.yaml).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def config_init(profile: str, out: str, force: bool) -> None:
    """Write a params file with every setting of a profile (the profile's values, then the defaults).

    A params file's values win over its profile's, so switching ``profile:`` in a demo params.yaml
    keeps the demo's values; start from this file instead.
    """
    from dldc.config import ConfigError, profile_params

    path = Path(out)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; pass --force to overwrite it")
    try:
        data = {"profile": profile, **{k: v for k, v in profile_params(profile).items() if k != "profile"}}
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    header = f"# dldc parameters: every setting of the {profile!r} profile (`dldc config init --profile {profile}`).\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    click.echo(f"wrote {path} ({profile} profile)")
