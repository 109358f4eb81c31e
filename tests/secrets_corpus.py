"""A corpus to measure a secret scanner on: planted secrets (every kind × every container) and clean,
realistic research files (the example runs plus synthetic logs, configs, notebooks, tokenizers, scripts).

Every secret is generated at run time from a seeded RNG, so this file holds no credential-shaped literal
(push protection and our own scan stay quiet). ``build_corpus(out)`` writes ``out/planted`` and
``out/clean`` and returns what was planted where; ``decode_reference`` turns any planted file back into the
plain text a person would read, so text-only scanners (detect-secrets) can be measured fairly on it.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import random
import shutil
import string
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ARTIFACTS = Path("/work/main/artifacts")
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
URLSAFE = ALNUM + "_-"
UPPER = string.ascii_uppercase + string.digits


def _sha1(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def scanner_module() -> ModuleType:
    """hubkit's scanner (the benchmark compares it with detect-secrets and the first-round one)."""
    import hubkit.publish.secrets as scanner

    return scanner


# ------------------------------------------------------------------------------------------ the secrets


class Gen:
    """Seeded random strings shaped like each vendor's credentials."""

    def __init__(self, seed: int = 0):
        self.r = random.Random(seed)

    def s(self, n: int, alphabet: str = ALNUM) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def hexs(self, n: int) -> str:
        return self.s(n, HEX)


@dataclass(frozen=True)
class Kind:
    """One planted kind: the scanner's kind name, a line that carries it, and whether a name can hold it."""

    name: str
    expect: str  # our scanner's ``kind`` for it
    make: Callable[[Gen], tuple[str, str]]  # -> (text to plant, the secret value)
    in_name: bool = True


def _pem(g: Gen) -> tuple[str, str]:
    body = "\n".join(g.s(64, ALNUM + "+/") for _ in range(12))
    text = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    return text, "-----BEGIN RSA PRIVATE KEY-----"


def _jwt(g: Gen) -> str:
    """A well-formed HS256 JWT (header and claims are real base64url JSON; the signature is random)."""
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": g.s(12), "iat": 1_747_000_000 + g.r.randint(0, 10**6), "scope": "runs:write"}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{g.s(43, ALNUM + '_-')}"


def _t(fmt: str, value: Callable[[Gen], str]) -> Callable[[Gen], tuple[str, str]]:
    def make(g: Gen) -> tuple[str, str]:
        v = value(g)
        return fmt.format(v=v), v

    return make


