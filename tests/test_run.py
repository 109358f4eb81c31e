"""Loading and validating runs: every artifact kind and every kind of bad input."""

import subprocess
import sys

import pytest
import torch

from hubkit.errors import HubkitError, ValidationFailed
from hubkit.run.run import load_run, matches, validate_run

from .helpers import EXAMPLES, copy_example, write_run

BASE = """
title: t
status: null-result
base_model: Qwen/Qwen3.5-4B
"""


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_validate(name, tmp_path):
    report = validate_run(copy_example(name, tmp_path))
    assert report.ok, report.problems
    run = report.run
    assert run.directions and run.rankings and run.evaluations
    assert all(d.d == 64 for d in run.directions)


def test_refusal_example_contents(tmp_path):
    run = load_run(copy_example("refusal-abliteration", tmp_path))
    ev = run.evaluations[0]
    assert [(a.id, a.passes, a.n) for a in ev.arms] == [("base", 3, 89), ("sft", 3, 89), ("abl", 7, 89)]
    assert run.direction("refusal").layer_convention == "hidden_states"
    assert run.direction("refusal").layer_ids == list(range(1, 33))
    [c1, c2] = run.contrasts
    assert (c1.label, c1.count, c2.count) == ("refuse", 50, 50)
    left_out = {f.path: f.reason for f in run.files if not f.included}
    assert left_out == {"activations/refusal_acts.npz": "matches exclude"}
    kinds = {f.path: f.kind for f in run.files}
    assert kinds["scripts/abliterate.py"] == "script" and kinds["notes/full_par.log"] == "notes"
    assert kinds["vectors/refusal_dir.pt"] == "direction" and kinds["TASK.md"] == "report"
    assert kinds["results/base_full_tbench.csv"] == "results"


def run_with(tmp_path, manifest_extra: str, files: dict) -> list[str]:
    root = write_run(tmp_path / "run", BASE + manifest_extra, files)
    return validate_run(root).problems


def test_missing_file(tmp_path):
    problems = run_with(tmp_path, "ranking: vectors/r.csv\n", {})
    assert problems == [f"{tmp_path}/run/hubkit.yaml: ranking[0]: file 'vectors/r.csv' not found"]


def test_path_escaping_the_run_is_refused(tmp_path):
    problems = run_with(tmp_path, "ranking: ../outside.csv\n", {})
    assert "must be relative and inside the run directory" in problems[0]


class Meta:
    """Any class instance makes torch.save write a GLOBAL opcode that weights_only refuses."""


def test_pickled_direction_and_nan(tmp_path):
    root = tmp_path / "run"
    (root / "vectors").mkdir(parents=True)

    torch.save({"v": torch.ones(4), "meta": Meta()}, root / "vectors" / "a.pt")
    torch.save(torch.tensor([1.0, float("nan")]), root / "vectors" / "b.pt")
    write_run(root, BASE + """
directions:
  - {name: a, file: vectors/a.pt, layer: 1}
  - {name: b, file: vectors/b.pt, layer: 1}
""")
    problems = validate_run(root).problems
    assert problems[0].startswith("vectors/a.pt: needs full unpickling")
    assert problems[1] == "vectors/b.pt: layer 1 has non-finite values (NaN or inf)"


def test_mixed_d_across_directions(tmp_path):
    root = tmp_path / "run"
    (root / "v").mkdir(parents=True)
    torch.save(torch.ones(4), root / "v" / "a.pt")
    torch.save(torch.ones(5), root / "v" / "b.pt")
    write_run(root, BASE + "directions:\n  - {name: a, file: v/a.pt, layer: 1}\n  - {name: b, file: v/b.pt, layer: 1}\n")
    assert validate_run(root).problems == [f"{root}/hubkit.yaml: directions have different d (a: d=4, b: d=5)"]


