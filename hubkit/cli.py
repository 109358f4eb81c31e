"""The ``hubkit`` command: click commands that parse options and call one library function each."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import click

from hubkit import __version__
from hubkit.errors import HubkitError, ValidationFailed
from hubkit.formatting import human_size, layer_span


class _Group(click.Group):
    """Turns a :class:`HubkitError` (or an OS error: disk full, permission) into one line on stderr and exit 1
    (the traceback with --debug, which may come before or after the subcommand)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args[1:]:
            args = ["--debug", *[a for a in args if a != "--debug"]]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        previous = _terminate_as_interrupt()
        try:
            return super().invoke(ctx)
        except ValidationFailed as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            for p in e.problems:
                click.echo(f"error: {_masked(p)}", err=True)
            sys.exit(e.exit_code)
        except HubkitError as e:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {_masked(str(e))}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:  # ENOSPC, EACCES, ...: whatever was being written was removed on the way out
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e} (nothing was left half-written)", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _masked(message: str) -> str:
    """An error quotes the value it refuses (a CSV cell, a status): a token there is masked before it reaches
    a terminal or a CI log."""
    from hubkit.publish.secrets import mask_secrets

    return mask_secrets(message)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> Any:
    """SIGTERM (``kill``, ``timeout``, a job scheduler) winds down as Ctrl-C does: every stream stops and
    nothing half-written is left (the default handler killed the process where it stood). Returns the handler
    it replaced (None off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def _bars(no_progress: bool) -> bool:
    """Progress bars only on a terminal: a log file or a CI job gets no carriage-return noise."""
    return not no_progress and sys.stderr.isatty()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hubkit")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Publish steering and abliteration runs to the Hugging Face Hub, honestly, and use them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing hubkit.yaml.")
def init(run_dir: Path, force: bool) -> None:
    """Draft RUN_DIR/hubkit.yaml by looking at the run's files."""
    from hubkit.run.init import write_draft

    path, todo = write_draft(run_dir, force=force)
    click.echo(f"wrote {path}")
    if todo:
        click.echo(f"fill in {len(todo)} field(s) marked TODO: {', '.join(todo)}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print problems only.")
@click.option("--files", "list_files", is_flag=True, help="List every file with its size, kind and fate.")
def validate(run_dir: Path, quiet: bool, list_files: bool) -> None:
    """Check a run: manifest, directions, rankings, contrast sets, results, sizes. Exit 1 on problems."""
    from hubkit.run.run import validate_run

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
                   f"{len(inc)} files, {human_size(sum(f.size for f in inc))} to publish")
        for d in run.directions:
            click.echo(f"  direction {d.name}: layers {layer_span(d.layer_ids)} "
                       f"({len(d.layers)}, {d.layer_convention} convention), d={d.d}, "
                       f"selected layer {d.selected_layer}, {'unit-norm' if d.unit_norm else 'not unit-norm'}")
        for name, vs in run.vector_sets.items():
            click.echo(f"  vector set {name}: {len(vs.members)} members × layers {vs.layers} "
                       f"({vs.layer_convention} convention), d={vs.d}")
        for c in run.compares:
            axis = f", shift axis: {c.axis}" if c.axis else ""
            click.echo(f"  compare {c.before} → {c.after}: {len(c.members)} members{axis}")
        for a in run.adapters:
            click.echo(f"  adapter {a.name}: LoRA r={a.r} on {a.base_model} ({a.path})")
        if run.reported_tests:
            click.echo(f"  {len(run.reported_tests)} reported test(s), adjusted within "
                       f"{len({t.test.family for t in run.reported_tests})} famil(ies)")
        if list_files:
            for f in run.files:
                fate = "publish" if f.included else f"left out: {f.reason}"
                click.echo(f"  {human_size(f.size):>9}  {f.kind:<9} {f.path}  ({fate})")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Stage the repo tree here; no network, no token.")