KINDS: list[Kind] = [
    Kind("hf", "Hugging Face token", _t("export HF_TOKEN={v}", lambda g: "hf_" + g.s(34))),
    Kind("hf_org", "Hugging Face token", _t("HUB_ORG_TOKEN={v}", lambda g: "api_org_" + g.s(34))),
    Kind("openai", "OpenAI API key", _t("OPENAI_API_KEY='{v}'", lambda g: "sk-proj-" + g.s(48, URLSAFE))),
    Kind("anthropic", "Anthropic API key",
         _t('client = Anthropic(api_key="{v}")', lambda g: "sk-ant-api03-" + g.s(90, ALNUM + "_-") + "AA")),
    Kind("aws_id", "AWS access key id",
         _t("aws_access_key_id = {v}", lambda g: "AKIA" + g.s(16, string.ascii_uppercase + string.digits))),
    Kind("aws_secret", "AWS secret access key",
         _t("aws_secret_access_key = {v}", lambda g: g.s(40, ALNUM + "/+")), in_name=False),
    Kind("github", "GitHub token", _t("git clone https://{v}@github.com/org/repo",
                                      lambda g: "ghp_" + g.s(36))),
    Kind("github_pat", "GitHub token", _t("GH_TOKEN={v}", lambda g: "github_pat_" + g.s(22) + "_" + g.s(59))),
    Kind("private_key", "private key block", _pem, in_name=False),
    Kind("wandb_env", "Weights & Biases API key", _t("export WANDB_API_KEY={v}", lambda g: g.hexs(40)),
         in_name=False),
    Kind("wandb_cli", "Weights & Biases API key", _t("$ wandb login --relogin {v}", lambda g: g.hexs(40)),
         in_name=False),
    Kind("wandb_py", "Weights & Biases API key", _t('wandb.login(key="{v}")', lambda g: g.hexs(40)),
         in_name=False),
    Kind("wandb_netrc", "Weights & Biases API key",
         _t("machine api.wandb.ai\n  login user\n  password {v}", lambda g: g.hexs(40)), in_name=False),
    Kind("slack", "Slack token", _t("SLACK_BOT_TOKEN={v}", lambda g: f"xoxb-{g.s(12, string.digits)}-"
                                    f"{g.s(13, string.digits)}-{g.s(24)}")),
    Kind("slack_webhook", "Slack webhook URL",
         _t("curl -X POST {v} -d @msg.json", lambda g: "https://hooks.slack.com/services/T"
            f"{g.s(10, UPPER)}/B{g.s(10, UPPER)}/"
            f"{g.s(24)}"), in_name=False),
    Kind("stripe", "Stripe API key", _t('stripe.api_key = "{v}"', lambda g: "sk_live_" + g.s(32))),
    Kind("google", "Google API key", _t("GOOGLE_API_KEY={v}", lambda g: "AIza" + g.s(35, ALNUM + "_-"))),
    Kind("openrouter", "OpenRouter API key",
         _t("OPENROUTER_API_KEY={v}", lambda g: "sk-or-v1-" + g.hexs(64))),
    Kind("groq", "Groq API key", _t("GROQ_API_KEY={v}", lambda g: "gsk_" + g.s(52))),
    Kind("replicate", "Replicate API token", _t("REPLICATE_API_TOKEN={v}", lambda g: "r8_" + g.s(37))),
    Kind("password", "password assignment",
         _t('  password: "{v}"', lambda g: g.s(6, ALNUM) + g.s(1, "!#%&") + g.s(5, ALNUM)), in_name=False),
    Kind("generic_key", "generic secret assignment",
         _t('"together_api_key": "{v}",', lambda g: g.s(40, string.ascii_lowercase + string.digits)),
         in_name=False),
    Kind("url_creds", "credentials in URL",
         _t("DATABASE_URL=postgres://admin:{v}@db.example.com:5432/runs", lambda g: g.s(16)), in_name=False),
    Kind("cohere_env", "generic secret assignment", _t("export COHERE_API_KEY={v}", lambda g: g.s(40)),
         in_name=False),
    # Kinds detect-secrets has plugins for (planted to measure where it might do better).
    Kind("sendgrid", "SendGrid API key",
         _t("SENDGRID_API_KEY={v}", lambda g: f"SG.{g.s(22, ALNUM + '_-')}.{g.s(43, ALNUM + '_-')}")),
    Kind("telegram", "Telegram bot token",
         _t('bot = telebot.TeleBot("{v}")  # notify when training ends',
            lambda g: f"{g.s(10, string.digits)}:AA{g.s(33, ALNUM + '_-')}"), in_name=False),
    Kind("discord_webhook", "Discord webhook URL",
         _t("requests.post('{v}', json={{'content': 'run done'}})",
            lambda g: f"https://discord.com/api/webhooks/{g.s(18, string.digits)}/{g.s(68, ALNUM + '_-')}"),
         in_name=False),
    Kind("azure_storage", "generic secret assignment",
         _t("AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=runs;AccountKey={v};"
            "EndpointSuffix=core.windows.net", lambda g: g.s(86, ALNUM + "+/") + "=="), in_name=False),
    Kind("jwt", "JSON web token",
         _t("curl -H 'Authorization: Bearer {v}' https://api.example.com/v1/runs", _jwt), in_name=False),
    Kind("npm", "npm token", _t("//registry.npmjs.org/:_authToken={v}", lambda g: "npm_" + g.s(36))),
    Kind("pypi", "PyPI token", _t("  password = {v}", lambda g: "pypi-AgEIcHlwaS5vcmc" + g.s(150, URLSAFE))),
    Kind("unlabeled_entropy", "(none: no name says secret)",
         _t('CLIENT_BLOB = "{v}"  # from the dashboard', lambda g: g.s(40, ALNUM + "+/")), in_name=False),
]

CONTAINERS = ["plain", "nul", "utf16le_bom", "utf16be_bom", "utf16le_nobom", "utf32", "ipynb", "gz", "bz2",
              "xz", "zip", "targz", "zip_in_targz", "name"]


