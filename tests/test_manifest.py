import re

import pytest

from hubkit.errors import ManifestError
from hubkit.run.manifest import load_manifest, parse_manifest

FULL = """
title: Qwen3.5-4B Persona Vector — capability axis attempt
repo_id: owner/name
date: 2026-05-15
base_model: Qwen/Qwen3.5-4B
base_model_revision: null
license: apache-2.0
tags: [activation-steering, persona-vector]
status: regression
status_note: One sentence for the banner.
summary: Markdown text
directions:
  - name: persona
    file: vectors/persona_dir.pt
    layer: 22
    layer_convention: block
    method: mean(capable) - mean(cautious) at the first generated token
ranking: vectors/persona_ranking.csv
contrast:
  - {file: persona_capable.jsonl, label: capable}
  - {file: persona_cautious.jsonl, label: cautious}
evaluations:
  - name: terminal-bench-2
    n: 89
    baseline: base
    alternative: greater
    arms:
      - {id: base, label: Qwen3.5-4B base (matched infra), passes: 6}
      - {id: abl, label: abliterated (refusal direction), passes: 7, per_task: results/abl.csv}
      - {id: persona, label: persona-abliterated (this), passes: 4, per_task: results/persona.csv, this: true}
caveats: [text, text]
sections: [{title: Why it failed, file: notes/why.md}]
related: [{repo_id: owner/other, relation: supersedes}]
weights: {path: abliterated_model/, publish: false}
regenerate: {direction: persona, layer: 22, targets: [embed_tokens, attn_out, mlp_down]}
include: ["**"]
exclude: ["activations/*.npz"]
"""


def test_full_example_from_the_issue_parses():
    m = parse_manifest(FULL)
    assert m.title.startswith("Qwen3.5-4B Persona")
    assert m.date == "2026-05-15"  # YAML dates come back as ISO strings
    assert m.ranking == ["vectors/persona_ranking.csv"]
    assert m.directions[0].layer == 22 and m.directions[0].layer_convention == "block"
    ev = m.evaluations[0]
    assert ev.n == 89 and ev.baseline == "base" and [a.id for a in ev.arms] == ["base", "abl", "persona"]
    assert ev.arms[2].this and not ev.arms[0].this
    assert m.weights.path == "abliterated_model/" and m.weights.publish is False
    assert m.regenerate.targets == ("embed_tokens", "attn_out", "mlp_down")
    assert m.related[0].relation == "supersedes"
    assert m.to_dict()["evaluations"][0]["arms"][0]["passes"] == 6


def test_unknown_key_names_line_and_suggests():
    text = FULL.replace("directions:", "directons:")
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, where="run/hubkit.yaml")
    line = text.lstrip("\n").splitlines().index("directons:") + 2  # FULL starts with a newline
    assert str(e.value) == (f"run/hubkit.yaml:{line}: unknown key 'directons' (did you mean 'directions'?)")


def test_unknown_nested_key():
    text = FULL.replace("passes: 6}", "pases: 6}")
    with pytest.raises(ManifestError, match=r"hubkit.yaml:\d+: unknown key 'pases' in evaluations\[0\]\.arms\[0\] "
                                             r"\(did you mean 'passes'\?\)"):
        parse_manifest(text)


@pytest.mark.parametrize(
    "change, message",
    [
        (("status: regression", "status: regresion"), "must be one of .* \\(did you mean 'regression'\\?\\)"),
        (("layer: 22\n    layer_convention", "layer: twenty\n    layer_convention"), "must be an integer"),
        (("layer_convention: block", "layer_convention: blocks"), "did you mean 'block'"),
        (("baseline: base", "baseline: bsae"), "baseline 'bsae' is not an arm of terminal-bench-2"),
        (("alternative: greater", "alternative: bigger"), "greater \\| less \\| two-sided"),
        (("{id: base, label: Qwen3.5-4B base (matched infra), passes: 6}", "{id: base}"), "needs passes"),
        (("passes: 6}", "passes: 90}"), "passes 90 > n 89"),
        (("regenerate: {direction: persona", "regenerate: {direction: persna"), "did you mean 'persona'"),
        (("targets: [embed_tokens", "targets: [embed"), "did you mean 'embed_tokens'"),
        (("repo_id: owner/name", "repo_id: justname"), "owner/name"),
        (("title: Qwen3.5-4B Persona Vector — capability axis attempt\n", ""), "title is required"),
        (("sections: [{title: Why it failed, file: notes/why.md}]", "sections: [{title: Why}]"),
         "needs exactly one of file or text"),
        (("tags: [activation-steering, persona-vector]", "tags: {a: 1}"), "tags must be a list"),
        (("tags: [activation-steering, persona-vector]", "max_file_size_mb: .nan"), "max_file_size_mb must be > 0"),
        (("tags: [activation-steering, persona-vector]", "max_file_size_mb: .inf"), "max_file_size_mb must be > 0"),
        (("tags: [activation-steering, persona-vector]", "max_file_size_mb: -1"), "max_file_size_mb must be > 0"),
        (("tags: [activation-steering, persona-vector]", "geometry: {resamples: 1000000000}"),
         "geometry.resamples must be <= 100000"),
    ],
)
def test_bad_values_are_one_line_errors_with_line(change, message):
    old, new = change
    assert old in FULL
    with pytest.raises(ManifestError, match=message) as e:
        parse_manifest(FULL.replace(old, new, 1))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("hubkit.yaml:")


def test_an_impossible_date_names_its_line():
    text = re.sub(r"(?m)^date: .*$", "date: 2026-02-30", FULL, count=1)
    line = text.splitlines().index("date: 2026-02-30") + 1
    with pytest.raises(ManifestError, match=f"hubkit.yaml:{line}: unreadable YAML value .*day is out of range"):
        parse_manifest(text)


def test_unreadable_yaml_names_line():
    with pytest.raises(ManifestError, match=r"^x.yaml:4: unreadable YAML: .*flow sequence started on line 3"):
        parse_manifest("title: a\nstatus: positive\ntags: [a, b\n", where="x.yaml")


def test_arm_with_per_task_may_omit_counts():
    m = parse_manifest("""
title: t
status: positive
evaluations:
  - name: e
    arms:
      - {id: a, per_task: a.csv}
      - {id: b, passes: 1, n: 3}
""")
    assert m.evaluations[0].arms[0].passes is None and m.evaluations[0].arms[1].n == 3


def test_run_dir_problems(tmp_path):
    with pytest.raises(ManifestError, match="no such directory"):
        load_manifest(tmp_path / "missing")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ManifestError, match="is a file"):
        load_manifest(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="directory is empty"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "empty" / "hubkit.yaml").write_text("")
    with pytest.raises(ManifestError, match="empty manifest"):
        load_manifest(tmp_path / "empty")