@click.option("--template", "template_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use your own copy of the card templates.")
@click.option("--repo-id", help="OWNER/NAME on the Hub (default: repo_id in hubkit.yaml).")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--revision", help="Branch to commit to (created from main if missing). Default: main.")
@click.option("--version", "version", help="Tag to create (default: the highest vN + 1).")
@click.option("--message", "-m", help="Commit message; also heads this version's history line.")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, version, card); write nothing.")
@click.option("--with-weights", is_flag=True, help="Also upload the run's weights folder.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--dataset-repo", help="Also publish contrast sets and per-task results as this Hub dataset.")
@click.option("--record-regeneration", "regen_base", type=click.Path(path_type=Path, file_okay=False),
              help="Base checkpoint folder: record its shard sha256s in the regeneration recipe.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def publish(run_dir: Path, out: Path | None, template_dir: Path | None, repo_id: str | None, private: bool,
            revision: str | None, version: str | None, message: str | None, dry_run: bool, with_weights: bool,
            create_pr: bool, dataset_repo: str | None, regen_base: Path | None, no_progress: bool) -> None:
    """Publish RUN_DIR as a versioned Hub repo: one commit and a vN tag (or stage it with --out).

    The endpoint and token are huggingface_hub's own settings (HF_ENDPOINT, HF_TOKEN, `hf auth login`).
    """
    if out is not None:
        from hubkit.publish.commit import stage_run

        hub_only = {"--repo-id": repo_id, "--private": private, "--revision": revision, "--version": version,
                    "--message": message, "--dry-run": dry_run, "--create-pr": create_pr,
                    "--dataset-repo": dataset_repo, "--record-regeneration": regen_base}
        clash = [name for name, value in hub_only.items() if value]
        if clash:
            raise click.UsageError(f"--out stages the tree locally; {', '.join(clash)} only apply to a Hub publish")
        staged = stage_run(run_dir, out, template_dir=template_dir, with_weights=with_weights)
        click.echo(f"staged {len(staged.files)} files ({human_size(staged.total_size)}) in {out}")
        return
    if not repo_id:
        from hubkit.run.manifest import load_manifest

        if not load_manifest(run_dir).repo_id:
            raise click.UsageError("give --repo-id OWNER/NAME (or set repo_id in hubkit.yaml), or --out DIR")
    from hubkit.publish.commit import publish as do_publish

    result = do_publish(run_dir, repo_id=repo_id, private=private, revision=revision, version=version,
                        message=message, dry_run=dry_run, with_weights=with_weights, create_pr=create_pr,
                        dataset_repo=dataset_repo, template_dir=template_dir, progress=_bars(no_progress),
                        record_regeneration=regen_base)
    plan = result.plan
    if dry_run:
        click.echo(plan.render())
        return
    for n in result.notes:
        click.echo(f"note: {n}")
    if result.nothing_changed:
        click.echo(f"nothing changed; {result.version} is current ({result.url})")
    elif result.pr_url:
        click.echo(f"opened {result.pr_url} with {result.version}: {plan.summary}")
    else:
        click.echo(f"published {result.version} to {result.url} (commit {str(result.commit)[:12]}): "
                   f"{len(plan.adds)} added, {len(plan.changes)} changed, {len(plan.deletes)} removed, "
                   f"{human_size(result.uploaded_bytes)} sent")
    if result.dataset_repo:
        click.echo(f"companion dataset: {result.dataset_repo}"
                   + (f" (commit {result.dataset_commit[:12]})" if result.dataset_commit else ""))



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
    """Write a llama.cpp control vector (--control-vector-scaled FILE.gguf:S) from REPO_OR_DIR."""
    from hubkit.use.gguf_export import export_gguf, gguf_summary

    click.echo(gguf_summary(export_gguf(repo_or_dir, out, layers=layers, scale=scale, name=name,
                                        revision=revision)))


@export.command("lora")
@click.argument("source")
@click.option("--base-model", help="Base checkpoint: a Hub id (must be the recorded one) or a local folder.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The adapter folder to write (adapter_config.json + adapter_model.safetensors).")
@click.option("--rank", type=int, default=3, show_default=True,
              help="Rank of the truncated SVD for norm: preserve (the other recipes are exact at rank 1).")
@click.option("--revision", help="Tag, branch or commit of a Hub repo.")
def export_lora_command(source: str, base_model: str | None, out: Path, rank: int, revision: str | None) -> None:
    """Write a PEFT LoRA adapter that applies SOURCE's recipe to the base model (serve it beside the base)."""
    from hubkit.weights.lora import export_lora

    click.echo(export_lora(source, base_model=base_model, out=out, rank=rank, revision=revision).summary())