@dataclass(frozen=True)
class Planted:
    """One planted file: where (relative to ``planted/``), what, in which container, at which line."""

    rel: str
    kind: Kind
    container: str
    value: str
    line: int  # line of the secret in the file as a scanner reports it (0: a name, or a notebook's JSON)
    member: str = ""  # the inner path for archives ("" otherwise)
    text_line: int = 0  # line of the secret in ``decode_reference``'s text


# ------------------------------------------------------------------------------------- realistic filler


def log_lines(g: Gen, n: int, start: int = 0) -> list[str]:
    """Training/eval log lines as research runs write them: timestamps, tqdm, metrics, hashes, URLs."""
    out = []
    for i in range(start, start + n):
        k = i % 9
        ts = f"2026-05-14 10:{(i // 60) % 60:02d}:{i % 60:02d}"
        if k == 0:
            out.append(f"[{ts}] step {i} | loss {g.r.random() * 3:.4f} | lr 3.0e-05 | tokens/s "
                       f"{g.r.randint(1000, 9000)} | grad_norm {g.r.random():.3f}")
        elif k == 1:
            out.append(f"{i % 100:3d}%|{'█' * (i % 10)}{' ' * (10 - i % 10)}| {i}/20000 [01:23<02:11, "
                       f"12.3it/s, loss=0.{g.r.randint(100, 999)}]")
        elif k == 2:
            out.append(json.dumps({"step": i, "eval/loss": round(g.r.random(), 5), "num_tokens": i * 4096,
                                   "sha256": hashlib.sha256(str(i).encode()).hexdigest()}))
        elif k == 3:
            out.append(f"Loading models--Qwen--Qwen3.5-4B/snapshots/{_sha1(str(i))}"
                       f"/model-0000{i % 3 + 1}-of-00003.safetensors")
        elif k == 4:
            out.append(f"wandb: 🚀 View run fluent-sun-{i} at https://wandb.ai/team/persona/runs/"
                       f"{g.s(8, string.ascii_lowercase + string.digits)}")
        elif k == 5:
            out.append(f"INFO generate: prompt_tokens={g.r.randint(10, 999)} completion_tokens="
                       f"{g.r.randint(1, 999)} max_new_tokens=2048 temperature=0.7 pad_token_id=151643")
        elif k == 6:
            out.append(f"[{ts}] run_id={uuid.UUID(int=g.r.getrandbits(128))} md5="
                       f"{hashlib.md5(str(i).encode()).hexdigest()} commit={_sha1(str(-i))}")
        elif k == 7:
            out.append(f"hf_hub_download(repo_id='Qwen/Qwen3.5-4B', filename='config.json', token=True) -> "
                       f"/root/.cache/huggingface/hub/models--Qwen--Qwen3.5-4B/blobs/"
                       f"{hashlib.sha256(str(i * 7).encode()).hexdigest()}")
        else:
            out.append(f"[{ts}] eval task=password-recovery trial {i % 5}: fail (no_cmd) secret-santa-v2 "
                       f"key=value tokenizer=Qwen2TokenizerFast")
    return out


def plant_text(g: Gen, kind: Kind) -> tuple[str, str, int]:
    """A small log with the secret on a known line: (text, value, line)."""
    secret_text, value = kind.make(g)
    before, after = log_lines(g, 6), log_lines(g, 5, 6)
    line = len(before) + 1 + secret_text[:secret_text.index(value)].count("\n")
    return "\n".join([*before, secret_text, *after]) + "\n", value, line


def _nul(text: str, g: Gen) -> bytes:
    """A tty capture: NULs at line starts and sprinkled inside lines (one right inside the secret line)."""
    out = bytearray()
    for ln in text.encode().split(b"\n"):
        ln = b"\0\0" + ln
        if len(ln) > 12:
            cut = g.r.randrange(3, min(len(ln), 20))
            ln = ln[:cut] + b"\0" + ln[cut:]
        out += ln + b"\n"
    return bytes(out[:-1])


