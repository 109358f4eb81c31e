"""The secret scan that runs before anything leaves the machine.

Research runs carry logs, shell scripts, notebooks, traces and the occasional ``logs.tar.gz``; a pasted
``HF_TOKEN=hf_...`` in ``notes/run.log`` is the classic leak. Every file a publish would upload is read the
way a person reading the published repo would read it, so a key cannot hide behind an encoding:

* gzip / bz2 / xz streams and zip / tar members are decoded and scanned recursively, under hard bounds
  (:class:`Limits`: decompressed bytes per file, members, nesting layers). A bomb, an encrypted member or a
  corrupt archive becomes one ``unscannable file`` hit: the publish stops (fail closed) rather than hang,
  and the author can list the file under ``allow_secrets`` after checking it.
* UTF-16 / UTF-32 text (BOM, or UTF-16/32 told apart by its NUL pattern) is transcoded; stray NUL bytes in
  otherwise textual files (tty captures) are dropped instead of marking the file binary.
* Tensor, array and media formats (.npy, parquet, png, ...) are skipped when their bytes agree with their
  name: the bytes are numbers. Their text is not: a safetensors file's JSON header (``__metadata__``), a torch
  zip's pickles (Hugging Face Trainer's ``training_args.bin`` holds ``hub_token``) and the object graph of a
  legacy pickle are read like ``strings`` (never unpickled), and a text file named ``.bin`` or ``.png`` is
  text. Any other binary file is read like ``strings``: its printable ASCII runs of 12+ bytes are scanned
  (hits are reported by byte offset).
* File names and archive member names are scanned too (:func:`scan_names`): they appear in the card and in
  ``hubkit.json``.

Scanning is streamed in 1 MiB blocks of bytes with an overlap, so a 50 MB JSONL or a 1 MB single-line
``tokenizer.json`` costs a bounded amount of memory. Every vendor pattern starts with a literal (its
boundary check comes after the literal) so the regex engine's fast literal search does the prefiltering;
case-insensitive keywords (``password``, ``WANDB_API_KEY``) are matched on a lowercased copy of the block.

A hit names ``file:line`` (``archive.tar.gz!inner/run.log:3`` inside an archive), the kind of secret and
the value masked (``hf_ab…wxyz``): enough to find it, not enough to leak it again in a CI log. A file the
manifest lists under ``allow_secrets`` is not scanned at all, name included (the author has looked at it:
test fixtures, documentation of the key format).
"""

from __future__ import annotations

import bisect
import bz2
import codecs
import gzip
import io
import itertools
import lzma
import math
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from hubkit.errors import SecretFound
from hubkit.formats.safefiles import starts_like_pickle
from hubkit.run.run import matches

__all__ = [
    "DEFAULT_LIMITS", "LINE_LIMIT", "PATTERNS", "RULES", "UNSCANNABLE", "Limits", "SecretHit",
    "check_generated", "check_secrets", "is_binary", "mask", "scan_bytes", "scan_file", "scan_files", "scan_names", "scan_text",
    "secret_error",
]

LINE_LIMIT = 1 << 20  # text is scanned in blocks of this many bytes (with an overlap), never whole
_OVERLAP = 4096  # a value starting in the last _OVERLAP bytes of a block is settled with the next block
_CONTEXT = 512  # bytes kept before a block for look-behind and context rules (``wandb.login(key=...``)
_SAMPLE = 8192  # bytes read to decide how to decode a file

UNSCANNABLE = "unscannable file"


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SecretHit:
    """One credential-shaped value: where (``path:line``), what kind, and the value masked.

    ``line`` is 0 when there is no line: ``where`` then says what the place is (``file name``, ``binary,
    byte N``, ``not scanned``). The path is masked too when the secret is in a file name.
    """

    path: str
    line: int
    kind: str
    masked: str
    where: str = ""

    def __str__(self) -> str:
        if self.where:
            return f"{self.path} ({self.where}): {self.kind} {self.masked}"
        return f"{self.path}:{self.line}: {self.kind} {self.masked}"


@dataclass(frozen=True)
class Limits:
    """Hard bounds per top-level file, so an archive bomb costs seconds, not the machine.

    ``max_bytes`` counts bytes produced by decompressors (gzip/bz2/xz/zip members; tar adds nothing of its
    own); ``max_members`` counts archive members at every level; ``max_depth`` counts decoding layers
    (``x.tar.gz`` is two: gzip, then tar; a zip inside it is the third).
    """

    max_bytes: int = 256 << 20
    max_members: int = 10_000
    max_depth: int = 4


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------------------------------------- masking

_MASK_PREFIX = re.compile(
    r"(sk-ant-|sk-proj-|sk-svcacct-|sk-admin-|sk-or-v1-|github_pat_|api_org_|[sr]k_(?:live|test)_|glpat-|"
    r"xox[abposre]-|xapp-|gsk_|tgp_v1_|pypi-|https://hooks\.slack\.com/|discord(?:app)?\.com/api/webhooks/)?")


def mask(value: str, generic: bool = False) -> str:
    """``hf_abcdef…wxyz`` → ``hf_ab…wxyz``: the prefix says what it is, the tail lets the owner find it.

    ``generic`` values (passwords, unprefixed keys) have no informative prefix and may be short, so at most
    a quarter of them is shown.
    """
    if value.startswith("-----BEGIN"):
        return value  # the header line is not the secret; the key body under it is never shown
    if generic:
        n = len(value)
        if n < 12:
            return value[:1] + "…"
        k = 2 if n < 24 else 3
        return f"{value[:k]}…{value[-k:]}"
    if len(value) <= 12:
        return value[:3] + "…"
    prefix = _MASK_PREFIX.match(value).group(0)  # type: ignore[union-attr]
    return f"{value[:max(5, len(prefix) + 2)]}…{value[-4:]}"


# ------------------------------------------------------------------------------------ value judgements