@main.command("pull")
@click.argument("repo")
@click.option("--revision", help="Tag (e.g. v2), branch or commit; default: main.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory to download into.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def pull_command(repo: str, revision: str | None, out: Path, no_progress: bool) -> None:
    """Download a published run to inspect or re-publish it."""
    from hubkit.use.loading import pull

    res = pull(repo, revision=revision, out=out, progress=_bars(no_progress))
    click.echo(f"pulled {repo}@{res.commit[:12]} ({len(res.files)} files) into {res.path}")

@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the card here (and the plots it embeds under assets/ beside it); default: stdout.")
@click.option("--template", "template_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use your own copy of the card templates (any subset of them).")
def card(run_dir: Path, output: Path | None, template_dir: Path | None) -> None:
    """Render the model card a publish of RUN_DIR would commit."""
    from hubkit.publish.repo_tree import card_for_run, write_card

    rendered = card_for_run(run_dir, template_dir=template_dir)
    if output is None:
        click.echo(rendered.text, nl=False)
        return
    write_card(rendered, output)
    extra = f" and {len(rendered.assets)} asset(s)" if rendered.assets else ""
    click.echo(f"wrote {output}{extra}")


#: tasks per arm that --arm counts accept (the exact tests are exact up to here in seconds)
MAX_ARM_N = 1_000_000


class _ArmCounts(click.ParamType):
    """``ID=PASSES/N`` as used by ``hubkit stats --arm``."""

    name = "ID=PASSES/N"

    def convert(self, value, param, ctx):
        import re

        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not m:
            self.fail(f"'{value}' is not ID=PASSES/N (e.g. abl=7/89)", param, ctx)
        arm, passes, n = m.group(1), int(m.group(2)), int(m.group(3))
        if n < 1 or passes > n or n > MAX_ARM_N:
            self.fail(f"'{value}': need 0 <= passes <= N and 1 <= N <= {MAX_ARM_N:,}", param, ctx)
        return arm, passes, n


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--arm", "arms", multiple=True, type=_ArmCounts(), help="Quick counts, e.g. --arm abl=7/89 (repeat).")
@click.option("--baseline", help="The --arm every other arm is tested against.")
@click.option("--alternative", type=click.Choice(["greater", "less", "two-sided"]),
              help="Fisher sidedness; greater = H1: arm > baseline (default for --arm; a run uses its own).")
def stats(run_dir: Path | None, arms: tuple, baseline: str | None, alternative: str | None) -> None:
    """Print results tables with every test: for RUN_DIR's evaluations, or for --arm counts."""
    from hubkit.run.run import report_run
    from hubkit.run.stats import report_counts

    if run_dir is not None:
        if arms or baseline:
            raise click.UsageError("give RUN_DIR or --arm counts, not both")
        click.echo(report_run(run_dir, alternative), nl=False)
        return
    if not arms:
        raise click.UsageError("give RUN_DIR or at least one --arm ID=PASSES/N")
    ids = [a[0] for a in arms]
    if len(set(ids)) != len(ids):
        raise click.BadParameter("each --arm needs its own ID", param_hint="--arm")
    if baseline is not None and baseline not in ids:
        raise click.BadParameter(f"'{baseline}' is not one of the arms ({', '.join(ids)})", param_hint="--baseline")
    click.echo(report_counts(list(arms), baseline, alternative or "greater"), nl=False)


@main.command("regenerate")
@click.argument("repo_or_dir")
@click.option("--revision", help="Tag (e.g. v2), branch or commit of a Hub repo; resolved once to a commit.")
@click.option("--base-model", help="Base checkpoint: a Hub id (must be the recorded one) or a local folder.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Model folder to write (default: ./<base>-<direction>-abliterated).")
@click.option("--push-to", help="Publish the folder as this model repo (OWNER/NAME).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Exit 1 when shards differ from the recorded sha256s.")
@click.option("--plan", "plan_only", is_flag=True, help="Print which tensor gets which operation; write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def regenerate_command(repo_or_dir: str, revision: str | None, base_model: str | None, out: Path | None,
                       push_to: str | None, verify: bool, plan_only: bool, no_progress: bool) -> None:
    """Rebuild the abliterated weights of REPO_OR_DIR from its published direction and the base model."""
    from hubkit.publish.push import regenerate_and_push

    res = regenerate_and_push(repo_or_dir, revision=revision, base_model=base_model, out=out, verify=verify,
                     plan_only=plan_only, push_to=push_to, progress=_bars(no_progress))
    click.echo(res.plan.render() if plan_only else res.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
