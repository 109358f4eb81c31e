"""The ``hubkit`` command: click commands that parse options and call one library function each."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import HubkitError, ValidationFailed


class _Group(click.Group):
    """Turns a :class:`HubkitError` into one line on stderr and exit 1 (the traceback with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValidationFailed as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            for p in e.problems:
                click.echo(f"error: {p}", err=True)
            sys.exit(e.exit_code)
        except HubkitError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubkit")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Publish steering and abliteration runs to the Hugging Face Hub, honestly, and use them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing hubkit.yaml.")
def init(run_dir: Path, force: bool) -> None:
    """Draft RUN_DIR/hubkit.yaml by looking at the run's files."""
    from .discover import write_draft

    path, todo = write_draft(run_dir, force=force)
    click.echo(f"wrote {path}")
    if todo:
        click.echo(f"fill in {len(todo)} field(s) marked TODO: {', '.join(todo)}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print problems only.")
def validate(run_dir: Path, quiet: bool) -> None:
    """Check a run: manifest, directions, rankings, contrast sets, results, sizes. Exit 1 on problems."""
    from .run import validate_run

    report = validate_run(run_dir)
    for p in report.problems:
        click.echo(f"error: {p}", err=True)
    if not quiet:
        for n in report.notes:
            click.echo(f"note: {n}")
    run = report.run
    if report.problems:
        sys.exit(1)
    if run is not None and not quiet:
        inc = run.included_files
        click.echo(f"ok: {run.manifest.title} — {len(run.directions)} direction(s), {len(run.rankings)} "
                   f"ranking(s), {len(run.contrasts)} contrast set(s), {len(run.evaluations)} evaluation(s); "
                   f"{len(inc)} files, {_human(sum(f.size for f in inc))} to publish")
        for d in run.directions:
            click.echo(f"  direction {d.name}: layers {d.layer_ids[0]}–{d.layer_ids[-1]} "
                       f"({len(d.layers)}, {d.layer_convention} convention), d={d.d}, "
                       f"selected layer {d.selected_layer}, {'unit-norm' if d.unit_norm else 'not unit-norm'}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Stage the repo tree here; no network, no token.")
@click.option("--template", "template_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use your own copy of the card templates.")
def publish(run_dir: Path, out: Path | None, template_dir: Path | None) -> None:
    """Publish RUN_DIR as a versioned Hub repo (or stage it with --out)."""
    from .publish import stage_run

    if out is None:
        raise click.UsageError("give --out DIR to stage the repo")
    result = stage_run(run_dir, out, template_dir=template_dir)
    click.echo(f"staged {len(result.files)} files ({_human(result.total_size)}) in {out}")



@main.group()
def export() -> None:
    """Export a published direction for other runtimes."""


@export.command("gguf")
@click.argument("repo_or_dir")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The .gguf file to write.")
@click.option("--layers", help="Layers in the run's convention: 22, 10-20 or 4,8,12 (default: the selected layer).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Multiply the vectors by this.")
@click.option("--name", help="Which direction, when the run has several.")
@click.option("--revision", help="Tag, branch or commit of a Hub repo.")
def export_gguf_command(repo_or_dir: str, out: Path, layers: str | None, scale: float, name: str | None,
                        revision: str | None) -> None:
    """Write a llama.cpp control vector (--control-vector-scaled FILE.gguf S) from REPO_OR_DIR."""
    from .gguf_export import export_gguf, gguf_summary

    click.echo(gguf_summary(export_gguf(repo_or_dir, out, layers=layers, scale=scale, name=name,
                                        revision=revision)))


@main.command("pull")
@click.argument("repo")
@click.option("--revision", help="Tag (e.g. v2), branch or commit; default: main.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory to download into.")
def pull_command(repo: str, revision: str | None, out: Path) -> None:
    """Download a published run to inspect or re-publish it."""
    from .loading import pull

    res = pull(repo, revision=revision, out=out)
    click.echo(f"pulled {repo}@{res.commit[:12]} ({len(res.files)} files) into {res.path}")

if __name__ == "__main__":  # pragma: no cover
    main()
