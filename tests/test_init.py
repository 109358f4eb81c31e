"""`hubkit init` on each example run with its manifest removed: the draft validates once filled."""

import re

import pytest

from hubkit.errors import ManifestError
from hubkit.run.init import draft_manifest, write_draft
from hubkit.run.manifest import parse_manifest
from hubkit.run.run import validate_run

from .helpers import EXAMPLES, copy_example

FILL = {"status": "null-result", "base_model": "Qwen/Qwen3.5-4B", "layer": "22", "name": "terminal-bench-2",
        "baseline": "base"}


def fill(text: str) -> str:
    """Replace every TODO value the way an author would."""
    def repl(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2)}: {FILL[m.group(2)]}"
    return re.sub(r"^(\s*-?\s*)(\w+): TODO\b", repl, text, flags=re.M)


@pytest.mark.parametrize("name", EXAMPLES)
def test_init_drafts_a_manifest_that_validates_once_filled(name, tmp_path):
    run = copy_example(name, tmp_path)
    original = (run / "hubkit.yaml").read_text()
    (run / "hubkit.yaml").unlink()
    path, todo = write_draft(run)
    draft = path.read_text()
    assert "status" in todo and draft.count("TODO") >= len(todo)
    with pytest.raises(ManifestError, match="TODO"):  # unfilled: refused
        validate_run(run)
    (run / "hubkit.yaml").write_text(fill(draft))
    report = validate_run(run)
    assert report.ok, report.problems
    found = report.run
    author = parse_manifest(original)
    assert [d.file for d in found.manifest.directions] == [d.file for d in author.directions]
    assert sorted(c.file for c in found.contrasts) == sorted(c.file for c in author.contrast)
    assert found.manifest.ranking == author.ranking
    per_task = sorted(a.per_task for e in author.evaluations for a in e.arms if a.per_task)
    assert sorted(a.per_task_file for e in found.evaluations for a in e.arms) == per_task


def test_init_manifest_error_before_fill(tmp_path):
    run = copy_example("persona-vector", tmp_path)
    (run / "hubkit.yaml").unlink()
    write_draft(run)
    problems = []
    try:
        validate_run(run)
    except ManifestError as e:
        problems.append(str(e))
    assert problems and re.search(r"hubkit.yaml:\d+: status is 'TODO'", problems[0])


def test_init_finds_everything_in_the_refusal_run(tmp_path):
    run = copy_example("refusal-abliteration", tmp_path)
    (run / "hubkit.yaml").unlink()
    text, todo = draft_manifest(run)
    assert 'file: "vectors/refusal_dir.pt"' in text and "layer_convention: hidden_states" in text
    assert '{file: "contrast_comply.jsonl", label: "comply"}' in text
    assert '{file: "contrast_refuse.jsonl", label: "refuse"}' in text
    assert 'per_task: "results/fullpar_20260515_055509/master_summary.csv"' in text
    assert 'baseline: "base"' in text and 'summary_file: "RESULTS.md"' in text
    assert todo == ["status", "base_model", "directions[0].layer", "evaluations[0].name"]


def test_init_weights_folder_and_base_model(tmp_path):
    run = tmp_path / "run"
    (run / "abliterated_model").mkdir(parents=True)
    (run / "abliterated_model" / "config.json").write_text('{"_name_or_path": "Qwen/Qwen3.5-4B"}')
    (run / "abliterated_model" / "model.safetensors").write_bytes(b"\0" * 8)
    (run / "vectors").mkdir()
    import torch

    torch.save(torch.ones(4), run / "vectors" / "x_dir.pt")
    text, todo = draft_manifest(run)
    assert 'weights: {path: "abliterated_model/", publish: false}' in text
    assert 'regenerate: {direction: "x"' in text and 'base_model: "Qwen/Qwen3.5-4B"' in text
    assert "base_model" not in todo