_VENDOR_PREFIX = re.compile(
    r"^(hf_|api_org_|sk-ant-|sk-proj-|sk-svcacct-|sk-admin-|sk-or-v1-|sk-|gh[pousr]_|github_pat_|"
    r"A(?:KIA|SIA|BIA|CCA)|[sr]k_(?:live|test)_|AIza|gsk_|r8_|tgp_v1_|xai-|glpat-|npm_|xox[abposre]-|"
    r"xapp-|pypi-|eyJ|SG\.|https://hooks\.slack\.com/\w+/|discord(?:app)?\.com/api/webhooks/\d+/)")
_PLACEHOLDER_WORDS = ("example", "xxxx", "your", "placeholder", "redacted", "dummy", "changeme", "change_me",
                      "insert", "****", "....", "…")


def _placeholder(value: str) -> bool:
    """``hf_xxxxxxxx…``, ``sk-XXXX…``, ``AKIAEXAMPLE…``, ``sk-your-key-here``: documentation shapes.

    A real token body is random: a handful of distinct characters, or a word people write in docs, means
    a placeholder.
    """
    low = value.lower()
    if any(w in low for w in _PLACEHOLDER_WORDS):
        return True
    body = _VENDOR_PREFIX.sub("", value)
    return len(set(body.lower())) < 6


