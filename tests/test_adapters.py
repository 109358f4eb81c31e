"""Adapters: a real PEFT round trip on a tiny random Qwen2, seed 004's wrong-base refusal, pickle and config
refusals, and the data-file hashes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from hubkit.errors import ArtifactError, PickleRefused, ProvenanceError
from hubkit.formats.peft_adapters import read_adapter, same_base
from hubkit.formats.safefiles import file_hashes
from tests.persona_geometry_example import BASE_MODEL, tiny_base_model, write_lora

SEED004_BASE = "/workspace/marker_transfer_issue125/confab_zlt_merged"


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """A PEFT-written adapter (r=4, alpha=8, q_proj/v_proj) in ``<tmp>/run/adapters/em``, as PEFT saved it."""
    folder = tmp_path_factory.mktemp("run") / "adapters" / "em"
    write_lora(folder, base=tiny_base_model(), seed=1, canonical=False)
    return folder


@pytest.fixture
def adapter(lora_dir, tmp_path) -> Path:
    """A private copy to edit."""
    return Path(shutil.copytree(lora_dir, tmp_path / "em"))


def _config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for k, val in changes.items():
        if val is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = val
    path.write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- what is reported


def test_read_adapter_reports_the_file(lora_dir):
    info = read_adapter(lora_dir, BASE_MODEL, "adapters/em")
    assert (info.name, info.path, info.base_model, info.peft_type, info.task_type) == (
        "em", "adapters/em", BASE_MODEL, "LORA", "CAUSAL_LM")
    assert (info.r, info.lora_alpha, info.use_rslora, info.lora_dropout) == (4, 8, False, 0.05)
    assert info.target_modules == ["q_proj", "v_proj"]  # sorted: PEFT writes a set in hash order
    assert info.weight_ranks == [4] and info.weight_modules == ["q_proj", "v_proj"]
    assert info.n_lora_tensors == 2 * 2 * 2  # 2 blocks x 2 modules x (A, B)
    assert info.defaults == [] and info.scaling == 2.0
    names = [f.path for f in info.files]
    assert "adapters/em/adapter_config.json" in names and "adapters/em/adapter_model.safetensors" in names
    for f in info.files:
        data = (lora_dir / Path(f.path).relative_to("adapters/em")).read_bytes()
        assert (f.size, f.sha256, f.md5) == (len(data), hashlib.sha256(data).hexdigest(),
                                             hashlib.md5(data).hexdigest())
    json.dumps(info.to_json(), allow_nan=False)


def test_missing_fields_are_reported_as_peft_defaults(adapter):
    _config(adapter, use_rslora=..., lora_dropout=...)
    info = read_adapter(adapter, BASE_MODEL, "adapters/em")
    assert info.defaults == ["lora_dropout", "use_rslora"]
    assert (info.use_rslora, info.lora_dropout) == (False, 0.0)


def test_rslora_scaling(adapter):
    _config(adapter, use_rslora=True)
    assert read_adapter(adapter, BASE_MODEL, "a").scaling == pytest.approx(8 / 2)


# --------------------------------------------------------------------------- provenance


def test_seed_004_wrong_base_is_refused(adapter):
    """The EM adapter #191's plan reused was trained on a marker-coupled merge, not on base Qwen."""
    _config(adapter, base_model_name_or_path=SEED004_BASE, use_rslora=False, r=4, lora_alpha=8)
    with pytest.raises(ProvenanceError) as e:
        read_adapter(adapter, "Qwen/Qwen2.5-7B-Instruct", "models/em_lora/c1_seed42")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("models/em_lora/c1_seed42/adapter_config.json: base_model_name_or_path: ")
    assert f"'{SEED004_BASE}'" in msg and "'Qwen/Qwen2.5-7B-Instruct'" in msg
    assert "a local path never matches a Hub id" in msg


def test_another_hub_id_is_refused(adapter):
    _config(adapter, base_model_name_or_path="Qwen/Qwen2.5-7B")
    msg = "'Qwen/Qwen2.5-7B' is not the declared base 'Qwen/Qwen2.5-7B-Instruct';"
    with pytest.raises(ProvenanceError, match=msg):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


def test_trailing_slash_is_the_same_base(adapter):
    _config(adapter, base_model_name_or_path=BASE_MODEL + "/")
    assert read_adapter(adapter, BASE_MODEL, "adapters/em").base_model == BASE_MODEL + "/"


