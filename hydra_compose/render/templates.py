"""The one Jinja environment: StrictUndefined, trailing newlines kept, the shipped
templates (hydra_compose/templates/*.j2) behind the user's own templates/ folder."""

from __future__ import annotations

import shlex
from pathlib import Path


def powershell_quote(value: object) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded."""
    return "'" + str(value).replace("'", "''") + "'"


def _environment(user_templates: Path | None):  # noqa: ANN202 - jinja2 is imported lazily
    import jinja2

    loaders = []
    if user_templates is not None and user_templates.is_dir():
        loaders.append(jinja2.FileSystemLoader(str(user_templates)))
    loaders.append(jinja2.PackageLoader("hydra_compose", "templates"))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, trim_blocks=False)
    env.filters["sh"] = lambda v: shlex.quote(str(v))  # values reach scripts as quoted words only
    env.filters["ps"] = powershell_quote
    return env


def render_template(name: str, context: dict, user_templates: Path | None) -> str:
    return _environment(user_templates).get_template(name).render(**context)
