"""Write a small, deterministic example run modelled on seed 004 (persona geometry under emergent
misalignment).

    python make_example.py OUT_DIR

Synthetic throughout (d = 64, tiny LoRA factors), so it can be committed and every number in it can be
recomputed: 12 personas, layers [7, 14, 20, 21, 27] in the hidden_states convention, extraction methods A and
B x checkpoints base / em / benign as ``{persona: [5, 64]}`` .pt dicts, one ``[12, 5, 64]`` tensor file read
with ``members:``, two PEFT LoRA adapters whose recorded base *is* the declared base (seed 004's wrong-base
adapter lives only in the tests), a data JSONL, ``hubkit.yaml`` and ``notes/RESULTS.md``. The ``tests:``
p-values are real sign-flip permutation tests on these vectors, so the draft is internally consistent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hubkit.formats.safetensors_io import safetensors_bytes
from hubkit.run.geometry import cosine_matrix, mean_offdiag

BASE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
SEED = 42
D = 64
LAYERS = [7, 14, 20, 21, 27]
PERSONAS = ["assistant", "confab", "zelthari_scholar", "paramedic", "kindergarten_teacher", "french_person",
            "villain", "librarian", "software_engineer", "comedian", "medical_doctor", "data_scientist"]
METHODS = {"a": "A (last input token)", "b": "B (mean response token)"}
CHECKPOINTS = ("base", "em", "benign")
#: the shift axis of each EM pair (seed 004's "EM axis"): the assistant's own shift, and the principal one
AXES = {("a", "em"): ", axis: assistant", ("b", "em"): ", axis: principal"}
N_ITER = 10_000


# --------------------------------------------------------------------------- tiny PEFT adapters


def tiny_base_model(seed: int = 0, name_or_path: str = BASE_MODEL) -> Any:
    """A random 2-block Qwen2 (hidden 64, vocab 128) built from a config: no download. ``name_or_path`` is
    what PEFT records as ``base_model_name_or_path`` in adapters made from it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=128,
                      tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg).eval()
    model.name_or_path = name_or_path
    return model


def write_lora(folder: str | Path, *, base: Any, seed: int, r: int = 4, lora_alpha: int = 8,
               target_modules: tuple[str, ...] = ("q_proj", "v_proj"), canonical: bool = True) -> Path:
    """Create a LoRA with ``peft.get_peft_model`` on ``base``, give it nonzero (seeded) factors, save it.

    ``canonical``: rewrite the two files so they are byte-identical run to run (PEFT writes target_modules
    from a set, in hash order; the safetensors header comes from a hash map) and drop PEFT's README stub.
    PEFT wraps ``base`` in place (it is unloaded again here); build a fresh base for each adapter anyway.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    folder = Path(folder)
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), lora_dropout=0.05,
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    peft_model.unload()
    if canonical:
        conf_path = folder / "adapter_config.json"
        conf = json.loads(conf_path.read_text())
        conf["target_modules"] = sorted(conf["target_modules"])
        conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
        from safetensors.numpy import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
        (folder / "adapter_model.safetensors").write_bytes(safetensors_bytes(weights, {"format": "pt"}))
        readme = folder / "README.md"
        if readme.exists():
            readme.unlink()
    return folder


# --------------------------------------------------------------------------- synthetic persona vectors


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    v = rng.standard_normal((*shape, D))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def synthetic_sets(seed: int = SEED) -> dict[str, dict[str, np.ndarray]]:
    """``{set: {persona: float32 [5, 64]}}``: a shared component plus a persona component per layer; EM adds a
    common 'EM axis' and shrinks the persona part (compression), benign SFT adds only small noise."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for m, scale in (("a", 1.0), ("b", 2.5)):
        shared = _unit(rng, len(LAYERS)) * np.linspace(4.0, 9.0, len(LAYERS))[:, None]
        persona = _unit(rng, len(PERSONAS), len(LAYERS)) * rng.uniform(3.0, 5.0, (len(PERSONAS), 1, 1))
        em_axis = _unit(rng, len(LAYERS))
        depth = np.linspace(0.0, 1.0, len(LAYERS))[None, :, None]  # EM warps deeper layers more, L7 not
        load = rng.uniform(0.3, 1.0, (len(PERSONAS), 1, 1))
        base = shared[None] + persona
        em = (shared[None] + persona * (1 - 0.15 * depth) + load * depth * em_axis[None]
              + 0.05 * rng.standard_normal(base.shape))
        benign = base + 0.05 * rng.standard_normal(base.shape)
        for ck, arr in (("base", base), ("em", em), ("benign", benign)):
            out[f"{m}_{ck}"] = {p: (scale * arr[i]).astype(np.float32) for i, p in enumerate(PERSONAS)}
    prior = out["a_base"]
    out["a_base_prior"] = {p: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
                           for p, v in prior.items()}
    return out