def _entropy(s: str) -> float:
    """Shannon entropy in bits per character: ~4+ for random keys, ~3 for words and identifiers."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


_GENERIC_PLACEHOLDER = re.compile(
    r"(?i)^(?:none|null|nil|true|false|undefined|empty|secret|password|passwd|token|changeme|required|"
    r"optional|string|redacted|hidden|masked|unset)$|example|placeholder|your|xxx|\*\*\*|\.\.\.|…|"
    r"redacted|dummy|changeme|change_me|environ|getenv|getpass|secrets\.|vault|keyring|\$\{|\{\{|%\(|<|>|"
    # a value naming itself (``SomeKindOfPassword1!``) is an example; one ending in ``..`` is cut short
    r"password|passwd|secret|token|api_?key|\.\.$")
_CODE_LIKE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")  # args.token, self.cfg.key
# words, numbers, versions, UUIDs, and snake/CONSTANT/camel/Pascal identifiers (``api_key_from_env2``,
# ``Qwen2_5OmniToken2WavConfig``): code and ids, not keys. A random key almost never splits this way.
_IDENTIFIER = re.compile(r"[A-Za-z_]+|[0-9.eE+-]+|v?\d+(?:\.\d+)+[\w.-]*|[a-z][a-z0-9]*(?:_[a-z0-9]+)+|"
                         r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[a-z]+(?:[A-Z][a-z0-9]+)+|(?:[A-Z][a-z]+[0-9_]*){2,}|"
                         r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PATH_LIKE = re.compile(r"^(?:[/~\\]|\.\.?/|[A-Za-z]:\\)|://|\.(?:txt|json|ya?ml|toml|env|key|pem|cfg|ini)$")


def _generic_value_ok(value: str, password: bool) -> bool:
    """Is an assigned value a credential rather than a variable, a path, a placeholder or a setting?

    Passwords: 8+ chars, not a plain word/identifier, entropy ≥ 2.5. Keys/tokens/secrets: 16+ chars, a
    letter and a digit, entropy ≥ 3.0 (a random 16-char key scores ~3.7, English words ≤ ~3; 12-15 char
    values were mostly example ids in the wild, ``cachedvol112233``).
    """
    if len(value) < 8 or value[0] in "$%@&*" or _GENERIC_PLACEHOLDER.search(value):
        return False
    if _CODE_LIKE.match(value) or _PATH_LIKE.search(value) or len(set(value.lower())) < 5:
        return False
    if _IDENTIFIER.fullmatch(value):
        return False
    if password:
        return _entropy(value) >= 2.5
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return len(value) >= 16 and has_digit and has_alpha and _entropy(value) >= 3.0


_WORD_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_WORD = re.compile(r"[a-z]*(?:passw(?:or)?d|passphrase|pwd|secret|token|credentials?)(?:key)?s?")
_KEY_PAIRS = frozenset({
    "apikey", "accesskey", "privatekey", "authkey", "secretkey", "signingkey", "encryptionkey", "masterkey",
    "accountkey", "clientsecret", "authtoken", "apitoken",
    # ``<service>_key``: research code names keys after the service more often than after "api"
    "openaikey", "anthropickey", "wandbkey", "hfkey", "huggingfacekey", "coherekey", "groqkey", "togetherkey",
    "replicatekey", "mistralkey", "geminikey", "googlekey", "deepseekkey", "openrouterkey", "neptunekey",
    "cometkey", "stripekey", "slackkey", "githubkey", "gitlabkey", "awskey", "azurekey", "xaikey",
})
_STOP_WORDS = frozenset("""
tokenizer tokenizers tokenize tokenized tokens id ids count counts num n max min len length type types file
files filename path paths dir url uri name names size sizes hash sha sha1 sha256 md5 digest revision limit
limits env var field position positions pos index idx prefix suffix pattern fn func kind header expiry expires
ttl usage budget per embedding embeddings emb logits logprob logprobs prob probs loss special pad bos eos unk
sep cls mask vocab first last start end offset offsets total rate ratio timeout format template mode policy
level label labels map mapping list dim hidden str text input output in out generated new prompt completion
sampled selected top attention is has use enable enabled required valid validity chars string width version
cache public config cfg conf class module request next page pagination continuation cursor idempotency
""".split())


def _name_words(name: str) -> list[str]:
    return [w.lower() for w in _WORD_SPLIT.findall(name)]


def _secret_name(words: list[str]) -> bool:
    """``HF_TOKEN``, ``db_password``, ``openaiApiKey``: yes; ``max_new_tokens``, ``pad_token``, ``cache_key``:
    no (a stop word such as ``tokens``, ``pad`` or ``id`` anywhere in the name vetoes it)."""
    if not words or any(w in _STOP_WORDS for w in words):
        return False
    if any(_SECRET_WORD.fullmatch(w) or w in _KEY_PAIRS for w in words):
        return True
    return any(a + b in _KEY_PAIRS for a, b in itertools.pairwise(words))


# ------------------------------------------------------------------------------------------------ rules

_Check = Callable[[bytes, bytes, "re.Match[bytes]", int, int], "str | None"]  # -> masked text, None = reject


def _lit(prefix: str, body: str, boundary: str = "A-Za-z0-9", width: int = 0) -> re.Pattern[bytes]:
    """``prefix`` + ``body`` with the word-boundary test *after* the literal, so the regex engine can use
    its fast literal search; an escaped ``\\n``/``\\t`` (JSON strings, notebooks) counts as a boundary, and so
    does ``_`` (``backup_hf_...`` in a file name; the random body keeps identifiers out), and so does a terminal
    colour code (``ESC[1m`` before a token in a coloured log: its ``m`` is a letter).
    ``width`` is the prefix length when it is not a plain literal with ``[...]`` classes."""
    width = width or len(re.sub(r"\[[^]]*\]|\\.", ".", prefix))
    dots = "." * width
    ansi = "".join(rf"|(?<=\x1b\[[0-9;]{{{k}}}m{dots})" for k in range(16))  # fixed-width lookbehinds
    look = rf"(?:(?<![{boundary}]{dots})|(?<=\\[ntr]{dots}){ansi})"
    return re.compile((prefix + look + body).encode())


def _vendor(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    value = buf[s:e].decode("ascii", "replace")
    return None if _placeholder(value) else mask(value)


def _pem(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    """The header is reported unless what follows is a stand-in (``<your key>``, ``...``, ``${KEY}``)."""
    after = buf[e:e + 40].lstrip(b" \t\r\n\\nr\",")
    if after[:1] in (b"<", b"{", b"$", b".", b"\xe2") or after[:4].lower() in (b"your", b"xxxx", b"key "):
        return None
    return buf[s:e].decode("ascii", "replace")


def _wandb_near(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    """A 40-hex ``api_key`` is a W&B key only when ``wandb`` is written nearby (else: generic rules)."""
    if b"wandb" not in low[max(0, s - 300):e + 300]:
        return None
    return _vendor(buf, low, m, s, e)


def _url_creds(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    user = m.group("user").decode("ascii", "replace")
    pw = buf[s:e].decode("ascii", "replace")
    host = m.group("host").decode("ascii", "replace")
    if pw == user or pw.lower() in ("x-oauth-basic", "pass", "password", "passwd", "secret"):
        return None
    if pw[0] in "$%{<*" or _GENERIC_PLACEHOLDER.search(pw) or len(set(pw)) < 3:
        return None
    return f"{user}:{mask(pw, generic=True)}@{host}"


def _password_file(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    value = buf[s:e].decode("ascii", "replace")
    if _GENERIC_PLACEHOLDER.search(value) or len(set(value)) < 4:
        return None
    return mask(value, generic=True)


def _bearer(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
    value = buf[s:e].decode("ascii", "replace")
    if _GENERIC_PLACEHOLDER.search(value) or _entropy(value) < 3.0:
        return None
    return mask(value, generic=True)


@dataclass(frozen=True)
class _Rule:
    """One credential shape; ``lower`` rules run on the lowercased block (values come from the original)."""

    kind: str
    regex: re.Pattern[bytes]
    group: int | str = 0
    lower: bool = False
    check: _Check = _vendor


_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def _assignment(password: bool) -> _Check:
    """A ``name = value`` check: the name must say secret (:func:`_secret_name`), the value look random."""

    def check(buf: bytes, low: bytes, m: re.Match[bytes], s: int, e: int) -> str | None:
        left = m.start("kw")
        stop = max(0, left - 64)
        while left > stop and buf[left - 1] in _NAME_BYTES:
            left -= 1
        name = buf[left:m.end("suffix")].decode("ascii", "replace")
        words = _name_words(name)
        if not _secret_name(words):
            return None
        nxt = buf[e:e + 1]
        if nxt in (b"(", b"[", b"{"):
            return None  # a call or subscript: ``token=get_token()``, ``key=os.environ["X"]``
        value = buf[s:e].decode("utf-8", "replace")
        if value.endswith(("..", "…")):
            return None  # truncated on purpose: ``eyJhbGciOi...``
        value = value.rstrip(".")
        if not _generic_value_ok(value, password):
            return None
        return mask(value, generic=True)

    return check


_Q = rb"\\?[\"']"  # a quote, or an escaped one (code inside a JSON string: notebooks, JSONL)
_SEP = rb"(?P<sep>(?:" + _Q + rb")?\]?[ \t]{0,3}(?::=|=>|=|:)[ \t]{0,3}(?:[rbuf]?" + _Q + rb")?)"
_VALUE = rb"(?P<v>[^\s\"'`,;(){}\[\]<>\\]{8,256})"


def _kw(word: str) -> re.Pattern[bytes]:
    """``<name with word> = value`` (also ``:``, ``:=``, ``=>``, quoted, JSON); the name is judged later."""
    return re.compile(b"(?P<kw>" + word.encode() + rb")(?P<suffix>[a-z0-9_.-]{0,30})" + _SEP + _VALUE)


def _flag(words: str) -> re.Pattern[bytes]:
    """``--hf-token VALUE``: a command-line flag whose value follows a space."""
    return re.compile(rb"--(?P<kw>[a-z0-9_-]{0,30}?(?:" + words.encode() + rb"))(?P<suffix>[a-z0-9_-]{0,30})"
                      rb"(?P<sep>[ \t]+)(?:" + _Q + rb")?" + _VALUE)


_EQ = rb"(?:" + _Q + rb")?\]?[ \t]*[:=][ \t]*[rbuf]?(?:" + _Q + rb")?"  # ``=``, ``: "``, ``\\": \\"``
_HEX40 = rb"((?:local-)?[0-9a-f]{40})(?![0-9a-z])"
_WS = rb"(?:[ \t\r\n\",]|\\[ntr])+"  # whitespace, its JSON escape, or a notebook's ``\n",  "`` line split

_DASH = "A-Za-z0-9-"  # boundary class for prefixes that may follow a dash (``sk-``, ``AIza``)
GENERIC_KIND = "generic secret assignment"
PASSWORD_KIND = "password assignment"
WANDB = "Weights & Biases API key"

# Ordered so that the more specific shape wins on the same text (an Anthropic ``sk-ant-`` key must not also
# be reported as an OpenAI ``sk-`` key; ``HF_TOKEN=hf_...`` is a Hugging Face token, not a generic one).
RULES: list[_Rule] = [
    _Rule("private key block", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
          check=_pem),
    _Rule("Hugging Face token", _lit("hf_", r"[A-Za-z0-9]{30,}(?![A-Za-z0-9])")),
    _Rule("Hugging Face token", _lit("api_org_", r"[A-Za-z0-9]{30,}(?![A-Za-z0-9])")),
    _Rule("Anthropic API key", _lit("sk-ant-", r"[A-Za-z0-9_-]{20,}", _DASH)),
    _Rule("OpenRouter API key", _lit("sk-or-v1-", r"[0-9a-f]{64}(?![A-Za-z0-9])", _DASH)),
    _Rule("OpenAI API key", _lit("sk-", r"(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", _DASH)),
    _Rule("AWS access key id", _lit("A(?:KIA|SIA|BIA|CCA)", r"[A-Z0-9]{16}(?![A-Z0-9])", "A-Z0-9", 4)),
    _Rule("AWS secret access key", re.compile(
        rb"aws_?secret_?(?:access_?)?key(?:\\?[\"'])?[ \t]*[:=][ \t]*(?:\\?[\"'])?([a-z0-9/+=]{40})"
        rb"(?![a-z0-9/+=])"),
        group=1, lower=True),
    _Rule("GitHub token", _lit("gh[pousr]_", r"[A-Za-z0-9]{36,}(?![A-Za-z0-9])")),
    _Rule("GitHub token", _lit("github_pat_", r"[A-Za-z0-9_]{22,}")),
    _Rule("GitLab token", _lit("glpat-", r"[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", _DASH)),
    _Rule("Slack token", _lit("xox[abposre]-", r"[0-9A-Za-z-]{15,}(?![A-Za-z0-9-])", _DASH)),
    _Rule("Slack token", _lit("xapp-", r"\d-[A-Z0-9]+-\d+-[a-z0-9]{20,}", _DASH)),
    _Rule("Slack webhook URL", re.compile(
        rb"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]{20,}")),
    _Rule("Stripe API key", _lit("sk_(?:live|test)_", r"[0-9A-Za-z]{16,}(?![A-Za-z0-9])", width=8)),
    _Rule("Stripe API key", _lit("rk_(?:live|test)_", r"[0-9A-Za-z]{16,}(?![A-Za-z0-9])", width=8)),
    _Rule("Google API key", _lit("AIza", r"[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])", _DASH)),
    _Rule("Groq API key", _lit("gsk_", r"[A-Za-z0-9]{48,}(?![A-Za-z0-9])")),
    _Rule("Replicate API token", _lit("r8_", r"[A-Za-z0-9]{37}(?![A-Za-z0-9])")),
    _Rule("Together API key", _lit("tgp_v1_", r"[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])")),
    _Rule("xAI API key", _lit("xai-", r"[A-Za-z0-9]{70,}(?![A-Za-z0-9])", _DASH)),
    _Rule("PyPI token", _lit("pypi-AgEIcHlwaS5vcmc", r"[A-Za-z0-9_-]{50,}", _DASH)),
    _Rule("npm token", _lit("npm_", r"[A-Za-z0-9]{36}(?![A-Za-z0-9])")),
    _Rule("SendGrid API key", _lit(r"SG\.", r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", _DASH,
                                   3)),
    # ``<8-10 digit bot id>:AA<33>``: the part after the colon is the secret (and what is shown masked)
    _Rule("Telegram bot token", re.compile(
        rb":(AA(?<=[0-9]{8}:AA)(?<![0-9]{11}:AA)[A-Za-z0-9_-]{33})(?![A-Za-z0-9_-])"), 1),
    _Rule("Discord webhook URL", re.compile(
        rb"discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_-]{60,}")),
    _Rule("JSON web token", _lit("eyJ", r"[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
                                 _DASH)),
    # W&B keys are 40 lowercase hex, exactly a git sha: only in context.
    _Rule(WANDB, re.compile(rb"wandb_api_key" + _EQ + _HEX40), 1, True),
    _Rule(WANDB, re.compile(rb"wandb[ \t]+login\b[^\n]{0,120}?(?<![0-9a-z-])" + _HEX40), 1, True),
    _Rule(WANDB, re.compile(rb"wandb\.login\([^)\n]{0,200}?key[ \t]*=[ \t]*[rbuf]?" + _Q + _HEX40), 1, True),
    _Rule(WANDB, re.compile(
        rb"machine" + _WS + rb"api\.wandb\.ai(?:" + _WS + rb"(?:login|account)" + _WS + rb"\S+)*" + _WS
        + rb"password" + _WS + _HEX40), 1, True),
    _Rule(WANDB, re.compile(rb"api_?key" + _EQ + _HEX40), 1, True, _wandb_near),
    _Rule("password in .netrc", re.compile(
        rb"machine" + _WS + rb"\S+(?:" + _WS + rb"(?:login|account)" + _WS + rb"\S+)*" + _WS + rb"password"
        + _WS + rb"(\S{4,})"), 1, True, _password_file),
    _Rule("bearer token", re.compile(rb"bearer[ \t]+([a-z0-9._~+/=-]{16,})"), 1, True, _bearer),
    _Rule("credentials in URL", re.compile(
        rb"://(?<=[A-Za-z0-9+.-]://)(?P<user>[^\s:/@\"'<>]{0,64}):(?P<pw>[^\s:/@\"'<>]{1,128})@"
        rb"(?P<host>[A-Za-z0-9.\[\]-]+)"), "pw", False, _url_creds),
    *(_Rule(PASSWORD_KIND, _kw(w), "v", True, _assignment(True)) for w in ("passw", "passphrase", "pwd")),
    *(_Rule(GENERIC_KIND, _kw(w), "v", True, _assignment(False))
      for w in ("secret", "token(?!i[sz])", "key", "credential")),
    _Rule(PASSWORD_KIND, _flag("passw|passphrase|pwd"), "v", True, _assignment(True)),
    _Rule(GENERIC_KIND, _flag("secret|token|key|credential"), "v", True, _assignment(False)),
]

# The old public shape: (kind, pattern) pairs, kept for callers that list what is detected.
PATTERNS: list[tuple[str, re.Pattern[bytes]]] = [(r.kind, r.regex) for r in RULES]


@dataclass(frozen=True)
class _Found:
    start: int
    end: int
    kind: str
    masked: str


def _find(buf: bytes, start: int, stop: int) -> list[_Found]:
    """Every accepted value starting in ``buf[start:stop]``, earlier rules winning overlaps, by position."""
    low = buf.lower()
    taken: list[tuple[int, int]] = []
    out: list[_Found] = []
    for rule in RULES:
        for m in rule.regex.finditer(low if rule.lower else buf):
            s, e = m.span(rule.group)
            if not start <= s < stop or any(ts < e and s < te for ts, te in taken):
                continue
            masked = rule.check(buf, low, m, s, e)
            if masked is None:
                continue
            taken.append((s, e))
            out.append(_Found(s, e, rule.kind, masked))
    out.sort(key=lambda f: f.start)
    return out


def _scan_blocks(blocks: Iterable[bytes], display: str, first_line: int = 1,
                 hits: list[SecretHit] | None = None) -> list[SecretHit]:
    """Scan a stream of byte blocks as one text, appending to ``hits``; memory is one block plus the overlap.

    A value is settled by the first block in which it starts before the overlap zone, so a value cut by a
    block boundary is seen whole in the next block and never reported twice. If reading the stream fails
    (a bound, a truncated archive), what was read is scanned first and its hits are already in ``hits``.
    """
    hits = [] if hits is None else hits
    ctx = pending = b""
    line = first_line  # line number of buf[0]
    it = iter(blocks)
    chunk = next(it, None)
    while chunk is not None:
        failed: Exception | None = None
        try:
            nxt = next(it, None)
        except Exception as e:  # a bound or a truncated stream: scan what was read, then let it through
            nxt, failed = None, e
        buf = ctx + pending + chunk
        start = len(ctx)
        stop = len(buf) if nxt is None else len(buf) - _OVERLAP
        if stop <= start:
            pending, chunk = buf[start:], nxt
            continue
        counted, at = 0, line
        for f in _find(buf, start, stop):
            at += buf.count(b"\n", counted, f.start)
            counted = f.start
            hits.append(SecretHit(display, at, f.kind, f.masked))
        cut = max(0, stop - _CONTEXT)
        line += buf.count(b"\n", 0, cut)
        ctx, pending, chunk = buf[cut:stop], buf[stop:], nxt
        if failed is not None:
            raise failed
    return hits


def _dedupe(hits: Iterable[SecretHit]) -> list[SecretHit]:
    """One hit per value and place (a key repeated on one line is one finding)."""
    return list(dict.fromkeys(hits))


# ---------------------------------------------------------------------------------------- text and names


def scan_text(text: str, path: str = "<text>", first_line: int = 1) -> list[SecretHit]:
    """Every credential-shaped value in ``text`` (pure: no file access), one hit per value and line."""
    data = text.encode("utf-8", "replace")
    return _dedupe(_scan_blocks(_split(data), path, first_line))


def _split(data: bytes) -> Iterator[bytes]:
    for i in range(0, max(len(data), 1), LINE_LIMIT):
        yield data[i:i + LINE_LIMIT]


def _mask_name(name: str) -> tuple[str, list[_Found]]:
    data = name.encode("utf-8", "surrogateescape")
    found = _find(data, 0, len(data))
    out = data
    for f in reversed(found):
        out = out[:f.start] + f.masked.encode() + out[f.end:]
    return out.decode("utf-8", "replace"), found


def mask_secrets(text: str) -> str:
    """``text`` with every secret the scan recognizes masked (``hf_ab…wxyz``): for error messages, which
    quote the offending value and end up in CI logs."""
    return _mask_name(text)[0]


def scan_names(paths: Iterable[str]) -> list[SecretHit]:
    """Credentials in file names or paths (they are published in the card and ``hubkit.json``).

    A hit has line 0, ``where="file name"`` and the path itself masked.
    """
    hits: list[SecretHit] = []
    for p in paths:
        shown, found = _mask_name(p)
        hits.extend(SecretHit(shown, 0, f.kind, f.masked, "file name") for f in found)
    return _dedupe(hits)


# -------------------------------------------------------------------------------------------- decoding


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Refused(Exception):
    """A bound was hit: the rest of the top-level file is not scanned, and that is one hit."""

    def __init__(self, display: str, reason: str):
        super().__init__(reason)
        self.display, self.reason = display, reason


class _Budget:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.bytes = self.members = 0

    def take(self, n: int, display: str) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes:
            raise _Refused(display, f"decompresses to more than {self.limits.max_bytes >> 20} MB")

    def member(self, display: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise _Refused(display, f"more than {self.limits.max_members} archive members")


class _Counted:
    """Charges every byte a decompressor produces to the budget, and refuses past it."""

    def __init__(self, raw: _Reader, budget: _Budget, display: str):
        self.raw, self.budget, self.display = raw, budget, display

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(LINE_LIMIT), b""))
        data = self.raw.read(n)
        self.budget.take(len(data), self.display)
        return data


class _Head:
    """The first ``limit`` bytes of a stream."""

    def __init__(self, raw: _Reader, limit: int):
        self.raw, self.left = raw, limit

    def read(self, n: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        data = self.raw.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


class _Prefixed:
    """The sample already read, then the rest of the stream (sniffing without seeking)."""

    def __init__(self, head: bytes, raw: _Reader):
        self.head, self.raw = head, raw

    def read(self, n: int = -1, /) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.raw.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.raw.read(n)


def _read_upto(r: _Reader, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = r.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _blocks(r: _Reader) -> Iterator[bytes]:
    while data := r.read(LINE_LIMIT):
        yield data


def _no_nul(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Stray NULs (tty captures, padded logs) are not text: dropped, so ``hf_ab\\0cd`` reads ``hf_abcd``."""
    for b in blocks:
        yield b.replace(b"\0", b"") if b"\0" in b else b


def _transcode(blocks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    dec = codecs.getincrementaldecoder(encoding)(errors="replace")
    for b in blocks:
        yield dec.decode(b).encode("utf-8", "replace").replace(b"\0", b"")
    yield dec.decode(b"", final=True).encode("utf-8", "replace")


STRINGS_MIN = 12  # shortest printable run read from an unknown binary (``pwd=Abc123!x`` is 12)
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t"
# Runs are found on a translated copy (printable → "x", else "\n") with a literal-prefix regex: sre's fast
# literal search makes this ~800 MB/s on zeros and ~170 MB/s on random bytes, vs 40-60 MB/s for a charset.
_RUN_TABLE = bytes(0x78 if b in _PRINTABLE else 0x0A for b in range(256))
_RUN = re.compile(b"x" * STRINGS_MIN + b"+")


def _scan_strings(r: _Reader, display: str, hits: list[SecretHit]) -> list[SecretHit]:
    """Like ``strings``: only the printable ASCII runs of an unknown binary are scanned, joined by line
    breaks (a block of zeros or random bytes costs one regex pass, not one per rule); hits give the byte
    offset. A run still open at the end of a block is carried into the next one (up to a block long)."""
    pos, carry = 0, b""
    while True:
        data = r.read(LINE_LIMIT)
        buf = carry + data
        k = len(buf.rstrip(_PRINTABLE)) if data else len(buf)
        if len(buf) - k >= LINE_LIMIT:
            k = len(buf)
        runs = [(m.start(), buf[m.start():m.end()]) for m in _RUN.finditer(buf.translate(_RUN_TABLE), 0, k)]
        if runs:
            compact = b"\n".join(run for _, run in runs)
            starts, at = [], 0
            for _, run in runs:
                starts.append(at)
                at += len(run) + 1
            for f in _find(compact, 0, len(compact)):
                i = bisect.bisect_right(starts, f.start) - 1
                offset = pos + runs[i][0] + f.start - starts[i]
                hits.append(SecretHit(display, 0, f.kind, f.masked, f"binary, byte {offset}"))
        carry, pos = buf[k:], pos + k
        if not data:
            return hits


_TEXTY = bytes(range(0x20, 0x7F)) + b"\t\n\r\x0c\x08\x1b" + bytes(range(0x80, 0x100))
# Formats whose bytes are numbers or pixels: nothing a person reads, so not scanned (by name or by magic).
SKIP_SUFFIXES = frozenset("""
.safetensors .pt .pth .bin .ckpt .npy .npz .gguf .ggml .onnx .h5 .hdf5 .parquet .arrow .feather .tfrecord
.png .jpg .jpeg .gif .webp .bmp .tif .tiff .ico .mp3 .mp4 .wav .flac .ogg .webm .avi .mov .pb .tflite .msgpack
.woff .woff2 .ttf .otf
""".split())
_SKIP_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"\x93NUMPY", b"PAR1", b"GGUF", b"RIFF", b"ARROW1",
               b"\x89HDF", b"\x00\x00\x00\x1cftyp", b"\x00\x00\x00\x18ftyp", b"\x00\x00\x00\x20ftyp", b"wOFF")
_CONTAINERS = ("gzip", "bz2", "xz", "zip", "tar")
# What a truncated, corrupt or unsupported container raises (a bound hit raises _Refused instead).
_BROKEN = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError,
           NotImplementedError)


