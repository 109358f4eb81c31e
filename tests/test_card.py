"""The model card: golden cards of the example runs, front matter round-trip, optional sections, template
overrides and errors, the ranking plot."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from hubkit.cards import model_card as card
from hubkit.cards import render
from hubkit.cli import main
from hubkit.errors import HubkitError
from hubkit.formats.hashing import HashCache
from hubkit.formats.hubjson import CARD, HUBKIT_JSON, HistoryEntry
from hubkit.publish.repo_tree import build_package
from hubkit.run.run import load_run
from tests.helpers import copy_example

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["persona-vector", "capability-vector-v1", "refusal-abliteration", "persona-geometry"]
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    from tests.golden_plugin import update_requested

    return update_requested(request.config)


@pytest.fixture
def cache(tmp_path: Path) -> HashCache:
    return HashCache(tmp_path / "sha-cache.json")


def _render(run_dir: Path, cache: HashCache, **kw) -> tuple[str, card.CardData]:
    """The README a publish would commit, plus the CardData behind it."""
    run = load_run(run_dir)
    pkg = build_package(run, hash_cache=cache, **kw)
    body = [f for f in pkg.files if f.path not in (CARD, HUBKIT_JSON)]
    text = pkg.file(CARD).data.decode("utf-8")
    return text, card.build_card_data(run, body, pkg.meta)


def _run(tmp_path: Path, manifest: str, files: dict[str, str] | None = None) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "hubkit.yaml").write_text(textwrap.dedent(manifest), encoding="utf-8")
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(textwrap.dedent(text), encoding="utf-8")
    return d


def _headings(text: str) -> list[str]:
    body = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"^(#{1,6} .*)$", body, flags=re.M)


def _assert_no_empty_sections(text: str) -> None:
    """Every heading is followed by something other than another heading of the same or higher level."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        m = re.match(r"^(#{1,6}) ", ln)
        if m:
            assert i + 1 < len(lines), f"'{ln}' ends the card"
            nxt = re.match(r"^(#{1,6}) ", lines[i + 1])
            assert not nxt or len(nxt.group(1)) > len(m.group(1)), f"empty section '{ln}'"


# --------------------------------------------------------------------------- the example runs


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_card_matches_golden(name: str, cache: HashCache, update_goldens: bool):
    text, _ = _render(ROOT / "artifacts" / name, cache)
    golden = GOLDEN / f"{name}.md"
    if update_goldens:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    assert golden.is_file(), f"no golden for {name}: run pytest --update-goldens (or HUBKIT_UPDATE_GOLDENS=1)"
    expected = golden.read_text(encoding="utf-8")
    assert text == expected, (f"{name}: card differs from {golden.relative_to(ROOT)}; if the change is intended, "
                              "regenerate with --update-goldens and review the diff")


@pytest.mark.parametrize("name", EXAMPLES)
def test_front_matter_round_trips_through_modelcard(name: str, cache: HashCache, tmp_path: Path):
    from huggingface_hub import ModelCard

    text, data = _render(ROOT / "artifacts" / name, cache)
    path = tmp_path / "README.md"
    path.write_text(text, encoding="utf-8")
    loaded = ModelCard.load(path)
    assert loaded.data.to_dict() == data.model_card_data.to_dict()
    m = load_run(ROOT / "artifacts" / name).manifest
    meta = loaded.data.to_dict()
    assert meta["base_model"] == m.base_model and meta["license"] == m.license
    assert meta["tags"][: len(m.tags)] == m.tags and {"hubkit", m.status} <= set(meta["tags"])
    assert meta["library_name"] == "hubkit" and meta["base_model_relation"] == "adapter"
    assert bool(loaded.data.eval_results) == bool(m.evaluations), "each evaluation's own arm is in model-index"
    assert "# " + m.title in loaded.text


def test_model_index_holds_only_this_models_arms(cache: HashCache):
    _, data = _render(ROOT / "artifacts" / "refusal-abliteration", cache)
    results = data.model_card_data.eval_results
    assert len(results) == 1
    r = results[0]
    assert (r.dataset_name, r.metric_type, r.metric_value) == ("terminal-bench-2", "pass_rate", round(7 / 89, 4))
    assert "7/89" in r.metric_name


def test_refusal_card_states_tests_and_overlap(cache: HashCache):
    text, data = _render(ROOT / "artifacts" / "refusal-abliteration", cache)
    assert text.startswith("---\n")
    assert "> **STATUS — positive result.**" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| **abliterated Qwen3.5-4B**"))
    assert "**7/89**" in row and "7.9 %" in row and "3.9–15.4 %" in row and "| 0.165 |" in row
    assert "Fisher exact, one-sided, H1: arm > baseline" in text
    assert "Holm" in text and "Benjamini–Hochberg" in text
    assert ("- **abl only** (5): fix-git, hf-model-inference, log-summary-date-ranges, modernize-scientific-stack, "
            "qemu-startup") in text
    assert "Exact McNemar (binomial on the discordant tasks), two-sided" in text
    # layer numbers carry their convention
    assert "**22 (hidden_states)**" in text and "22 (block)" not in text
    # quick use: safetensors, never a pickle
    assert 'hf_hub_download("AlexWortega/qwen3.5-4b-refusal-abliterated", "vectors/refusal.safetensors")' in text
    assert "load_file(path)" in text and "torch.load" not in text
    assert 'layer_convention="hidden_states"' in text
    assert "--control-vector-scaled refusal.gguf:4" in text and "direction.21" in text
    # rebuild + what was left out
    assert "hubkit regenerate AlexWortega/qwen3.5-4b-refusal-abliterated --out" in text
    assert "**not pushed**" in text
    assert "`activations/refusal_acts.npz`" in text
    assert "![auc, margin, cos_v2 by layer](assets/ranking.png)" in text
    _assert_no_empty_sections(text)
    assert [h for h in _headings(text) if h.startswith("# ")] == ["# Refusal-direction abliteration of Qwen3.5-4B"]


def test_every_data_file_has_its_sha256(cache: HashCache):
    run = load_run(ROOT / "artifacts" / "persona-vector")
    pkg = build_package(run, hash_cache=cache)
    text = pkg.file(CARD).data.decode()
    for f in pkg.files:
        if f.kind in card.DATA_KINDS:
            assert f"| `{f.path}` | `{f.sha256}` |" in text
        if f.path not in (CARD, HUBKIT_JSON):
            assert f"| `{f.path}` |" in text and f"`{f.sha256[:12]}`" in text


def test_capability_card_has_four_evaluations_without_overlap(cache: HashCache):
    text, data = _render(ROOT / "artifacts" / "capability-vector-v1", cache)
    assert [e.name for e in data.evaluations] == ["log-summary α=4 sweep", "α-grid log-summary",
                                                  "wide-task sweep (5 sprint tasks)", "multi-layer and negative α"]
    assert "Per-task overlap" not in text and "## Contrast sets" not in text and "## Rebuilding" not in text
    assert text.count("| Holm | BH |") == 1  # only the evaluation with two arms against its baseline
    assert "> **STATUS — null result.**" in text


# --------------------------------------------------------------------------- sparse and unusual runs


def test_minimal_run_renders_cleanly(tmp_path: Path, cache: HashCache):
    d = _run(tmp_path, """\
        title: Just a note
        status: inconclusive
    """)
    text, data = _render(d, cache)
    for absent in ("## Results", "## Per-layer ranking", "## Contrast sets", "## Directions", "## Quick use",
                   "## Rebuilding", "## Caveats", "## Related", "## Version history", "## Summary", "<details>"):
        assert absent not in text
    assert "> **STATUS — inconclusive.**" in text
    assert "## Files" in text and "## Citation" in text
    _assert_no_empty_sections(text)
    assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")
    assert data.model_card_data.to_dict() == {"library_name": "hubkit", "tags": ["hubkit", "inconclusive"]}


def test_counts_only_evaluation_without_baseline(tmp_path: Path, cache: HashCache):
    d = _run(tmp_path, """\
        title: Counts
        status: null-result
        evaluations:
          - name: bench
            n: 10
            arms:
              - {id: a, passes: 1}
              - {id: b, passes: 2, this: true}
    """)
    text, _ = _render(d, cache)
    assert "## Results" in text and "No baseline is declared" in text
    assert "p vs" not in text and "Per-task overlap" not in text
    _assert_no_empty_sections(text)


def test_two_arm_overlap_lists_tasks_and_mcnemar(tmp_path: Path, cache: HashCache):
    tasks = [f"task-{i}" for i in range(10)]
    base = "task,passed\n" + "".join(f"{t},{int(t in ('task-0',))}\n" for t in tasks)
    ours = "task,passed\n" + "".join(f"{t},{int(t in ('task-0', 'task-1', 'task-2', 'task-3', 'task-4', 'task-5'))}\n"
                                     for t in tasks)
    base = base.replace("task-9,0", "task-9,1")
    d = _run(tmp_path, """\
        title: Pair
        status: positive
        evaluations:
          - name: bench
            baseline: base
            arms:
              - {id: ours, per_task: ours.csv, this: true}
              - {id: base, per_task: base.csv}
    """, {"ours.csv": ours, "base.csv": base})
    text, _ = _render(d, cache)
    assert "- **ours only** (5): task-1, task-2, task-3, task-4, task-5" in text
    assert "- **ours ∩ base** (1): task-0" in text and "- **base only** (1): task-9" in text
    assert "on 5 vs 1 discordant tasks: p = 0.219" in text
    assert "Holm" not in text


def test_superseded_banner_links_successor(tmp_path: Path, cache: HashCache):
    d = _run(tmp_path, """\
        title: Old
        status: superseded
        status_note: Replaced by a same-model contrast.
        related:
          - {repo_id: me/new-thing, relation: superseded-by, note: v2 fixes the confound.}
    """)
    text, _ = _render(d, cache)
    assert ("> **STATUS — superseded by [me/new-thing](https://huggingface.co/me/new-thing).** "
            "Replaced by a same-model contrast. v2 fixes the confound.") in text
    assert "## Related repos" in text


def test_history_and_version(cache: HashCache):
    hist = [HistoryEntry("v1", "2026-05-15", "12 files added"), HistoryEntry("v2", "2026-05-16", "card | fixed")]
    text, _ = _render(ROOT / "artifacts" / "capability-vector-v1", cache, history=hist, version="v2")
    assert "## Version history" in text
    assert "| v1 | 2026-05-15 | 12 files added |" in text and "| v2 | 2026-05-16 | card \\| fixed |" in text
    assert "version v2" in text  # reproducibility and citation


def test_summary_headings_are_demoted():
    text = "# RESULTS — x\n\nIntro.\n\n# Part\n\n## Sub\n\n```\n# not a heading\n```\n"
    assert card._embed(text) == "Intro.\n\n### Part\n\n#### Sub\n\n```\n# not a heading\n```"


# --------------------------------------------------------------------------- templates


def test_user_template_overrides_one_partial(tmp_path: Path, cache: HashCache):
    tpl = tmp_path / "tpl" / "sections"
    tpl.mkdir(parents=True)
    (tpl / "caveats.md.j2").write_text("{% if card.caveats %}\n## Watch out\n\n{% for c in card.caveats %}\n"
                                       "* {{ c }}\n{% endfor %}\n{% endif %}\n")
    text, _ = _render(ROOT / "artifacts" / "capability-vector-v1", cache, template_dir=tmp_path / "tpl")
    assert "## Watch out\n\n* 5 positive traces" in text
    assert "## Caveats" not in text and "## Results" in text  # the rest comes from the built-ins


def test_undefined_field_names_template_file_and_line(tmp_path: Path, cache: HashCache):
    tpl = tmp_path / "tpl" / "sections"
    tpl.mkdir(parents=True)
    (tpl / "caveats.md.j2").write_text("{% if card.caveats %}\n## Caveats\n{{ card.caveat_list }}\n{% endif %}\n")
    with pytest.raises(HubkitError, match=r"sections/caveats\.md\.j2:3: .*caveat_list"):
        _render(ROOT / "artifacts" / "capability-vector-v1", cache, template_dir=tmp_path / "tpl")


def test_syntax_error_names_template_file_and_line(tmp_path: Path, cache: HashCache):
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "card.md.j2").write_text("---\n{{ card.front_matter }}\n---\n\n{% for x in card.caveats %}\n{{ x }\n")
    with pytest.raises(HubkitError, match=r"card\.md\.j2:6: template syntax error"):
        _render(ROOT / "artifacts" / "capability-vector-v1", cache, template_dir=tpl)