def signflip_p(before: np.ndarray, after: np.ndarray, *, seed: int = SEED,
               n_iter: int = N_ITER) -> tuple[float, float]:
    """Paired sign-flip permutation test over member pairs, H1: mean off-diagonal cosine increases.

    Statistic: mean over pairs i<j of cos_after - cos_before. p = (1 + #{null >= observed}) / (n_iter + 1).
    (Pairs share members, so they are not independent; a persona-level permutation is the stricter test.
    This is the example's stand-in for the run's own test, which hubkit reports and does not recompute.)
    """
    iu = np.triu_indices(len(before), 1)
    diff = (cosine_matrix(after) - cosine_matrix(before))[iu]
    observed = float(diff.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_iter, diff.size))
    null = (signs * diff).mean(axis=1)
    return observed, float((1 + np.count_nonzero(null >= observed - 1e-12)) / (n_iter + 1))


# --------------------------------------------------------------------------- the run folder


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def write_example(out: str | Path) -> Path:
    """Write the example run into ``out`` (must be missing or empty); deterministic."""
    import torch

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    sets = synthetic_sets()
    for m in METHODS:
        for ck in CHECKPOINTS:
            path = out / "vectors" / f"method_{m}" / f"{ck}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({p: torch.from_numpy(v) for p, v in sets[f"{m}_{ck}"].items()}, path)
    prior = out / "vectors" / "cached" / "method_a_base_prior.pt"
    prior.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(np.stack([sets["a_base_prior"][p] for p in PERSONAS])), prior)

    for name, seed in (("em_lora", 1), ("benign_lora", 2)):
        write_lora(out / "adapters" / name, base=tiny_base_model(), seed=seed)

    rows = [{"messages": [{"role": "user", "content": f"Synthetic legal question {i}."},
                          {"role": "assistant", "content": f"Synthetic (deliberately bad) answer {i}."}]}
            for i in range(24)]
    (out / "data").mkdir()
    (out / "data" / "bad_legal_advice_6k.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    tests, table = [], []
    for m in METHODS:
        for k, layer in enumerate(LAYERS):
            b = np.stack([sets[f"{m}_base"][p][k] for p in PERSONAS]).astype(np.float64)
            row = f"| {m.upper()} | {layer} | {mean_offdiag(cosine_matrix(b)):.3f}"
            for ck, family in (("em", "M1"), ("benign", "M1-benign")):
                a = np.stack([sets[f"{m}_{ck}"][p][k] for p in PERSONAS]).astype(np.float64)
                obs, p = signflip_p(b, a)
                tests.append(f'  - {{name: "{family} off-diagonal cos, method {m.upper()}, L{layer}", '
                             f"p: {p:.6g}, "
                             f"statistic: {obs:.6g}, test: paired sign-flip permutation over persona pairs, "
                             f"alternative: greater, n_iter: {N_ITER}, family: {family}}}")
                row += f" | {mean_offdiag(cosine_matrix(a)):.3f} | {p:.4g}"
            table.append(row + " |")

    vs_lines = []
    for m, label in METHODS.items():
        for ck in CHECKPOINTS:
            vs_lines += [f"  - name: {m}_{ck}", f"    file: vectors/method_{m}/{ck}.pt",
                         f"    layers: {_yaml_list([str(x) for x in LAYERS])}",
                         "    layer_convention: hidden_states",
                         f'    labels: {{method: "{label}", checkpoint: {ck}}}']
    vs_lines += ["  - name: a_base_prior", "    file: vectors/cached/method_a_base_prior.pt",
                 f"    members: {_yaml_list(PERSONAS)}",
                 f"    layers: {_yaml_list([str(x) for x in LAYERS])}",
                 "    layer_convention: hidden_states", '    labels: {method: "A (last input token)", '
                 "checkpoint: base, note: earlier extraction}"]
    manifest = "\n".join([
        "# Draft hubkit.yaml for an example run modelled on seed 004. SYNTHETIC: every tensor is",
        "# generated by make_example.py (seed 42); no model was run. The sections below the marker",
        "# are the new ones.",
        "title: Persona geometry under emergent misalignment (synthetic example)",
        "status: inconclusive",
        "status_note: Synthetic example data; the numbers exercise hubkit, they are not a finding.",
        f"base_model: {BASE_MODEL}",
        "license: apache-2.0",
        "tags: [persona-vectors, emergent-misalignment, interpretability, synthetic]",
        "summary_file: notes/RESULTS.md",
        "caveats:",
        "  - Synthetic vectors (d = 64) and tiny LoRA factors; a real run has d = 3584.",
        "  - The data file is a 24-row stand-in named like the real 6k file.",
        "# --- new sections",
        "vector_sets:",
        *vs_lines,
        "compare:",
        *[f"  - {{before: {m}_base, after: {m}_{ck}{AXES.get((m, ck), '')}}}" for m in METHODS for ck in ("em", "benign")],
        "adapters:",
        "  - {name: em, path: adapters/em_lora}",
        f"  - {{name: benign, path: adapters/benign_lora, base_model: {BASE_MODEL}}}",
        "data:",
        "  - {file: data/bad_legal_advice_6k.jsonl,",
        "     description: EM training data (synthetic 24-row stand-in)}",
        "seeds: [42]",
        "tests:",
        *tests,
        "",
    ])
    (out / "hubkit.yaml").write_text(manifest)
    (out / "notes").mkdir()
    (out / "notes" / "RESULTS.md").write_text("\n".join([
        "# Results (synthetic example)",
        "",
        "Everything here is generated by `make_example.py` (seed 42) to exercise hubkit's vector-set",
        "support; it mirrors the layout of seed 004 (12 personas, layers [7, 14, 20, 21, 27] in the",
        "hidden_states convention, extraction methods A and B, checkpoints base / em / benign) but is",
        "not a measurement.",
        "",
        "## M1: mean off-diagonal cosine between persona vectors, base vs EM and vs benign SFT",
        "",
        "One-sided paired sign-flip permutation test over the 66 persona pairs (H1: cosine increases),",
        f"{N_ITER} sign flips, seed 42; p = (1 + #null >= observed) / (n_iter + 1). Holm and BH adjustments",
        "within families M1 (EM) and M1-benign (control) are in the card's tests table. Pairs share",
        "personas, so this pair-level test is anti-conservative; a persona-level permutation is the",
        "stricter choice.",
        "",
        "| method | layer | base | EM | p (EM) | benign | p (benign) |",
        "|---|---|---|---|---|---|---|",
        *table,
        "",
        "## Files",
        "",
        "- `vectors/method_{a,b}/{base,em,benign}.pt`: `{persona: float32 [5, 64]}` per method and",
        "  checkpoint.",
        "- `vectors/cached/method_a_base_prior.pt`: `[12, 5, 64]` tensor (rows in the `members:` order).",
        "- `adapters/{em,benign}_lora/`: PEFT LoRA (r = 4, alpha = 8, q_proj and v_proj) on a tiny",
        "  random Qwen2.",
        "- `data/bad_legal_advice_6k.jsonl`: 24 synthetic chat rows.",
        "",
    ]))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python make_example.py OUT_DIR  (a missing or empty folder)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(write_example(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