def test_malformed_jsonl_names_line(tmp_path):
    problems = run_with(tmp_path, "contrast:\n  - {file: c.jsonl, label: x}\n",
                        {"c.jsonl": '{"prompt": "a"}\n{"prompt": "b"\n{"prompt": "c"}\n'})
    assert problems == ["c.jsonl:2: not valid JSON (Expecting ',' delimiter at column 15)"]
    problems = run_with(tmp_path, "contrast:\n  - {file: c.jsonl, label: x}\n", {"c.jsonl": '["a"]\n'})
    assert problems == ["c.jsonl:1: expected a JSON object, got list"]


def test_duplicate_prompts_are_noted(tmp_path):
    root = write_run(tmp_path / "run", BASE + "contrast:\n  - {file: c.jsonl, label: x}\n",
                     {"c.jsonl": '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "a"}\n'})
    report = validate_run(root)
    assert report.ok and "c.jsonl:3: duplicate prompt (same as line 1)" in report.notes
    assert report.run.contrasts[0].count == 3


def test_ranking_csv_problems(tmp_path):
    problems = run_with(tmp_path, "ranking: r.csv\n", {"r.csv": "lyr,auc\n1,0.5\n"})
    assert problems == ["r.csv:1: no 'layer' column (columns: lyr, auc)"]
    problems = run_with(tmp_path, "ranking: r.csv\n", {"r.csv": "layer,auc\n1,0.5\n1,0.7\n"})
    assert problems == ["r.csv:3: layer 1 repeated (first on line 2)"]
    problems = run_with(tmp_path, "ranking: r.csv\n", {"r.csv": "layer,auc\nx,0.5\n"})
    assert problems == ["r.csv:2: layer 'x' is not a non-negative integer"]


def test_ranking_must_cover_selected_layer(tmp_path):
    root = tmp_path / "run"
    (root / "vectors").mkdir(parents=True)
    torch.save(torch.ones(4) / 2, root / "vectors" / "p_dir.pt")
    write_run(root, BASE + "directions:\n  - {name: p, file: vectors/p_dir.pt, layer: 22}\n"
              "ranking: vectors/p_ranking.csv\n", {"vectors/p_ranking.csv": "layer,auc\n1,0.5\n2,0.6\n"})
    assert validate_run(root).problems == [
        "vectors/p_ranking.csv: no row for p's selected layer 22 (block convention)"]


EVAL = """
evaluations:
  - name: tb
    baseline: base
    arms:
      - {id: base, per_task: base.csv}
      - {id: abl, per_task: abl.csv, passes: PASSES}
"""


def test_per_task_results(tmp_path):
    files = {"base.csv": "task,passed\na,1\nb,0\nc,true\n", "abl.csv": "task,reward\na,1.0\nb,1\nc,0.5\n"}
    root = write_run(tmp_path / "run", BASE + EVAL.replace("PASSES", "2"), files)
    ev = load_run(root).evaluations[0]
    assert ev.arm("base").passed_tasks == ["a", "c"] and ev.arm("abl").passed_tasks == ["a", "b"]
    assert ev.arm("abl").n == 3
    problems = run_with(tmp_path, EVAL.replace("PASSES", "3"), files)
    assert problems == [f"{tmp_path}/run/hubkit.yaml: evaluations.tb.arms[1] (abl): passes 3 but abl.csv has 2 "
                        "passed tasks"]


@pytest.mark.parametrize("base_csv, message", [
    ("task,passed\na,1\na,0\nc,1\n", "base.csv:3: task 'a' repeated (first on line 2)"),
    ("task,passed\na,1\nb,0.5\nc,1\n", "base.csv:3: passed is '0.5', expected true/false or 1/0"),
    ("task,score\na,1\n", "base.csv:1: needs a 'passed' or 'reward' column (columns: task, score)"),
    ("name,passed\na,1\n", "base.csv:1: no 'task' column (columns: name, passed)"),
    ("task,passed\na,1\nb\n", "base.csv:3: 1 fields, header has 2"),
])
def test_per_task_errors(tmp_path, base_csv, message):
    files = {"base.csv": base_csv, "abl.csv": "task,reward\na,1.0\nb,1\nc,0.5\n"}
    assert run_with(tmp_path, EVAL.replace("PASSES", "2"), files) == [message]