def _tar_bytes(members: dict[str, bytes], compress: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_planted(out: Path, seed: int = 1) -> list[Planted]:
    """Every kind in every container: one file each, one secret per file."""
    g = Gen(seed)
    planted: list[Planted] = []
    clean_member = "\n".join(log_lines(g, 20)).encode()
    for kind in KINDS:
        for c in CONTAINERS:
            if c == "name" and not kind.in_name:
                continue
            text, value, line = plant_text(g, kind)
            text_line = line
            raw = text.encode()
            base = f"{kind.name}/{c}"
            member = ""
            if c == "plain":
                rel, data = f"{base}/run.log", raw
            elif c == "nul":
                rel, data = f"{base}/tty_capture.log", _nul(text, g)
            elif c == "utf16le_bom":
                rel, data = f"{base}/powershell.log", b"\xff\xfe" + text.encode("utf-16-le")
            elif c == "utf16be_bom":
                rel, data = f"{base}/export.txt", b"\xfe\xff" + text.encode("utf-16-be")
            elif c == "utf16le_nobom":
                rel, data = f"{base}/console.txt", text.encode("utf-16-le")
            elif c == "utf32":
                rel, data = f"{base}/dump.txt", text.encode("utf-32")
            elif c == "ipynb":  # the secret inside a JSON-escaped cell source, like a pasted credential
                cell = {"cell_type": "code", "metadata": {}, "execution_count": 1, "outputs": [],
                        "source": text.splitlines(keepends=True)}
                rel, data = f"{base}/explore.ipynb", json.dumps(
                    {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1).encode()
                line = 0  # a line of the notebook file, not of the cell
            elif c == "gz":
                rel, data = f"{base}/run.log.gz", gzip.compress(raw, mtime=0)
            elif c == "bz2":
                rel, data = f"{base}/run.log.bz2", bz2.compress(raw)
            elif c == "xz":
                rel, data = f"{base}/run.log.xz", lzma.compress(raw)
            elif c == "zip":
                member = "logs/run.log"
                rel, data = f"{base}/logs.zip", _zip_bytes({"logs/clean.log": clean_member, member: raw})
            elif c == "targz":
                member = "run/notes/run.log"
                rel, data = f"{base}/run.tar.gz", _tar_bytes({"run/clean.log": clean_member, member: raw})
            elif c == "zip_in_targz":
                inner = _zip_bytes({"logs/clean.log": clean_member, "logs/run.log": raw})
                member = "bundle/logs.zip!logs/run.log"
                rel, data = f"{base}/bundle.tar.gz", _tar_bytes({"bundle/readme.txt": b"logs inside\n",
                                                                 "bundle/logs.zip": inner})
            else:  # name: a clean file whose path holds the secret
                rel, data, line, text_line = f"{base}/{value}/run.log", clean_member, 0, 1
            _write(out / rel, data)
            planted.append(Planted(rel, kind, c, value, line, member, text_line))
    return planted


def decode_reference(path: Path, rel: str) -> bytes:
    """The plain text a person would read from a planted file (stdlib decoders; file name included as a
    line for the ``name`` container), for scanners that only read plain text."""
    data = path.read_bytes()
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".gz") and not name.endswith(".tar.gz"):
        return gzip.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return b"\n".join(z.read(n) for n in z.namelist())
    if name.endswith(".tar.gz"):
        parts = []
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for m in tf.getmembers():
                blob = tf.extractfile(m).read()  # type: ignore[union-attr]
                if m.name.endswith(".zip"):
                    with zipfile.ZipFile(io.BytesIO(blob)) as z:
                        blob = b"\n".join(z.read(n) for n in z.namelist())
                parts.append(blob)
        return b"\n".join(parts)
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return data.decode("utf-32").encode()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16").encode()
    if name == "console.txt":
        return data.decode("utf-16-le").encode()
    if name.endswith(".ipynb"):
        return "".join("".join(c["source"]) for c in json.loads(data)["cells"]).encode()
    if b"\0" in data:
        data = data.replace(b"\0", b"")
    if "/name/" in rel:
        return rel.encode() + b"\n" + data
    return data


# ------------------------------------------------------------------------------------------ clean files


def _tokenizer_json(g: Gen, n_vocab: int = 12000) -> str:
    """A byte-level BPE tokenizer.json on one line, like ``tokenizers`` writes it: random-looking pieces."""
    chars = string.ascii_letters + string.digits + "ĠĊċ_-.,:;!?()[]{}'\"/\\@#$%^&*+=<>|~`"
    vocab: dict[str, int] = {}
    words = ["token", "password", "secret", "key", "api", "hf", "sk", "AKIA", "wandb", "ghp", "Bearer"]
    while len(vocab) < n_vocab:
        if g.r.random() < 0.05:
            piece = g.r.choice(["Ġ", ""]) + g.r.choice(words) + g.s(g.r.randint(0, 3), string.ascii_lowercase)
        else:
            piece = g.r.choice(["Ġ", "", ""]) + g.s(g.r.randint(1, 12), chars)
        vocab.setdefault(piece, len(vocab))
    pieces = list(vocab)
    merges = [f"{g.r.choice(pieces)} {g.r.choice(pieces)}" for _ in range(n_vocab)]
    added = [{"id": n_vocab + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|secret_token|>"])]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
           "post_processor": {"type": "TemplateProcessing", "special_tokens": {"<|endoftext|>": {
               "id": "<|endoftext|>", "ids": [n_vocab], "tokens": ["<|endoftext|>"]}}},
           "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "vocab": vocab, "merges": merges}}
    return json.dumps(tok, ensure_ascii=False)


def _notebook(g: Gen) -> str:
    png = base64.b64encode(bytes(g.r.getrandbits(8) for _ in range(3000))).decode()
    cells = [
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "outputs": [], "source": [
            "import os\n", "from huggingface_hub import login, HfApi, hf_hub_download\n",
            "login(token=os.environ[\"HF_TOKEN\"])\n", "api = HfApi(token=os.environ.get(\"HF_TOKEN\"))\n",
            "wandb.login(key=os.environ[\"WANDB_API_KEY\"])\n"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 2, "source": [
            "path = hf_hub_download(repo_id=\"Qwen/Qwen3.5-4B\", filename=\"config.json\", token=True)\n",
            "tok = AutoTokenizer.from_pretrained(\"Qwen/Qwen3.5-4B\", use_auth_token=True)\n",
            "out = model.generate(**tok(prompt, return_tensors=\"pt\"), max_new_tokens=256,\n",
            "                     pad_token_id=tok.eos_token_id)\n"],
         "outputs": [{"output_type": "stream", "name": "stderr", "text": [
             "Fetching 3 files: 100%|██████████| 3/3 [00:00<00:00, 12.41it/s]\n",
             f"wandb: Run data is saved locally in /root/wandb/run-20260514_100211-{g.s(8, HEX)}\n"]},
             {"output_type": "display_data", "metadata": {}, "data": {"image/png": png, "text/plain": [
                 "<Figure size 640x480 with 1 Axes>"]}}]},
        {"cell_type": "markdown", "metadata": {}, "source": [
            "Set `HF_TOKEN` (see huggingface.co/settings/tokens) — never paste a token here.\n"]},
    ]
    return json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
                       "nbformat_minor": 5}, indent=1, ensure_ascii=False)


def clean_files(g: Gen) -> dict[str, bytes]:
    """Synthetic research files that hold no secret but plenty of hashes, ids, tokens-as-in-NLP."""
    files: dict[str, str | bytes] = {}
    files["notes/train.log"] = "\n".join(log_lines(g, 3000)) + "\n"
    files["notes/eval.log"] = "\n".join(
        f"task {i}: sha256={hashlib.sha256(bytes([i])).hexdigest()} "
        f"md5={hashlib.md5(bytes([i])).hexdigest()} "
        f"commit {_sha1(f'{i}.1')} revision=\"{_sha1(f'{i}.2')}\" "
        f"uuid={uuid.UUID(int=g.r.getrandbits(128))} b64={base64.b64encode(struct_floats(g)).decode()}"
        for i in range(200)) + "\n"
    files["configs/train.yaml"] = "\n".join([
        "model_name_or_path: Qwen/Qwen3.5-4B", f"revision: {g.hexs(40)}", "tokenizer_name: Qwen/Qwen3.5-4B",
        "pad_token: <|endoftext|>", "eos_token: <|im_end|>", "max_new_tokens: 2048", "token: true",
        "hub_token: null", "use_auth_token: true", "push_to_hub_token: ${HF_TOKEN}", "report_to: wandb",
        "wandb_project: persona-vector", f"run_id: {uuid.UUID(int=g.r.getrandbits(128))}",
        f"cache_key: {g.hexs(64)}", "api_key: ${OPENAI_API_KEY}", "password: ${DB_PASSWORD}",
        "secret_key: <your secret key>", "hf_token_path: /root/.cache/huggingface/token",
        "max_tokens_per_batch: 65536", "tokens_per_second_target: 12000", "key: value",
        f"sha256: {g.hexs(64)}", f"checkpoint_hash: {g.hexs(40)}", "auth: none",
        f"token_sha256: {g.hexs(64)}", f"next_page_token: {g.s(32)}", f"secret_name: run-{g.s(12)}",
        f"dataset_fingerprint: {g.hexs(16)}", "learning_rate: 3.0e-05", "seed: 1234"]) + "\n"
    files["configs/generation_config.json"] = json.dumps({
        "bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": True,
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.51.0"}, indent=2)
    files["configs/tokenizer_config.json"] = json.dumps({
        "add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "model_max_length": 131072, "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                         "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"}, indent=2)
    files["model/tokenizer.json"] = _tokenizer_json(g)
    files["model/merges.txt"] = "#version: 0.2\n" + "\n".join(
        f"{g.s(g.r.randint(1, 6), string.ascii_letters)} {g.s(g.r.randint(1, 6), string.ascii_letters)}"
        for _ in range(5000)) + "\n"
    files["notebooks/analysis.ipynb"] = _notebook(g)
    files["scripts/train.sh"] = "\n".join([
        "#!/usr/bin/env bash", "set -euo pipefail", "export HF_TOKEN=$HF_TOKEN",
        'export WANDB_API_KEY="${WANDB_API_KEY:?set it}"', 'huggingface-cli login --token "$HF_TOKEN"',
        "wandb login $WANDB_API_KEY", "GIT_SHA=$(git rev-parse HEAD)",
        "python train.py --hf_token ${HF_TOKEN} --seed 1234 --max_new_tokens 2048 --report_to wandb",
        "python -m terminus_runner --model abliterated --tasks all --parallel 6",
        "curl -H \"Authorization: Bearer $HF_TOKEN\" https://huggingface.co/api/whoami-v2"]) + "\n"
    files["scripts/upload.py"] = "\n".join([
        "import getpass", "import os", "", "from huggingface_hub import HfApi, hf_hub_download", "",
        'token = os.environ["HF_TOKEN"]', "api = HfApi(token=token)",
        'path = hf_hub_download(repo_id="Qwen/Qwen3.5-4B", filename="config.json", token=True)',
        'wandb.login(key=os.environ["WANDB_API_KEY"])', "password = getpass.getpass()",
        'secret_key = os.getenv("SECRET_KEY")', "api_key = args.api_key", "hf_token = get_token()",
        "tokenizer = AutoTokenizer.from_pretrained(name, token=hf_token, use_auth_token=None)",
        'headers = {"Authorization": f"Bearer {token}"}', "n_tokens = len(tokenizer(text).input_ids)",
        "", "def main(access_token: str | None = None) -> None:", "    api_key = api_key or None",
        "    db_url = f'postgres://{user}:{password}@{host}/runs'",
        "    print(f'uploaded with {token[:5]}…')"]) + "\n"
    files["requirements.lock"] = "\n".join(
        f"{p}==1.{i}.0 \\\n    --hash=sha256:{hashlib.sha256(p.encode()).hexdigest()}"
        for i, p in enumerate(["torch", "transformers", "safetensors", "tokenizers", "wandb"])) + "\n"
    files["wandb/wandb-metadata.json"] = json.dumps({
        "os": "Linux-6.8.0-x86_64", "python": "3.11.7", "host": "gpu-node-17", "username": "researcher",
        "executable": "/usr/bin/python3", "codePath": "scripts/train.py",
        "git": {"commit": g.hexs(40), "remote": "https://github.com/org/persona-vector.git"},
        "program": "train.py", "args": ["--seed", "1234"], "cuda": "12.4", "gpu": "NVIDIA A6000"}, indent=2)
    files["wandb/wandb-summary.json"] = json.dumps(
        {"_runtime": 812.4, "_step": 2000, "train/loss": 0.123, "_wandb": {"runtime": 812},
         "eval/accuracy": 0.61, "_timestamp": 1747216931.2}, indent=2)
    files["wandb/debug.log"] = "\n".join([
        f"2026-05-14 10:02:11,123 INFO    MainThread:1 [wandb_init.py:init():781] run_id={g.s(8, HEX)}",
        "2026-05-14 10:02:11,124 INFO    MainThread:1 [wandb_login.py:_login():298] Logged in (api_key from "
        "netrc)",
        f"2026-05-14 10:02:12,001 INFO    syncing run https://wandb.ai/team/persona/runs/{g.s(8, HEX)}",
        "2026-05-14 10:02:12,002 INFO    api_key=********** base_url=https://api.wandb.ai"]) + "\n"
    files["hf_cache_listing.txt"] = "\n".join(
        f"models--Qwen--Qwen3.5-4B/snapshots/{g.hexs(40)}/model-0000{i}-of-00003.safetensors -> "
        f"../../blobs/{g.hexs(64)}" for i in range(1, 4)) + "\n"
    files["git.log"] = "\n".join(f"commit {g.hexs(40)}\nAuthor: Alex <alex@example.com>\n\n    step {i}\n"
                                 for i in range(50))
    files["results/generations.jsonl"] = "\n".join(json.dumps({
        "prompt": "How do I reset a forgotten password on Linux?", "completion":
        "Boot into recovery mode and run passwd <user>; the token-level refusal direction was ablated.",
        "id": str(uuid.UUID(int=g.r.getrandbits(128)))}) for _ in range(50)) + "\n"
    files[".env.example"] = ("HF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nOPENAI_API_KEY=sk-...\n"
                             "WANDB_API_KEY=<your key>\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n")
    files["README.md"] = ("# persona vector\n\nSet `HF_TOKEN` (huggingface.co/settings/tokens) and run "
                          "`wandb login`. Tokens/s: 12k. See https://user@github.com/org/repo and "
                          "http://localhost:8080/metrics.\n")
    files[f"checkpoints/step_1000_{g.hexs(40)}/trainer_state.json"] = json.dumps(
        {"global_step": 1000, "best_model_checkpoint": None, "log_history": [
            {"loss": 1.2, "step": s_, "num_input_tokens_seen": s_ * 4096} for s_ in range(0, 1000, 50)]})
    files[f"runs/{uuid.UUID(int=g.r.getrandbits(128))}/metrics.csv"] = "step,loss\n" + "\n".join(
        f"{i},{g.r.random():.4f}" for i in range(100)) + "\n"
    files["env_dump.txt"] = "\n".join([
        "SSH_AUTH_SOCK=/tmp/ssh-XXXXk2Jd/agent.1234", "PASSWORD_STORE_DIR=/home/u/.password-store",
        "HF_HUB_ENABLE_HF_TRANSFER=1", "HF_TOKEN_PATH=/root/.cache/huggingface/token", "KEYTIMEOUT=1",
        "WANDB_API_KEY_FILE=/run/secrets/wandb", "GPG_AGENT_INFO=/run/user/1000/gnupg/S.gpg-agent:0:1",
        f"CUDA_VISIBLE_DEVICES=0,1 MASTER_ADDR=10.0.0.{g.r.randint(2, 200)} NCCL_SOCKET_IFNAME=eth0",
        "PIP_INDEX_URL=https://user:****@pypi.example.com/simple", "REDIS_URL=redis://:${REDIS_PW}@cache:6379",
        "DATABASE_URL=postgres://user:password@localhost:5432/dev", "TOKENIZERS_PARALLELISM=false"]) + "\n"
    files["scripts/client.py"] = "\n".join([
        "api_key = api_key_from_env2", "token = hf_token_v2", "secret_key = SECRET_KEY_V2",
        "auth_token = SessionManager2Factory", "client_secret = oauth_client_v2_default",
        f'"upload_token": "{uuid.UUID(int=g.r.getrandbits(128))}"',
        "self.api_key = self.config.api_key", 'api_key = "EMPTY"  # vLLM', "password = os.environ['PW']",
        'client = OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")',
        "secretName: my-secret-123", "client_secret_file: client_secret_2.json",
        "--token_budget 1000000 --max_tokens 4096", "Token is valid (permission: write).",
        "Your token has been saved to /root/.cache/huggingface/token",
        f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{g.s(48, ALNUM + '+/')} alex@gpu-node"]) + "\n"
    files["notebooks/escaped.ipynb"] = json.dumps({"cells": [{"cell_type": "code", "source": [
        "api_key = os.environ[\"OPENAI_API_KEY\"]\n", "token = \"<paste your token>\"\n",
        "wandb.login(key=os.getenv(\"WANDB_API_KEY\"))\n"], "outputs": [], "metadata": {}}]}, indent=1)
    files["results/embeddings.json"] = json.dumps({"model": "text-embedding-3-small", "data": [
        {"index": i, "embedding": base64.b64encode(struct_floats(g, 64, "f")).decode()} for i in range(20)]},
        indent=1)  # ``encoding_format="base64"``: quoted base64 of float32s
    files["results/short_ids.json"] = json.dumps({"runs": [
        {"name": f"abl-L{i}", "wandb_id": g.s(8, string.ascii_lowercase + string.digits),
         "request_id": f"req_{g.s(24)}", "etag": f"W/\"{g.s(27, ALNUM + '+/')}=\""}
        for i in range(30)]}, indent=1)
    files["tty/session.log"] = _nul("\n".join(log_lines(g, 200)), g)
    files["tty/windows_console.txt"] = b"\xff\xfe" + "\n".join(log_lines(g, 100)).encode("utf-16-le")
    files["model/tokenizer.model"] = _sentencepiece_like(g)
    files["activations/acts.npy"] = b"\x93NUMPY\x01\x00v\x00" + g.r.randbytes(20000)
    files["misc/blob.bin.part"] = bytes(g.r.getrandbits(8) for _ in range(50000))
    files["archives/logs.tar.gz"] = _tar_bytes({"notes/train.log": "\n".join(log_lines(g, 500)).encode(),
                                                "configs/gen.json": b'{"max_new_tokens": 256}'})
    files["archives/eval.log.gz"] = gzip.compress("\n".join(log_lines(g, 500)).encode(), mtime=0)
    files["archives/bundle.zip"] = _zip_bytes({"a/train.log": "\n".join(log_lines(g, 300)).encode(),
                                              "a/acts.npy": b"\x93NUMPY" + bytes(1000)})
    return {k: (v.encode() if isinstance(v, str) else v) for k, v in files.items()}


def struct_floats(g: Gen, n: int = 4, fmt: str = "d") -> bytes:
    import struct

    return struct.pack(f"<{n}{fmt}", *(g.r.gauss(0, 1) for _ in range(n)))


def _sentencepiece_like(g: Gen) -> bytes:
    """A protobuf-ish binary: short pieces separated by field tags and float scores."""
    out = bytearray()
    for _ in range(4000):
        piece = ("▁" if g.r.random() < 0.5 else "") + g.s(g.r.randint(1, 10), string.ascii_lowercase)
        p = piece.encode()
        out += b"\x0a" + bytes([len(p) + 7]) + b"\x0a" + bytes([len(p)]) + p + b"\x15" + bytes(
            g.r.getrandbits(8) for _ in range(4))
    return bytes(out)


def write_clean(out: Path, seed: int = 2, with_artifacts: bool = True) -> list[str]:
    """The clean set: the example runs (as published today) plus the synthetic files above."""
    g = Gen(seed)
    rels = []
    if with_artifacts and ARTIFACTS.is_dir():
        for p in sorted(ARTIFACTS.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                rel = "artifacts/" + p.relative_to(ARTIFACTS).as_posix()
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, out / rel)
                rels.append(rel)
    for rel, data in clean_files(g).items():
        _write(out / rel, data)
        rels.append(rel)
    return sorted(rels)


@dataclass
class Corpus:
    root: Path
    planted: list[Planted]
    clean: list[str]

    @property
    def planted_dir(self) -> Path:
        return self.root / "planted"

    @property
    def clean_dir(self) -> Path:
        return self.root / "clean"


def build_corpus(out: Path, seed: int = 1) -> Corpus:
    """Write ``out/planted`` and ``out/clean``; return what was planted where."""
    planted = write_planted(out / "planted", seed)
    clean = write_clean(out / "clean", seed + 1)
    return Corpus(out, planted, clean)


def big_log(path: Path, mb: int = 50, seed: int = 3) -> int:
    """A realistic training log of about ``mb`` MB (for throughput); returns its size in bytes."""
    g = Gen(seed)
    block = ("\n".join(log_lines(g, 20000)) + "\n").encode()
    n = 0
    with open(path, "wb") as fh:
        while n < mb * 1_000_000:
            fh.write(block)
            n += len(block)
    return n


if __name__ == "__main__":
    import tempfile

    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="secret-corpus-"))
    c = build_corpus(d)
    print(f"{d}: {len(c.planted)} planted files, {len(c.clean)} clean files")