@pytest.mark.parametrize("recorded, declared, same", [
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", True),
    ("Qwen/Qwen2.5-7B-Instruct/", "Qwen/Qwen2.5-7B-Instruct", True),
    ("qwen/qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", False),  # case-sensitive
    ("/models/Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
    ("./Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
    ("~/Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
    ("C:\\models\\Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
    (SEED004_BASE, "Qwen/Qwen2.5-7B-Instruct", False),
    (SEED004_BASE, SEED004_BASE, False),  # a path never "matches", even itself
    (" Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", False),
])
def test_same_base(recorded, declared, same):
    assert same_base(recorded, declared) is same


@pytest.mark.parametrize("value, msg", [(..., "missing"), (None, "missing"), ("", "str '', not a model id"),
                                        (3, "int 3, not a model id")])
def test_missing_base_refused(adapter, value, msg):
    _config(adapter, base_model_name_or_path=value)
    with pytest.raises(ProvenanceError, match=f"base_model_name_or_path: {msg}, so adapter 'em' cannot"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


def test_declared_base_must_be_a_hub_id(adapter):
    with pytest.raises(ProvenanceError, match="declared base '/workspace/x' is not a Hub id"):
        read_adapter(adapter, "/workspace/x", "adapters/em")


# --------------------------------------------------------------------------- files


def test_adapter_model_bin_refused(adapter):
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(PickleRefused, match="^adapters/em/adapter_model.bin: a pickle"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(PickleRefused, match="adapter_model.bin"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


def test_other_pickles_refused(adapter):
    (adapter / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(PickleRefused, match="^adapters/em/training_args.bin: a pickle-format file"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


def test_missing_files_refused(adapter, tmp_path):
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="^adapters/em/adapter_model.safetensors: missing"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(ArtifactError, match="^adapters/em/adapter_config.json: missing"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")
    with pytest.raises(ArtifactError, match="not a folder"):
        read_adapter(tmp_path / "nope", BASE_MODEL, "adapters/nope")


@pytest.mark.parametrize("text, msg", [
    ('{"peft_type": "LORA", "peft_type": "LORA"}', "duplicate key 'peft_type'"),
    ('{"r": NaN}', "NaN is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ("{", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_untrusted_config_refused(adapter, text, msg):
    path = adapter / "adapter_config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ArtifactError, match=msg) as e:
        read_adapter(adapter, BASE_MODEL, "adapters/em")
    assert str(e.value).startswith("adapters/em/adapter_config.json: ")


def test_oversized_config_refused(adapter):
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["padding"] = "x" * (1 << 20)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="more than the 1048576 a config may have"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


@pytest.mark.parametrize("changes, msg", [
    ({"peft_type": "IA3"}, "peft_type: 'IA3'; hubkit describes LoRA adapters only"),
    ({"r": True}, "r: must be int, got bool"),
    ({"r": "4"}, "r: must be int, got str"),
    ({"r": 8}, "the weights have rank 4 but adapter_config.json says r=8"),
    ({"use_rslora": "false"}, "use_rslora: must be bool"),
    ({"lora_dropout": 1.5}, "out of range"),
    ({"target_modules": ["q_proj"]}, "LoRA weights on 'v_proj', which adapter_config.json's target_modules"),
    ({"target_modules": [1]}, "must be a list of strings or a regex"),
])
def test_config_values_checked(adapter, changes, msg):
    _config(adapter, **changes)
    with pytest.raises(ArtifactError, match=msg.replace("(", "\\(").replace("[", "\\[")):
        read_adapter(adapter, BASE_MODEL, "adapters/em")


def test_regex_target_modules_and_rank_pattern_accepted(adapter):
    _config(adapter, target_modules=".*(q|v)_proj", r=8, rank_pattern={"q_proj": 4, "v_proj": 4})
    info = read_adapter(adapter, BASE_MODEL, "adapters/em")
    assert info.target_modules == ".*(q|v)_proj" and info.weight_ranks == [4] and info.r == 8


# --------------------------------------------------------------------------- PEFT loads what passed


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if "lora_" in k}


def test_peft_round_trip_and_subfolder(lora_dir):
    from peft import PeftModel
    from safetensors.torch import load_file

    saved = load_file(str(lora_dir / "adapter_model.safetensors"))
    read_adapter(lora_dir, BASE_MODEL, "adapters/em")

    direct = PeftModel.from_pretrained(tiny_base_model(), str(lora_dir))
    run_root = lora_dir.parent.parent  # <tmp>/run, holding adapters/em
    sub = PeftModel.from_pretrained(tiny_base_model(), str(run_root), subfolder="adapters/em")
    for model in (direct, sub):
        w = _lora_weights(model)
        assert len(w) == len(saved) == 8
        for key, value in saved.items():
            name = key.replace(".weight", ".default.weight")
            assert torch.equal(w[name], value), key
    x = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        base_out = tiny_base_model()(x).logits
        lora_out = direct(x).logits
    assert not torch.allclose(base_out, lora_out)  # the adapter is applied, not silently skipped


def test_canonical_rewrite_still_loads(tmp_path):
    """make_example rewrites both files for byte-determinism; PEFT must still load them."""
    from peft import PeftModel

    a = write_lora(tmp_path / "a", base=tiny_base_model(), seed=3)
    b = write_lora(tmp_path / "b", base=tiny_base_model(), seed=3)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert not (a / "README.md").exists()
    read_adapter(a, BASE_MODEL, "adapters/a")
    model = PeftModel.from_pretrained(tiny_base_model(), str(a))
    assert len(_lora_weights(model)) == 8


# --------------------------------------------------------------------------- data files


def test_data_file_hashes_streamed(tmp_path):
    data = b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(1000))
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    h = file_hashes(path, "data/d.jsonl", chunk=7)  # tiny chunks: many updates must equal one
    assert (h.path, h.size) == ("data/d.jsonl", len(data))
    assert h.md5 == hashlib.md5(data).hexdigest() and h.sha256 == hashlib.sha256(data).hexdigest()


def test_a_file_linking_out_of_the_adapter_folder_is_refused(adapter, tmp_path):
    """The linked file would be parsed and its hash put in the card, while the inventory leaves it out."""
    outside = tmp_path / "elsewhere.json"
    outside.write_text((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").unlink()
    (adapter / "adapter_config.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="adapter_config.json: a symlink out of the adapter folder"):
        read_adapter(adapter, BASE_MODEL, "adapters/em")