def test_arms_over_different_task_sets(tmp_path):
    files = {"base.csv": "task,passed\na,1\nb,0\nd,1\n", "abl.csv": "task,reward\na,1.0\nb,1\nc,0.5\n"}
    problems = run_with(tmp_path, EVAL.replace("PASSES", "2"), files)
    assert problems == [f"{tmp_path}/run/hubkit.yaml: evaluations.tb: arms cover different task sets: 1 only in "
                        "base.csv (e.g. d); 1 only in abl.csv (e.g. c)"]


def test_reward_threshold(tmp_path):
    files = {"base.csv": "task,reward\na,0.4\nb,0.6\n"}
    ev = "evaluations:\n  - name: e\n    pass_threshold: 0.5\n    arms: [{id: base, per_task: base.csv}]\n"
    root = write_run(tmp_path / "run", BASE + ev, files)
    assert load_run(root).evaluations[0].arms[0].passed_tasks == ["b"]


def test_size_limit_and_default_excludes(tmp_path):
    root = write_run(tmp_path / "run", BASE + "max_file_size_mb: 0.001\n",
                     {"big.bin": b"x" * 2000, ".env": "HF_TOKEN=hf_x\n", "keys/server.pem": "pem",
                      "notes/ok.md": "fine"})
    run = load_run(root)
    out = {f.path: f.reason for f in run.files if not f.included}
    assert out["big.bin"] == "over the 0.001 MB limit (max_file_size_mb)"
    assert out[".env"] == out["keys/server.pem"] == "credential-like file, excluded by default"
    assert "notes/ok.md" not in out


def test_weights_left_out_unless_published(tmp_path):
    files = {"model/config.json": "{}", "model/model.safetensors": b"\0" * 16}
    root = write_run(tmp_path / "run", BASE + "weights: {path: model/}\n", files)
    run = load_run(root)
    assert {f.path for f in run.files if not f.included} == {"model/config.json", "model/model.safetensors"}
    assert all(f.included for f in load_run(root, with_weights=True).files)
    assert run_with(tmp_path, "weights: {path: nope/}\n", {}) == [
        f"{tmp_path}/run/hubkit.yaml: weights.path: folder 'nope/' not found"]


def test_load_run_raises_all_problems(tmp_path):
    root = write_run(tmp_path / "run", BASE + "ranking: [a.csv, b.csv]\n", {})
    with pytest.raises(ValidationFailed) as e:
        load_run(root)
    assert len(e.value.problems) == 2
    root = write_run(tmp_path / "run2", BASE + "ranking: [a.csv]\n", {})
    with pytest.raises(HubkitError, match="ranking\\[0\\]: file 'a.csv' not found"):
        load_run(root)


def test_matches():
    assert matches("activations/x.npz", ["activations/*.npz"])
    assert matches("a/b/.env", [".env"]) and matches("a/b/c.pem", ["**/*.pem"])
    assert matches("model/shard.safetensors", ["model/"])
    assert not matches("notes/a.md", ["activations/*.npz"])


def test_validate_without_tensors_does_not_import_torch(tmp_path):
    root = write_run(tmp_path / "run", BASE + "contrast:\n  - {file: c.jsonl, label: x}\n",
                     {"c.jsonl": '{"prompt": "a"}\n'})
    code = ("import sys; from hubkit.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'scipy', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)


def test_ranking_metric_out_of_range(tmp_path):
    problems = run_with(tmp_path, "ranking: r.csv\n", {"r.csv": "layer,auc,cos_v2\n1,0.5,0.1\n2,1.01,0.2\n"})
    assert problems == ["r.csv:3: auc = 1.01 is outside [0, 1]"]
    problems = run_with(tmp_path, "ranking: r.csv\n", {"r.csv": "layer,auc,cos_v2\n1,0.5,-1.2\n"})
    assert problems == ["r.csv:2: cos_v2 = -1.2 is outside [-1, 1]"]