#: names torch.save writes (a zip of pickles and storages since torch 1.6, a bare pickle before)
_TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt"})
#: the leading object graph of a legacy (non-zip) pickle that is scanned: the storages follow it
PICKLE_HEAD = 64 << 20
#: a safetensors JSON header longer than this is not one
MAX_SAFETENSORS_HEADER = 100 << 20


def _is_safetensors(sample: bytes) -> bool:
    """A u64 header length, then a JSON object."""
    return (len(sample) > 10 and sample[8:10] in (b'{"', b"{}")
            and int.from_bytes(sample[:8], "little") < MAX_SAFETENSORS_HEADER)


def _suffix(name: str) -> str:
    base = name.rsplit("/", 1)[-1].rsplit("!", 1)[-1]
    return "." + base.rsplit(".", 1)[-1].lower() if "." in base else ""


def _sniff(sample: bytes, name: str) -> str:
    """How a person would read these bytes: a container, an encoding of text, ``skip`` or ``strings``.

    A tensor or media name is believed only when the bytes agree: a safetensors file gives its JSON header
    (``__metadata__`` is free text), a torch zip its pickles (``training_args.bin`` holds ``hub_token``), a
    legacy pickle its leading object graph; a text file named ``.bin`` or ``.png`` is read as text."""
    suffix = _suffix(name)
    if suffix in SKIP_SUFFIXES:
        if _is_safetensors(sample):
            return "safetensors"
        if suffix in _TORCH_SUFFIXES and sample.startswith(b"PK\x03\x04"):
            return "torch-zip"
        if suffix in _TORCH_SUFFIXES and starts_like_pickle(sample):
            return "pickle"
        if sample.startswith((*_SKIP_MAGIC, b"PK\x03\x04", b"PK\x05\x06")) or not sample:
            return "skip"
        kind = _sniff(sample, "")  # what the bytes say without the name
        return kind if kind == "text" or kind.startswith("utf-") else "skip"  # raw numbers (x.tofile) stay unread
    if sample.startswith(b"\x1f\x8b"):
        return "gzip"
    if re.match(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", sample):
        return "bz2"
    if sample.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if sample.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if sample[257:262] == b"ustar":
        return "tar"
    if sample.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if sample.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if _is_safetensors(sample):
        return "safetensors"
    if sample.startswith(_SKIP_MAGIC):
        return "skip"
    if b"\0" not in sample:
        return "text"
    n = len(sample)

    def zeros(lane: int, step: int) -> float:
        part = sample[lane::step]
        return part.count(0) / max(len(part), 1)

    def texty(lane: int, step: int) -> bool:  # the non-NUL lane of ASCII-range UTF-16/32 is readable text
        part = sample[lane::step]
        return len(part.translate(None, _TEXTY)) <= len(part) // 20

    if n >= 16:
        if all(zeros(k, 4) > 0.9 for k in (1, 2, 3)) and zeros(0, 4) < 0.1 and texty(0, 4):
            return "utf-32-le"
        if all(zeros(k, 4) > 0.9 for k in (0, 1, 2)) and zeros(3, 4) < 0.1 and texty(3, 4):
            return "utf-32-be"
        if zeros(1, 2) > 0.6 and zeros(0, 2) < 0.05 and texty(0, 2):
            return "utf-16-le"
        if zeros(0, 2) > 0.6 and zeros(1, 2) < 0.05 and texty(1, 2):
            return "utf-16-be"
    rest = sample.replace(b"\0", b"")
    nul = n - len(rest)
    odd = len(rest.translate(None, _TEXTY))
    if nul < n // 2 and odd <= len(rest) // 20:
        return "text"  # text with stray NULs
    return "strings"


def _zip_entries(f: BinaryIO) -> int:
    """The entry count a zip declares in its end record, read before ``zipfile`` parses (and holds in
    memory) the whole central directory: a million-entry zip is refused without building a million objects.
    """
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - 65_557))  # the end record (22 bytes) plus the longest comment
    tail = f.read()
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) < i + 12:
        return 0  # let zipfile report what is wrong
    count = int.from_bytes(tail[i + 10:i + 12], "little")
    j = tail.rfind(b"PK\x06\x06", 0, i)  # zip64 end record: 8-byte count at offset 32
    if count == 0xFFFF and j >= 0 and len(tail) >= j + 40:
        count = int.from_bytes(tail[j + 32:j + 40], "little")
    f.seek(0)
    return count


