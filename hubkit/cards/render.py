"""Rendering the cards: the Jinja environment (``StrictUndefined``, hubkit's filters), the template search path
(a user's ``--template DIR`` first, then the built-in ``templates/``) and one-line template errors."""

from __future__ import annotations

import functools
import re
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubkit.errors import HubkitError
from hubkit.formatting import human_size, layer_span
from hubkit.run.stats import format_ci, format_p, format_pct

FENCE = re.compile(r"^\s*(```|~~~)")  # a fenced code block opens or closes

if TYPE_CHECKING:
    import jinja2


# --------------------------------------------------------------------------- templates


def template_root() -> Path:
    """The built-in templates: ``hubkit/templates`` in a wheel, top-level ``templates/`` in a checkout."""
    here = Path(__file__).parent
    for cand in (here.parent / "templates", here.parent.parent / "templates"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("hubkit templates not found")



# --------------------------------------------------------------------------- rendering


def _layer(layer: int | None, convention: str) -> str:
    return "—" if layer is None else f"{layer} ({convention})"


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _cell(v: Any) -> str:
    """Safe inside a markdown table cell: no pipe or newline breaks the row."""
    return " ".join(str(v).split()).replace("|", "\\|")


def _quote(text: str) -> str:
    return "\n".join(("> " + ln).rstrip() for ln in text.splitlines())


def _sentence(text: str) -> str:
    """Upper-case the first letter only (jinja's capitalize lower-cases the rest: "Exact mcnemar")."""
    return text[:1].upper() + text[1:]


def _bib(text: str) -> str:
    return "{" + re.sub(r"([&%#_$])", r"\\\1", str(text)) + "}"


FILTERS = {"pct": format_pct, "p": format_p, "ci": format_ci, "size": human_size, "layer": _layer, "span": layer_span,
           "num": _num, "cell": _cell, "quote": _quote, "bib": _bib, "sentence": _sentence}


def _environment(template_dir: str | Path | None) -> jinja2.Environment:
    if template_dir is not None and not Path(template_dir).is_dir():
        raise HubkitError(f"{template_dir}: template directory not found")
    return _cached_environment(str(Path(template_dir).resolve()) if template_dir is not None else None)


@functools.lru_cache(maxsize=8)
def _cached_environment(template_dir: str | None) -> jinja2.Environment:
    """One environment per template folder: jinja2 then compiles each template once per process (and
    still reloads a template whose file changed)."""
    import jinja2

    loaders = []
    if template_dir is not None:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.FileSystemLoader(str(template_root())))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(FILTERS)
    return env


def render(name: str, data: Any, template_dir: str | Path | None = None) -> str:
    """Render template ``name`` with ``card=data``; a template problem becomes a HubkitError naming
    ``template file:line``. Templates receive data and format it: they never compute."""
    import jinja2

    env = _environment(template_dir)
    try:
        text = env.get_template(name).render(card=data)
    except jinja2.TemplateSyntaxError as e:
        where = e.filename or e.name or name
        raise HubkitError(f"{where}:{e.lineno}: template syntax error: {e.message}") from e
    except jinja2.TemplateNotFound as e:
        raise HubkitError(f"template '{e.name}' not found (looked in {_searched(template_dir)})") from e
    except jinja2.TemplateError as e:
        raise HubkitError(f"{_template_frame(e, name)}: {e.message or e}") from e
    except Exception as e:  # a filter or attribute raising inside a template
        loc = _template_frame(e, name)
        if loc == name:
            raise
        raise HubkitError(f"{loc}: {type(e).__name__}: {e}") from e
    return _tidy(text)


def _searched(template_dir: str | Path | None) -> str:
    return ", ".join(str(p) for p in ([Path(template_dir)] if template_dir else []) + [template_root()])


def _template_frame(e: BaseException, name: str) -> str:
    """``file:line`` of the innermost template frame (jinja2 rewrites tracebacks to point at templates)."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith(".j2")]
    if not frames:
        return name
    return f"{frames[-1].filename}:{frames[-1].lineno}"


def _tidy(text: str) -> str:
    """At most one blank line between blocks (outside code fences) and one newline at the end, so
    optional sections leave no gaps whatever the partials' whitespace."""
    out: list[str] = []
    fenced = False
    for ln in text.splitlines():
        if FENCE.match(ln):
            fenced = not fenced
        if not fenced and not ln.strip() and (not out or not out[-1].strip()):
            continue
        out.append(ln)
    return "\n".join(out).strip("\n") + "\n"