def test_missing_template_dir_is_an_error(tmp_path: Path):
    with pytest.raises(HubkitError, match="template directory not found"):
        render._environment(tmp_path / "nope")


def test_builtin_templates_never_compute():
    """Templates format: no arithmetic on numbers, no calls into Python beyond filters."""
    for path in render.template_root().rglob("*.j2"):
        src = path.read_text()
        for tag in re.findall(r"{[{%](.*?)[}%]}", src, flags=re.S):
            assert not re.search(r"\d\s*[-+*/]\s*[\w(]|[\w)]\s*[-+*/]\s*\d", tag), \
                f"{path.name}: arithmetic in '{tag.strip()}'"


# --------------------------------------------------------------------------- the plot


def test_ranking_plot_is_deterministic_png(cache: HashCache):
    run = load_run(ROOT / "artifacts" / "persona-vector")
    a, b = card.build_assets(run), card.build_assets(run)
    assert list(a) == ["assets/ranking.png"]
    png = a["assets/ranking.png"]
    assert png == b["assets/ranking.png"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"matplotlib" not in png.lower()


def test_plot_paths_per_direction_when_several_rankings(tmp_path: Path):
    import torch

    d = _run(tmp_path, """\
        title: Two
        status: positive
        directions:
          - {name: alpha, file: vectors/alpha.pt, layer: 1}
          - {name: beta, file: vectors/beta.pt, layer: 1}
        ranking: [vectors/alpha_ranking.csv, vectors/beta_ranking.csv]
    """, {"vectors/alpha_ranking.csv": "layer,auc\n0,0.5\n1,0.9\n",
          "vectors/beta_ranking.csv": "layer,auc\n0,0.7\n1,0.6\n"})
    for n in ("alpha", "beta"):
        v = torch.zeros(2, 8)
        v[:, 0] = 1.0
        torch.save(v, d / "vectors" / f"{n}.pt")
    run = load_run(d)
    assert card.plot_paths(run) == {"vectors/alpha_ranking.csv": "assets/alpha_ranking.png",
                                    "vectors/beta_ranking.csv": "assets/beta_ranking.png"}
    text, data = _render(d, HashCache(tmp_path / "c.json"))
    assert "### alpha" in text and "### beta" in text
    beta = data.rankings[1]
    assert beta.selected_layer == 1 and beta.best_layer == 0
    assert "Best by auc: **0 (block)**" in text
    assert 'hubkit.load_direction("OWNER/NAME", name="alpha")' in text


# --------------------------------------------------------------------------- the command


def test_cli_card_writes_file_and_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "preview" / "README.md"
    r = CliRunner().invoke(main, ["card", str(ROOT / "artifacts" / "persona-vector"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("---\n") and (out.parent / "assets" / "ranking.png").is_file()
    r = CliRunner().invoke(main, ["card", str(ROOT / "artifacts" / "persona-vector")])
    assert r.exit_code == 0 and r.output == out.read_text()


def test_cli_card_template_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HUBKIT_CACHE", str(tmp_path / "cache"))
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "card.md.j2").write_text("{{ card.nope }}\n")
    r = CliRunner().invoke(main, ["card", str(ROOT / "artifacts" / "persona-vector"), "--template", str(tpl)])
    assert r.exit_code == 1
    assert re.search(r"error: \S*card\.md\.j2:1: .*nope", r.output)


def test_published_weights_and_dataset_repo(tmp_path: Path, cache: HashCache):
    import torch

    d = _run(tmp_path, """\
        title: With weights
        repo_id: me/abl
        status: positive
        base_model: org/base
        base_model_revision: 0123abc
        directions:
          - {name: r, file: vectors/r.pt, layer: 3}
        weights: {path: model_out, publish: true}
        regenerate: {direction: r}
    """, {"model_out/config.json": "{}", "model_out/model.safetensors": "x" * 2048})
    v = torch.zeros(8)
    v[0] = 1.0
    (d / "vectors").mkdir(exist_ok=True)
    torch.save(v, d / "vectors" / "r.pt")
    text, data = _render(d, cache, dataset_repo="me/abl-data")
    fm = data.model_card_data.to_dict()
    assert fm["base_model_relation"] == "finetune" and fm["datasets"] == ["me/abl-data"]
    assert 'from_pretrained("me/abl", subfolder="model_out")' in text and "**not pushed**" not in text
    assert "at revision `0123abc`" in text and 'revision="0123abc"' in text
    assert "[me/abl-data](https://huggingface.co/datasets/me/abl-data), dataset" in text
    assert "| `model_out/model.safetensors` | 2.0 KB |" in text


HERETIC = ("regenerate:\n  direction: refusal\n  layer: 17.4\n  targets: [attn_out, mlp_down]\n  norm: preserve\n"
           "  weight:\n    attn_out: {max_weight: 1.2, max_weight_position: 20.5, min_weight: 0.4, "
           "min_weight_distance: 9}\n    mlp_down: 0.8\n")


def test_recipe_rebuild_section_matches_golden(tmp_path: Path, cache: HashCache, update_goldens: bool):
    """A heretic-style recipe in words and numbers, its weight-per-block figure, and why no hook reproduces it."""
    run = copy_example("refusal-abliteration", tmp_path)
    text = (run / "hubkit.yaml").read_text()
    text = text.replace("regenerate: {direction: refusal, layer: 22, targets: [embed_tokens, attn_out, mlp_down]}\n",
                        HERETIC)
    (run / "hubkit.yaml").write_text(text)
    card_text, data = _render(run, cache)
    section = card_text[card_text.index("## Rebuilding the weights"):]
    section = section[:section.index("\n## ", 5)]
    golden = GOLDEN / "recipe-rebuild-section.md"
    if update_goldens:
        golden.write_text(section, encoding="utf-8")
        return
    assert section == golden.read_text(encoding="utf-8")
    assert data.rebuild.weight_plot == "assets/recipe_weights.png" and not data.rebuild.hook_equivalent
    png = build_package(load_run(run), hash_cache=cache).file("assets/recipe_weights.png")
    assert png is not None and png.data.startswith(b"\x89PNG")


def test_per_task_result_folders_are_one_row_each(tmp_path: Path, cache: HashCache):
    """89 tasks × 3 arms of per-task folders must not make a 142 KB card; hubkit.json keeps every file."""
    run = copy_example("refusal-abliteration", tmp_path)
    for arm in ("base", "sft", "abl"):
        for i in range(30):
            d = run / "results" / f"{arm}_trials" / f"task-{i:02d}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(f'{{"task": {i}, "reward": {i % 2}}}')
    text, _ = _render(run, cache)
    rows = [ln for ln in text.splitlines() if ln.startswith("| `results/")]
    assert sum("_trials/`" in ln for ln in rows) == 3
    assert any("| `results/abl_trials/` |" in ln and "30 files" in ln for ln in rows)
    pkg = build_package(load_run(run), hash_cache=cache)
    assert len([f for f in pkg.meta.files if "_trials/" in f.path]) == 90