def _inner_name(name: str) -> str:
    """``run.log.gz`` → ``run.log``, ``x.tgz`` → ``x.tar``: the name that says what the stream holds."""
    for ext, repl in ((".tgz", ".tar"), (".tbz2", ".tar"), (".txz", ".tar"), (".gz", ""), (".bz2", ""),
                      (".xz", "")):
        if name.lower().endswith(ext):
            return name[:-len(ext)] + repl
    return name


class _Scan:
    """One top-level file: the budget shared by every layer, and the hits found so far."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.budget = _Budget(limits)
        self.hits: list[SecretHit] = []

    def unscannable(self, display: str, reason: str) -> None:
        self.hits.append(SecretHit(display, 0, UNSCANNABLE, reason, "not scanned"))

    def stream(self, r: _Reader, display: str, name: str, depth: int,
               seekable: BinaryIO | None = None) -> None:
        """Decode one stream (a file, a decompressed stream, an archive member) and scan what it holds."""
        sample = _read_upto(r, _SAMPLE)
        kind = _sniff(sample, name)
        if kind == "skip":
            return
        if kind in _CONTAINERS and depth >= self.limits.max_depth:
            self.unscannable(display, f"nested more than {self.limits.max_depth} layers deep")
            return
        if seekable is not None:
            seekable.seek(0)
            src: _Reader = seekable
        else:
            src = _Prefixed(sample, r)
        try:
            if kind in ("gzip", "bz2", "xz"):
                inner: _Reader
                if kind == "gzip":
                    inner = gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[arg-type]
                else:
                    inner = (bz2.BZ2File if kind == "bz2" else lzma.LZMAFile)(src)  # type: ignore[arg-type]
                base = _inner_name(name)
                self.stream(_Counted(inner, self.budget, display), display, base, depth + 1)
            elif kind == "zip":
                self._zip(src, display, depth, seekable)
            elif kind == "tar":
                self._tar(src, display, depth)
            elif kind == "strings":
                _scan_strings(src, display, self.hits)
            elif kind == "safetensors":  # only the header: metadata and tensor names, never the numbers
                header = _read_upto(src, 8 + int.from_bytes(sample[:8], "little"))[8:]
                _scan_blocks(_no_nul([header]), f"{display} (safetensors header)", hits=self.hits)
            elif kind == "pickle":  # never unpickled: its strings, up to where the storages start
                _scan_strings(_Head(src, PICKLE_HEAD), f"{display} (pickle)", self.hits)
            elif kind == "torch-zip":
                self._zip(src, display, depth, seekable, only=(".pkl",))
            elif kind == "text":
                _scan_blocks(_no_nul(_blocks(src)), display, hits=self.hits)
            else:
                _scan_blocks(_transcode(_blocks(src), kind), display, hits=self.hits)
        except _BROKEN as e:
            self.unscannable(display, f"corrupt or unsupported {kind} ({type(e).__name__}: {str(e)[:80]})")

    def _member(self, display: str, member: str) -> tuple[str, str]:
        """The display path of a member (its name masked if it holds a secret, which is also a hit)."""
        self.budget.member(display)
        shown, found = _mask_name(member)
        full = f"{display}!{shown}"
        self.hits.extend(SecretHit(full, 0, f.kind, f.masked, "file name") for f in found)
        return full, member

    def _zip(self, src: _Reader, display: str, depth: int, seekable: BinaryIO | None,
             only: tuple[str, ...] = ()) -> None:
        if seekable is not None:
            self._zip_members(seekable, display, depth, only)
            return
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:  # zip needs random access
            got = 0
            while data := src.read(LINE_LIMIT):
                got += len(data)
                if got > self.limits.max_bytes:
                    raise _Refused(display, f"nested zip larger than {self.limits.max_bytes >> 20} MB")
                spool.write(data)
            self._zip_members(spool, display, depth, only)  # type: ignore[arg-type]

    def _zip_members(self, seekable: BinaryIO, display: str, depth: int, only: tuple[str, ...] = ()) -> None:
        """Every member (``only``: those whose names end so, e.g. a torch zip's pickles, not its storages)."""
        declared = _zip_entries(seekable)
        if declared > self.limits.max_members - self.budget.members:
            raise _Refused(display, f"{declared} archive members declared (limit {self.limits.max_members})")
        with zipfile.ZipFile(seekable) as z:
            for info in z.infolist():
                full, member = self._member(display, info.filename)
                if info.is_dir() or (only and not member.endswith(only)):
                    continue  # a member with a tensor or media name is sniffed like a file: its bytes decide
                if info.flag_bits & 0x1:
                    self.unscannable(full, "encrypted zip member")
                    continue
                try:
                    with z.open(info) as fh:
                        self.stream(_Counted(fh, self.budget, full), full, member, depth + 1)
                except (*_BROKEN, RuntimeError) as e:
                    self.unscannable(full, f"corrupt or unsupported zip member ({type(e).__name__})")

    def _tar(self, src: _Reader, display: str, depth: int) -> None:
        with tarfile.open(fileobj=src, mode="r|") as tf:  # type: ignore[call-overload]
            for info in tf:
                full, member = self._member(display, info.name)
                if not info.isfile():
                    continue
                fh = tf.extractfile(info)
                if fh is not None:
                    self.stream(fh, full, member, depth + 1)


# ---------------------------------------------------------------------------------------------- files


def scan_bytes(data: bytes, display: str = "<bytes>", limits: Limits = DEFAULT_LIMITS) -> list[SecretHit]:
    """Scan an in-memory file exactly as :func:`scan_file` scans one on disk (archives, encodings, ...)."""
    scan = _Scan(limits)
    buf = io.BytesIO(data)
    try:
        scan.stream(buf, display, display, 0, seekable=buf)
    except _Refused as r:
        scan.unscannable(r.display, r.reason)
    return _dedupe(scan.hits)


def scan_file(path: Path, display: str | None = None, limits: Limits = DEFAULT_LIMITS) -> list[SecretHit]:
    """Scan one file as a person would read it; tensor/media files give no hits.

    Memory is bounded by ``LINE_LIMIT`` (plus a 16 MB spool for a zip nested in another archive), time by
    ``limits``; hitting a limit is one ``unscannable file`` hit.
    """
    display = display or str(path)
    scan = _Scan(limits)
    with open(path, "rb") as fh:
        try:
            scan.stream(fh, display, str(path), 0, seekable=fh)
        except _Refused as r:
            scan.unscannable(r.display, r.reason)
    return _dedupe(scan.hits)


def is_binary(path: Path) -> bool:
    """True when the file is not read as text (a tensor/media format, an archive, or unknown binary)."""
    with open(path, "rb") as fh:
        return _sniff(fh.read(_SAMPLE), str(path)) in ("skip", "strings", "safetensors", "pickle", "torch-zip",
                                                       *_CONTAINERS)


def scan_files(root: Path, paths: Iterable[str], allow: Iterable[str] = (),
               limits: Limits = DEFAULT_LIMITS) -> list[SecretHit]:
    """Scan ``root/<path>`` (name and content) for each path (POSIX, relative) unless ``allow`` matches it."""
    allow = list(allow)
    hits: list[SecretHit] = []
    for rel in paths:
        if allow and matches(rel, allow):
            continue
        shown, found = _mask_name(rel)
        hits.extend(SecretHit(shown, 0, f.kind, f.masked, "file name") for f in found)
        hits.extend(scan_file(root / rel, shown, limits))
    return hits


def check_secrets(root: Path, paths: Iterable[str], allow: Iterable[str] = (),
                  limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise :class:`SecretFound` naming every hit (the first three in the message) when any file leaks."""
    hits = scan_files(root, paths, allow, limits)
    if hits:
        raise secret_error(hits)


def check_generated(files: Iterable[tuple[str, bytes]], allow: Iterable[str] = ()) -> None:
    """The files a publish writes itself (the card, hubkit.json, canonical vectors, plots, dataset Parquet):
    they quote the run (summary, sections, file names, prompts), so they are scanned as they will be uploaded.
    A hit in the card is reported once for the card: the file it came from is named by the run's own scan."""
    allow = list(allow)
    hits: list[SecretHit] = []
    for path, data in files:
        shown, found = _mask_name(path)
        hits.extend(SecretHit(shown, 0, f.kind, f.masked, "file name") for f in found)
        if not (allow and matches(path, allow)):
            hits.extend(scan_bytes(data, shown))
    if hits:
        raise secret_error(hits)


def secret_error(hits: list[SecretHit]) -> SecretFound:
    """The one-line error: the first three hits, how many more, and what to do (``.hits`` holds them all)."""
    shown = "; ".join(str(h) for h in hits[:3])
    more = f" (and {len(hits) - 3} more)" if len(hits) > 3 else ""
    if all(h.kind == UNSCANNABLE for h in hits):
        todo = ("a file that cannot be read within the scan limits cannot be vouched for: check it by hand "
                "and list it under allow_secrets in hubkit.yaml, or leave it out")
    else:
        todo = ("remove the secret (and revoke it), or list the file under allow_secrets in hubkit.yaml if "
                "it is not a real credential")
    err = SecretFound(f"{shown}{more} — nothing was uploaded; {todo}")
    err.hits = hits  # type: ignore[attr-defined]
    return err
