"""The one Jinja environment: sandboxed (a file in the user's templates/ folder is data, it
cannot run Python), StrictUndefined, trailing newlines kept, the shipped templates
(hydra_compose/templates/*.j2) behind the user's own templates/ folder. Every problem in a
template is one line naming the template and its line.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..errors import RenderError

MAX_TEMPLATE_BYTES = 1 << 20


def powershell_quote(value: object) -> str:
    """A PowerShell single-quoted literal: nothing inside is expanded."""
    return "'" + str(value).replace("'", "''") + "'"


def _environment(user_templates: Path | None):  # noqa: ANN202 - jinja2 is imported lazily
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Confined(jinja2.FileSystemLoader):
        """templates/ only: no '..', no link out of it, no FIFO or device, bounded size, UTF-8."""

        def get_source(self, environment, template):  # noqa: ANN001, ANN201 - jinja2's signature
            root = Path(self.searchpath[0]).resolve()
            path = (root / template).resolve()
            if root not in path.parents or not os.path.lexists(root / template):
                raise jinja2.TemplateNotFound(template)  # outside templates/, or not there: the shipped one
            if not path.is_file():
                raise RenderError(f"templates/{template} is not a regular file", "replace it with a template file")
            if path.stat().st_size > MAX_TEMPLATE_BYTES:
                raise RenderError(f"templates/{template} is larger than 1 MiB", "this is not a template; remove it")
            return super().get_source(environment, template)

    loaders = []
    if user_templates is not None and user_templates.is_dir():
        loaders.append(Confined(str(user_templates)))
    loaders.append(jinja2.PackageLoader("hydra_compose", "templates"))
    env = ImmutableSandboxedEnvironment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True, autoescape=False)
    env.filters["sh"] = lambda v: shlex.quote(str(v))  # values reach scripts as quoted words only
    env.filters["ps"] = powershell_quote
    return env


def _line_of(exc: BaseException) -> str:
    """The template line a rendering error happened on (Jinja rewrites tracebacks to point there)."""
    tb, found = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2") or name == "<template>":
            found = f"{os.path.basename(name)} line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def render_template(name: str, context: dict, user_templates: Path | None) -> str:
    import jinja2
    from jinja2.exceptions import SecurityError

    fix = "fix or remove your template in templates/ (the shipped one is used when yours is gone)"
    try:
        return _environment(user_templates).get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"template {exc.filename and os.path.basename(exc.filename) or exc.name or name} line "
                          f"{exc.lineno}: {exc.message}", fix) from None
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template {name} includes {exc.name!r}, which is neither in templates/ nor shipped",
                          "includes and extends may only name templates inside templates/ or the package's") from None
    except SecurityError as exc:
        raise RenderError(f"template {_line_of(exc) or name}: {exc} (templates run sandboxed)", fix) from None
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {_line_of(exc) or name}: {exc.message}", fix) from None
    except UnicodeDecodeError:
        raise RenderError(f"a template used by {name} is not UTF-8 text", "save it as UTF-8") from None
    except RecursionError:
        raise RenderError(f"template {name} recurses without end", fix) from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {_line_of(exc) or name}: {str(exc).splitlines()[0][:200]}", fix) from None
    except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError, KeyError) as exc:
        # a template's own expression failed (1/0, a wrong filter argument, ...)
        where = _line_of(exc) or name
        raise RenderError(f"template {where}: {type(exc).__name__}: {str(exc)[:200]}", fix) from None