def test_init_never_overwrites_without_force(tmp_path):
    run = copy_example("persona-vector", tmp_path)
    before = (run / "hubkit.yaml").read_text()
    with pytest.raises(ManifestError, match="already exists \\(use --force to overwrite\\)"):
        write_draft(run)
    assert (run / "hubkit.yaml").read_text() == before
    write_draft(run, force=True)
    assert (run / "hubkit.yaml").read_text() != before


def test_init_recognises_a_direction_with_one_vector_per_layer_and_a_harmless_mean(tmp_path):
    import torch

    from hubkit.run.init import draft_manifest

    run = tmp_path / "run"
    (run / "vectors").mkdir(parents=True)
    torch.save(torch.randn(4, 8), run / "vectors" / "refusal_dir.pt")
    torch.save(torch.randn(4, 8), run / "vectors" / "harmless_mean.pt")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    (run / "model" / "model.safetensors").write_bytes(b"")
    text, _ = draft_manifest(run)
    assert '- name: "refusal"' in text and "4 layers 0–3, d=8" in text
    assert 'project_out: "harmless_mean"' in text and 'direction: "refusal"' in text


def test_init_drafts_vector_sets_adapters_and_data_of_a_geometry_run(tmp_path):
    from hubkit.run.init import draft_manifest

    run = copy_example("persona-geometry", tmp_path)
    (run / "hubkit.yaml").unlink()
    text, todo = draft_manifest(run)
    assert 'file: "vectors/method_a/em.pt"' in text and "12 members × 5 rows, d=64" in text
    assert 'path: "adapters/em_lora"' in text and 'file: "data/bad_legal_advice_6k.jsonl"' in text
    assert "vector_sets[0].layers" in todo and "contrast:" not in text


def test_init_does_not_take_a_sweeps_table_for_a_ranking(tmp_path):
    from hubkit.run.init import draft_manifest

    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "results" / "sweeps.csv").write_text("layer,alpha,passes,n\n20,2,5,89\n20,4,6,89\n22,4,7,89\n")
    (run / "results" / "ranking.csv").write_text("layer,auc,margin\n20,0.9,1.2\n22,0.95,1.5\n")
    text, _ = draft_manifest(run)
    assert '"results/ranking.csv"' in text and "sweeps.csv" not in text.split("ranking:")[1].split("\n")[1]


def test_init_reads_nothing_outside_the_run_and_writes_through_no_link(tmp_path):
    """A direction linked from outside is not drafted; a link planted under the temporary name, or a manifest
    that is a link to an outside file, is replaced, never written through."""
    import os

    run = copy_example("persona-vector", tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "other_dir.pt").write_bytes((run / "vectors" / "persona_dir.pt").read_bytes())
    (run / "vectors" / "linked_dir.pt").symlink_to(outside / "other_dir.pt")
    (run / "vectors" / "copied_dir.pt").write_bytes((run / "vectors" / "persona_dir.pt").read_bytes())
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    (run / "hubkit.yaml").unlink()
    (run / f".hubkit.yaml.hubkit-tmp-{os.getpid()}").symlink_to(victim)
    path, _ = write_draft(run)
    draft = path.read_text()
    assert "copied_dir.pt" in draft and "linked_dir.pt" not in draft  # the same bytes, inside: drafted
    assert victim.read_text() == "keep me" and not path.is_symlink()
    path.unlink()
    path.symlink_to(victim)
    write_draft(run, force=True)
    assert victim.read_text() == "keep me" and not path.is_symlink()


def test_a_manifest_linking_out_of_the_run_is_refused(tmp_path):
    run = copy_example("persona-vector", tmp_path)
    outside = tmp_path / "m.yaml"
    outside.write_text((run / "hubkit.yaml").read_text())
    (run / "hubkit.yaml").unlink()
    (run / "hubkit.yaml").symlink_to(outside)
    with pytest.raises(ManifestError, match="a symlink to outside the run"):
        validate_run(run)
