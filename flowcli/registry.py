"""Pretrained weights: the registry (`flowcli/weights.json`), the download cache and `resolve(spec)`.

A checkpoint spec is one of:
  a local file path            returned as is (it must exist)
  a registry name              e.g. `flowcli-pwc-synth`: its first (primary) file; see `flowcli weights list`
  bundled:REL/PATH             a file shipped inside the flowcli package folder
  hf://OWNER/REPO/FILE[@REV]   a file in a Hugging Face Hub repo (REV defaults to `main`)
  https://HOST/PATH            any other URL, fetched by flowcli's own downloader

Registry files with a recorded sha256 (and size) are verified every time they are resolved; a cached copy
that fails the check is deleted and fetched again once. "TBD" / 0 mean "not recorded yet" (unverified).

A file record may also name a `member` of a zip archive (e.g. a model file inside a published wheel): the
archive at `source` is downloaded once into the URL cache, checked against `archive_sha256`/`archive_size`,
and the member is extracted next to the other model files and checked against the record's own sha256.

Environment (read at call time):
  FLOWCLI_REGISTRY        an alternative registry JSON file (same format), e.g. a private model zoo or tests
  FLOWCLI_CACHE           download cache for URL sources (default $XDG_CACHE_HOME/flowcli, ~/.cache/flowcli)
  FLOWCLI_OFFLINE=1       never touch the network, only the caches (HF_HUB_OFFLINE=1 does the same)
  HF_ENDPOINT, HF_HOME, HF_HUB_CACHE   honoured for hf:// sources, which live in the Hugging Face cache

Plain http:// is refused except for loopback hosts (a local mirror, tests): weights are code-adjacent,
so they come over https:// (or from the Hub) and are checked against the registry's sha256.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from flowcli.console import progress, warn
from flowcli.errors import WeightsError

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_FILE = PACKAGE_DIR / "weights.json"
UNKNOWN_SHA256 = "TBD"

SOURCE_PREFIXES = ("bundled:", "hf://", "https://", "http://")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DOWNLOAD_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.5  # multiplied by the attempt number
TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20
USER_AGENT = "flowcli (+https://pypi.org/project/flowcli)"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")  # with fullmatch: "$" let a trailing newline through
_TRUE = {"1", "true", "yes", "on"}
_CHECKPOINT_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}

# verify() statuses
OK = "ok"
UNVERIFIED = "unverified"  # no sha256 to check against (TBD in the registry, and not the Hub's either)
NOT_DOWNLOADED = "not downloaded"  # remote file not in the cache yet
MISSING = "missing"  # bundled file absent from this installation
CORRUPT = "corrupt"  # local copy has the wrong size or sha256


# --- registry ----------------------------------------------------------------------------------


def registry_path() -> Path:
    """The registry in use: $FLOWCLI_REGISTRY if set, else the one packaged with flowcli."""
    override = os.environ.get("FLOWCLI_REGISTRY")
    return Path(override).expanduser() if override else REGISTRY_FILE


def load_registry() -> dict:
    """The parsed and checked registry: {"models": {name: entry}}."""
    path = registry_path()
    try:
        data = parse_registry_json(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        where = "FLOWCLI_REGISTRY points at a missing file" if path != REGISTRY_FILE else "reinstall flowcli"
        raise WeightsError(f"weights registry {path} not found ({where})") from None
    except json.JSONDecodeError as error:
        raise WeightsError(f"weights registry {path} is not valid JSON (line {error.lineno}: {error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:  # a folder, no read permission, not UTF-8 text
        what = "is not a UTF-8 text file" if isinstance(error, UnicodeDecodeError) else "cannot be read"
        detail = error.reason if isinstance(error, UnicodeDecodeError) else error.strerror or error
        raise WeightsError(
            f"weights registry {path} {what} ({detail}); point FLOWCLI_REGISTRY at a registry JSON file"
        ) from None
    _check_registry(data, path)
    return data


def parse_registry_json(text: str, path: Path) -> object:
    """`json.loads` of a registry file, refusing a key given twice in one object: JSON keeps only the last, so a
    model name or a field (sha256, source) repeated would silently drop the other one."""
    repeated: list[str] = []

    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                repeated.append(key)
            obj[key] = value
        return obj

    data = json.loads(text, object_pairs_hook=unique_keys)
    if repeated:
        raise WeightsError(
            f"weights registry {path} is invalid: {repeated[0]!r} is given twice in one object (JSON keeps only the "
            "last); rename or remove one of them"
        )
    return data


def _check_registry(data: object, path: Path) -> None:
    def bad(what: str) -> WeightsError:
        return WeightsError(f"weights registry {path} is invalid: {what}")

    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise bad('expected {"models": {name: entry}} at the top level')
    for name, entry in models.items():
        if not _is_plain_relative(name):  # names are cache folders: models/NAME/PATH
            raise bad(f"model name {name!r} must not be empty, absolute, contain '..' or a ':' before its first '/'")
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, list) or not files:
            raise bad(f"model {name!r} has no files")
        _check_descriptive_fields(entry, name, bad)
        paths: set[PurePosixPath] = set()
        for record in files:
            if not isinstance(record, dict) or not record.get("path") or not record.get("source"):
                raise bad(f"model {name!r} has a file without 'path' and 'source'")
            text_fields = ("path", "source", "member", "archive_sha256")
            not_text = next((key for key in text_fields if key in record and not isinstance(record[key], str)), None)
            if not_text is not None:
                raise bad(f"model {name!r} has a file whose {not_text!r} is {record[not_text]!r}, not a string")
            if not _is_plain_relative(str(record["path"])):
                raise bad(
                    f"model {name!r} file {record['path']!r}: 'path' must be a relative path inside the "
                    "model's cache folder (no '..', not absolute)"
                )
            # two files with one path would share one cache file, each download replacing the other's
            if PurePosixPath(record["path"]) in paths:
                raise bad(f"model {name!r} has two files with path {record['path']!r}; give each file its own path")
            paths.add(PurePosixPath(record["path"]))
            if not str(record["source"]).startswith(SOURCE_PREFIXES):
                raise bad(f"model {name!r} file {record['path']!r} has source {record['source']!r}; "
                          f"expected one of {', '.join(SOURCE_PREFIXES)}")
            source_problem = _source_problem(record["source"])
            if source_problem is not None:
                raise bad(f"model {name!r} file {record['path']!r}: {source_problem}")
            sha = record.get("sha256", UNKNOWN_SHA256)
            if sha != UNKNOWN_SHA256 and not _SHA256_RE.fullmatch(str(sha)):
                raise bad(f"model {name!r} file {record['path']!r} sha256 must be 64 lowercase hex digits or 'TBD'")
            for key in ("size", "archive_size"):
                size = record.get(key, 0)
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise bad(f"model {name!r} file {record['path']!r} {key} must be a byte count (0 = unknown)")
            if "member" in record:
                if str(record["source"]).startswith(("bundled:", "hf://")):
                    raise bad(f"model {name!r} file {record['path']!r}: 'member' needs an https:// archive source")
                if not _SHA256_RE.fullmatch(str(record.get("archive_sha256", ""))) or _known_sha256(record) is None:
                    raise bad(f"model {name!r} file {record['path']!r}: an archive member needs both "
                              "'archive_sha256' and 'sha256'")


def _check_descriptive_fields(entry: dict, name: str, bad) -> None:
    """The fields `weights list` and `weights info` show (null = absent): text where text is expected, objects
    where they list key=value pairs, training stages as a list of objects."""
    for key in ("task", "description", "license"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise bad(f"model {name!r} has {key} {json.dumps(entry[key])[:40]}, not a string")
    for key in ("architecture", "metrics", "training"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise bad(f"model {name!r} has {key} {json.dumps(entry[key])[:40]}, not an object of name: value")
    stages = (entry.get("training") or {}).get("stages")
    if stages is not None and not (isinstance(stages, list) and all(isinstance(stage, dict) for stage in stages)):
        raise bad(f"model {name!r} has training stages {json.dumps(stages)[:40]}, not a list of objects")


def _source_problem(source: str) -> str | None:
    """What makes a registry source unusable (an hf:// spec without a file, a URL without a host, a bundled: path
    outside the package), else None."""
    if source.startswith("bundled:") and not _is_plain_relative(source[len("bundled:") :]):
        return f"source {source!r} must be a path inside the flowcli package (no '..', not absolute)"
    if source.startswith("hf://"):
        try:
            parse_hf_source(source)
        except WeightsError as error:
            return str(error)
    elif source.startswith(("https://", "http://")) and not urlsplit(source).hostname:
        return f"source {source!r} has no host; expected https://HOST/PATH"
    return None


def _is_plain_relative(path: str) -> bool:
    """A relative path that stays inside the folder it is joined to (no '..', not absolute, not empty)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts and ":" not in parts[0]


def list_models() -> list[str]:
    """Registry model names, in registry order."""
    return list(load_registry()["models"])


def model_entry(name: str) -> dict:
    """The registry entry of `name`; an unknown name raises WeightsError listing the known ones."""
    refuse_empty(name)
    models = load_registry()["models"]
    if name not in models:
        raise WeightsError(_unknown_name_message(name, models))
    return models[name]


_WEIGHTS_EXPECTED = (
    "a model name, hf:// spec, URL or .safetensors file, or leave the option out for the bundled default"
)


def refuse_empty(spec: str | None, expected: str = _WEIGHTS_EXPECTED) -> None:
    """A name, spec or path given as "" (a `-w "$WEIGHTS"` with the variable unset) is refused, not read as the
    current folder; `expected` is what to give instead, a command's own list where it has no bundled default."""
    if isinstance(spec, str) and not spec.strip():
        raise WeightsError(f'the weights are given as "" (empty); give {expected}')


def _unknown_name_message(name: str, models: dict) -> str:
    close = difflib.get_close_matches(name, list(models), n=1)
    if close:
        return f"unknown model {name!r}; did you mean {close[0]!r}? (see `flowcli weights list`)"
    known = ", ".join(models) or "(the registry is empty)"
    return f"unknown model {name!r}; known models: {known} (see `flowcli weights list`), or pass a checkpoint file path"


# --- small helpers -----------------------------------------------------------------------------


_HASHED: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks; remembered for this process while the file's inode, size and
    mtime stay the same (verifying a checkpoint and then recording its hash reads a large file once)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def cache_dir() -> Path:
    """Where URL sources are cached: $FLOWCLI_CACHE, $XDG_CACHE_HOME/flowcli or ~/.cache/flowcli."""
    if os.environ.get("FLOWCLI_CACHE"):
        return Path(os.environ["FLOWCLI_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "flowcli"
    return Path.home() / ".cache" / "flowcli"


def offline_reason(offline: bool = False) -> str | None:
    """Why flowcli must stay off the network (None when it may download)."""
    if offline:
        return "offline mode was requested"
    for var in ("FLOWCLI_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def is_offline(offline: bool = False) -> bool:
    return offline_reason(offline) is not None


def _known_sha256(record: dict) -> str | None:
    sha = record.get("sha256", UNKNOWN_SHA256)
    return None if sha == UNKNOWN_SHA256 else sha


def _known_size(record: dict) -> int | None:
    return record.get("size") or None


def _local_problem(path: Path, record: dict) -> tuple[str, str, str] | None:
    """(what, expected, got) if `path` does not match the record's size or sha256, else None."""
    try:
        size = _known_size(record)
        if size is not None and path.stat().st_size != size:
            return ("size", f"{size} bytes", f"{path.stat().st_size} bytes")
        sha = _known_sha256(record)
        if sha is not None:
            actual = sha256_file(path)
            if actual != sha:
                return ("sha256", sha, actual)
    except OSError as error:  # e.g. a shared cache filled by another user
        raise WeightsError(
            f"cannot read {path} ({error.strerror or error}); fix its permissions, or delete it to fetch it again"
        ) from None
    return None


def _remove_corrupt(path: Path, label: str, problem: tuple[str, str, str], *, hf: bool = False) -> None:
    """Delete a cached copy that failed its check (another process may have done so already)."""
    try:
        if hf:
            _forget_hf_file(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        raise WeightsError(
            f"the cached copy of {label} is corrupt ({problem[0]} mismatch) and cannot be deleted "
            f"({error.strerror or error}); delete {path} by hand, or fix the permissions of its folder"
        ) from None


def _cache_error(error: OSError, *, hf: bool) -> WeightsError:
    folder, variable = (_hf_cache_folder(), "HF_HOME or HF_HUB_CACHE") if hf else (cache_dir(), "FLOWCLI_CACHE")
    return WeightsError(
        f"cannot write to the weights cache {folder} ({error.strerror or error}); "
        f"fix its permissions or free some space, or set {variable} to a writable folder"
    )


def _mismatch_error(label: str, problem: tuple[str, str, str], *, registered: bool = True) -> WeightsError:
    """A fresh download that failed its check (and was deleted), with what to do next: `registered` when the
    expected value is the registry's, else it is the Hub's own checksum of a file outside the registry."""
    what, expected, got = problem
    if registered:
        persists = (
            f"the file at the source no longer matches the {what} in {registry_path()}: report it to whoever "
            "maintains that registry entry"
        )
    else:
        persists = "the Hub serves a file that does not match its own checksum; report it to the repository's owner"
    return WeightsError(
        f"{what} mismatch for {label}: expected {expected}, got {got}; the download was deleted. Run the command "
        f"again (the transfer may have been damaged); if it fails the same way, {persists}"
    )


def _looks_like_path(spec: str) -> bool:
    return (
        "/" in spec
        or os.sep in spec
        or spec.startswith((".", "~"))
        or PurePosixPath(spec).suffix.lower() in _CHECKPOINT_SUFFIXES
    )


def _source_key(source: str) -> object:
    """What identifies a source: hf://o/r/f, hf://o/r/f@main and hf://o//r/f name one file of one revision."""
    if source.startswith("hf://"):
        try:
            return parse_hf_source(source)
        except WeightsError:
            pass
    return source


def _source_record(spec: str) -> tuple[str | None, dict]:
    """(registry name, file record) of a source spec: the registry's when an entry uses it, else a record of
    the spec alone (no sha256)."""
    found = _find_source(spec)
    if found is not None:
        return found
    filename = PurePosixPath(urlsplit(spec.split("@")[0] if spec.startswith("hf://") else spec).path).name
    return None, {"path": filename or "download", "source": spec}


def _find_source(source: str) -> tuple[str, dict] | None:
    """The registry (name, file record) that uses `source`, so a raw spec still gets its sha256 checked."""
    key = _source_key(source)
    for name, entry in load_registry()["models"].items():
        for record in entry["files"]:
            if _source_key(record["source"]) == key:
                return name, record
    return None


# --- resolve -----------------------------------------------------------------------------------


def resolve(spec: str | os.PathLike, offline: bool = False, *, quiet: bool = False) -> Path:
    """A local, verified path for a checkpoint spec (see the module docstring), downloading if needed.

    `offline=True` (or FLOWCLI_OFFLINE=1 / HF_HUB_OFFLINE=1) uses only the caches; a cache miss raises a
    WeightsError naming the missing file and the `flowcli weights download` command that fetches it.
    """
    spec = os.fspath(spec)
    refuse_empty(spec)
    if spec.startswith(SOURCE_PREFIXES):
        name, record = _source_record(spec)
        return _fetch(name, record, offline=offline, quiet=quiet)

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    models = load_registry()["models"]
    if spec in models:
        return _fetch(spec, models[spec]["files"][0], offline=offline, quiet=quiet)
    if path.is_dir():
        raise WeightsError(f"{spec} is a folder, not a checkpoint file; pass the .safetensors file inside it")
    if _looks_like_path(spec):
        raise WeightsError(f"no such checkpoint file: {spec}")
    raise WeightsError(_unknown_name_message(spec, models))


def fetch_model(name: str, offline: bool = False, *, quiet: bool = False) -> list[Path]:
    """Every file of registry model `name`, fetched into the cache and verified (for offline use later)."""
    return [_fetch(name, record, offline=offline, quiet=quiet) for record in model_entry(name)["files"]]


def local_copy(name: str, file: str | None = None) -> Path | None:
    """The local copy of a registry model's file (default: the primary one), or None; never downloads."""
    entry = model_entry(name)
    records = [r for r in entry["files"] if file is None or r["path"] == file]
    if not records:
        raise WeightsError(f"model {name!r} has no file {file!r}; it has {[r['path'] for r in entry['files']]}")
    return _local_copy(name, records[0])


def verify(name: str) -> list[tuple[str, str]]:
    """(file, status) for each file of registry model `name`, checking local copies only (no download).

    Status: "ok", "unverified" (no sha256 to check against), "not downloaded", "missing" (bundled file
    absent) or "corrupt" (size or sha256 mismatch).
    """
    return [(record["path"], _status(name, record)) for record in model_entry(name)["files"]]


def verify_source(spec: str) -> tuple[str, str]:
    """(file, status) for a source spec (hf://, https://, bundled:), checking the local copy only, as `verify`
    does: against the sha256 and size of the registry entry that uses the source, else an hf:// file against
    the Hub's own sha256. A URL in no registry entry has no sha256 to check: "unverified", cached or not.
    """
    refuse_empty(spec)
    name, record = _source_record(spec)
    return record["path"], _status(name, record)


def verify_path(path: str | os.PathLike) -> tuple[str, dict, str] | None:
    """(registry name, file record, status) when local file `path` is a registry file's bundled or cached copy,
    checked as `verify` checks it; None for a file that no registry entry holds."""
    refuse_empty(os.fspath(path))
    for name, entry in load_registry()["models"].items():
        for record in entry["files"]:
            try:
                copy = _local_copy(name, record)
                found = copy is not None and os.path.samefile(copy, path)
            except (WeightsError, OSError):  # another entry's bad bundled: path, a copy deleted meanwhile
                continue
            if found:
                return name, record, _status(name, record)
    return None


def _status(name: str | None, record: dict) -> str:
    """The verify status of one file record's local copy. An hf:// file without a registry sha256 is checked
    against the Hub's, as resolving it does."""
    hf = record["source"].startswith("hf://")
    path = _local_copy(name, record)
    if path is None and record["source"].startswith("bundled:"):
        return MISSING  # absent whether or not a sha256 is recorded
    if path is None:
        # a URL without a recorded sha256 has nothing to check even once cached; an hf:// file has the Hub's
        return NOT_DOWNLOADED if hf or _known_sha256(record) is not None else UNVERIFIED
    record = _with_hub_sha256(path, record) if hf else record
    if _local_problem(path, record) is not None:
        return CORRUPT
    return OK if _known_sha256(record) is not None else UNVERIFIED


def _label(name: str | None, record: dict) -> str:
    return f"{name} ({record['path']})" if name else record["source"]


def _fetch(name: str | None, record: dict, *, offline: bool, quiet: bool) -> Path:
    source = record["source"]
    if source.startswith("bundled:"):
        return _fetch_bundled(name, record)
    hf = source.startswith("hf://")
    try:
        return (_fetch_hf if hf else _fetch_url)(name, record, offline=offline, quiet=quiet)
    except OSError as error:  # network failures are WeightsErrors by now: this one is the cache folder's
        raise _cache_error(error, hf=hf) from None


def _local_copy(name: str | None, record: dict) -> Path | None:
    source = record["source"]
    if source.startswith("bundled:"):
        path = _bundled_path(source)
        return path if path.is_file() else None
    if source.startswith("hf://"):
        return _hf_cached(source)
    path = _url_cache_path(name, record)
    return path if path.is_file() else None


# --- bundled: ----------------------------------------------------------------------------------


def _bundled_path(source: str) -> Path:
    relative = source[len("bundled:") :]
    path = (PACKAGE_DIR / relative).resolve()
    if not path.is_relative_to(PACKAGE_DIR):
        raise WeightsError(f"{source} points outside the flowcli package; bundled: paths are relative to it")
    return path


def _fetch_bundled(name: str | None, record: dict) -> Path:
    path = _bundled_path(record["source"])
    if not path.is_file():
        raise WeightsError(
            f"{_label(name, record)}: bundled file {path} is missing from this installation; "
            "reinstall flowcli or pass a checkpoint file path instead"
        )
    problem = _local_problem(path, record)
    if problem is not None:
        what, expected, got = problem
        raise WeightsError(
            f"{what} mismatch for {_label(name, record)} at {path}: expected {expected}, got {got} (a bundled file "
            "changed since installation); reinstall flowcli, or pass a checkpoint file path instead"
        )
    return path


# --- hf:// -------------------------------------------------------------------------------------


def parse_hf_source(source: str) -> tuple[str, str, str]:
    """`hf://owner/repo/path/in/repo@rev` -> (repo_id, filename, revision); revision defaults to main."""
    body = source[len("hf://") :]
    revision = "main"
    if "@" in body:
        body, revision = body.rsplit("@", 1)
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3 or not revision:
        raise WeightsError(f"{source} is not a valid hf:// spec; expected hf://OWNER/REPO/FILE[@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _hf_cache_dir() -> str | None:
    # huggingface_hub reads HF_HOME/HF_HUB_CACHE once at import; read them now so changes are honoured.
    # Expanded as it expands them: hf_hub_download expands `~` in the folder it writes to, but
    # try_to_load_from_cache does not, so an unexpanded '~/hf' hid every download from offline use and verify.
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        if os.environ.get(variable):
            folder = os.path.expandvars(os.path.expanduser(os.environ[variable]))
            return os.path.join(folder, "hub") if variable == "HF_HOME" else folder
    return None


def _hf_cache_folder() -> str:
    from huggingface_hub import constants

    return _hf_cache_dir() or constants.HF_HUB_CACHE


def _quiet_tqdm() -> type:
    from tqdm import tqdm

    class QuietTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def _forget_hf_file(path: Path) -> None:
    """Delete a cached hf file: the snapshot pointer and the blob it links to."""
    blob = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _hf_cached(source: str) -> Path | None:
    """The cached copy of an hf:// source, looked up on disk only."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename, revision = parse_hf_source(source)
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=_hf_cache_dir(), revision=revision)
    return Path(cached) if isinstance(cached, str) else None


class _RetryNotice(logging.Filter):
    """huggingface_hub logs each retry of a failed request (a dozen lines over ~25 s): say it once, our way."""

    def __init__(self, label: str, endpoint: str):
        super().__init__()
        self.label, self.endpoint, self.said = label, endpoint, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.said and record.levelno >= logging.WARNING:
            self.said = True
            warn(f"{self.label}: {self.endpoint} does not answer; retrying for up to half a minute (Ctrl-C stops)")
        return False


def _hf_download(source: str, label: str, *, force: bool, quiet: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, filename, revision = parse_hf_source(source)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    http_logger = logging.getLogger("huggingface_hub.utils._http")  # where its request retries are logged
    notice = _RetryNotice(label, endpoint or "https://huggingface.co")
    http_logger.addFilter(notice)
    try:
        return Path(
            hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                cache_dir=_hf_cache_dir(),
                endpoint=endpoint,
                force_download=force,
                **({"tqdm_class": _quiet_tqdm()} if quiet else {}),
            )
        )
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"cannot download {label} from {endpoint or 'https://huggingface.co'} and it is not cached; "
            "check the connection (HF_ENDPOINT, proxy) and retry"
        ) from None
    # The network stack under huggingface_hub varies by version (requests, httpx, httpx2): turn any of
    # its failures into one line that says what could not be fetched.
    except Exception as error:
        if isinstance(error, OSError) and error.filename:
            raise _cache_error(error, hf=True) from None
        missing = _hf_missing(error, repo_id, filename, revision, endpoint or "https://huggingface.co")
        if missing is not None:
            raise WeightsError(f"cannot download {label}: {missing}") from None
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = f" ({source})" if source != label else ""
        raise WeightsError(f"cannot download {label}{where}: {type(error).__name__}: {first}") from None
    finally:
        http_logger.removeFilter(notice)


def _hf_missing(error: Exception, repo_id: str, filename: str, revision: str, endpoint: str) -> str | None:
    """What the Hub said is not there, and what to check; None for other failures. By class name: these
    classes moved between huggingface_hub versions (EntryNotFoundError became RemoteEntryNotFoundError)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if "RepositoryNotFoundError" in names:  # also a gated repository
        return (
            f"{endpoint} has no repository {repo_id} that you can read; check its name, or set HF_TOKEN to a token "
            "with access if it is private or gated"
        )
    if "RevisionNotFoundError" in names:
        return f"{repo_id} has no revision {revision!r}; check the branch, tag or commit after '@'"
    if names & {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
        return f"{repo_id} has no file {filename!r} at revision {revision!r}; check the file's path in the repository"
    return None


def _hf_problem(path: Path, record: dict) -> tuple[str, str, str] | None:
    """`_local_problem` for a cached hf file, checked against the Hub's sha256 without a registry one."""
    return _local_problem(path, _with_hub_sha256(path, record))


def _with_hub_sha256(path: Path, record: dict) -> dict:
    """`record`, given the Hub's sha256 of cached hf file `path` if it records none: a file stored with git LFS
    (every checkpoint is) is cached as a blob named by its sha256."""
    if _known_sha256(record) is None:
        blob = os.path.basename(os.path.realpath(path))
        if _SHA256_RE.fullmatch(blob):
            return {**record, "sha256": blob}
    return record


def _fetch_hf(name: str | None, record: dict, *, offline: bool, quiet: bool) -> Path:
    source = record["source"]
    label = _label(name, record)
    reason = offline_reason(offline)
    if reason is not None:
        # Straight from the cache: hf_hub_download(local_files_only=True) may still make requests
        # (its user-agent telemetry) unless HF_HUB_OFFLINE was set before huggingface_hub was imported.
        path = _hf_cached(source)
        if path is None:
            raise _offline_miss(name, record, reason)
        problem = _hf_problem(path, record)
        if problem is not None:
            _remove_corrupt(path, label, problem, hf=True)
            raise _corrupt_while_offline(name, record, problem, reason)
        return path

    path = _hf_download(source, label, force=False, quiet=quiet)
    problem = _hf_problem(path, record)
    if problem is None:
        return path
    _remove_corrupt(path, label, problem, hf=True)  # corrupt or truncated: fetch again, once
    path = _hf_download(source, label, force=True, quiet=quiet)
    problem = _hf_problem(path, record)
    if problem is not None:
        _forget_hf_file(path)
        raise _mismatch_error(label, problem, registered=_known_sha256(record) is not None)
    return path


def _corrupt_while_offline(name: str | None, record: dict, problem: tuple[str, str, str], reason: str) -> WeightsError:
    return WeightsError(
        f"the cached copy of {_label(name, record)} was corrupt ({problem[0]} mismatch) and has been deleted; "
        f"flowcli is offline ({reason}), so run `flowcli weights download {name or record['source']}` while online"
    )


def _offline_miss(name: str | None, record: dict, reason: str) -> WeightsError:
    what = f"{record['path']} of {name} ({record['source']})" if name else record["source"]
    return WeightsError(
        f"{what} is not in the local cache and flowcli is offline ({reason}); "
        f"run `flowcli weights download {name or record['source']}` while online"
    )


# --- https:// ----------------------------------------------------------------------------------


def _check_url_allowed(url: str) -> None:
    parts = urlsplit(url)
    if not parts.hostname:
        raise WeightsError(f"{url} has no host; give the URL as https://HOST/PATH")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS:
        return
    raise WeightsError(
        f"refusing to download {url} over plain http; use an https:// URL (http:// is allowed only for localhost)"
    )


def _url_cache_path(name: str | None, record: dict) -> Path:
    """Where a URL source is cached: models/NAME/PATH for a registry file, urls/KEY/FILENAME for any other URL,
    KEY a hash of the whole URL. A registry file without a sha256 is cached under models/NAME/KEY/PATH: with
    nothing to check the copy against, a source changed under the same name and path (a registry update, another
    FLOWCLI_REGISTRY) would otherwise be served the old URL's file."""
    url = record["source"]
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    if name is not None:
        folder = cache_dir() / "models" / name
        return folder / record["path"] if _known_sha256(record) is not None else folder / key / record["path"]
    filename = PurePosixPath(unquote(urlsplit(url).path)).name or "download"
    return cache_dir() / "urls" / key / filename


def _fetch_url(name: str | None, record: dict, *, offline: bool, quiet: bool) -> Path:
    if "member" in record:
        return _fetch_member(name, record, offline=offline, quiet=quiet)
    url = record["source"]
    _check_url_allowed(url)
    label = _label(name, record)
    target = _url_cache_path(name, record)
    reason = offline_reason(offline)
    if target.is_file():
        problem = _local_problem(target, record)
        if problem is None:
            return target
        _remove_corrupt(target, label, problem)  # corrupt or truncated: fetch again, once
        if reason is not None:
            raise _corrupt_while_offline(name, record, problem, reason)
    elif reason is not None:
        raise _offline_miss(name, record, reason)
    download_file(url, target, label=label, quiet=quiet)
    problem = _local_problem(target, record)
    if problem is not None:
        target.unlink(missing_ok=True)
        raise _mismatch_error(label, problem)
    return target


def _fetch_member(name: str | None, record: dict, *, offline: bool, quiet: bool) -> Path:
    """A file inside a zip archive (a wheel, say): fetch and verify the archive, extract, verify the file."""
    target = _url_cache_path(name, record)
    label = _label(name, record)
    if target.is_file():
        problem = _local_problem(target, record)
        if problem is None:
            return target
        _remove_corrupt(target, label, problem)
        if offline_reason(offline) is not None:
            raise _corrupt_while_offline(name, record, problem, offline_reason(offline))
    archive_record = {
        "path": PurePosixPath(unquote(urlsplit(record["source"]).path)).name or "archive.zip",
        "source": record["source"],
        "sha256": record["archive_sha256"],
        "size": record.get("archive_size", 0),
    }
    reason = offline_reason(offline)
    if reason is not None and not _url_cache_path(None, archive_record).is_file():
        raise _offline_miss(name, record, reason)
    try:
        archive = _fetch_url(None, archive_record, offline=offline, quiet=quiet)
    except WeightsError as error:
        raise WeightsError(f"{label}: {error}") from None
    _extract_member(archive, record["member"], target, label)
    problem = _local_problem(target, record)
    if problem is not None:
        target.unlink(missing_ok=True)
        raise _mismatch_error(label, problem)
    return target


def _extract_member(archive: Path, member: str, target: Path, label: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(archive) as bundle:
            with bundle.open(member) as src:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
        _publish(Path(tmp_name), target)
    except KeyError:
        Path(tmp_name).unlink(missing_ok=True)
        raise WeightsError(f"{label}: {archive.name} has no member {member}") from None
    except zipfile.BadZipFile:
        Path(tmp_name).unlink(missing_ok=True)
        raise WeightsError(f"{label}: {archive} is not a zip archive") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only where the first URL could go: https:// (or http:// on a loopback host)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url_allowed(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_CheckedRedirects)


class _TransferCut(Exception):
    """A transfer that broke off mid-way; worth resuming."""


def download_file(url: str, target: Path, *, label: str | None = None, quiet: bool = False) -> Path:
    """Fetch `url` to `target` through a temp file in the same folder, renamed only when complete.

    Broken transfers are resumed (HTTP Range, or restarted if the server ignores it) up to
    DOWNLOAD_ATTEMPTS times; on failure no partial file is left behind.
    """
    _check_url_allowed(url)
    label = label or url
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, progress(quiet=quiet, transient=True) as bar:
            task = bar.add_task(f"download {target.name}", total=None, info="")
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                try:
                    _transfer(url, out, bar, task)
                    break
                except _TransferCut as cut:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        raise WeightsError(
                            f"download of {label} from {url} failed after {attempt} attempts ({cut}); "
                            "check the connection and run the command again"
                        ) from None
                    time.sleep(RETRY_BACKOFF_S * attempt)
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename a complete temp file to `target`, readable as any file the user makes: mkstemp creates it 0600,
    and a cache filled by one user (a container build, a shared FLOWCLI_CACHE) is read by others."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def _transfer(url: str, out, bar, task) -> None:
    """One GET into `out`, resuming from out.tell(); raises _TransferCut when the body ends early."""
    have = out.tell()
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = _OPENER.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code in (408, 429) or error.code >= 500:
            raise _TransferCut(f"HTTP {error.code} {error.reason}") from None
        raise WeightsError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsError(
            f"cannot reach {urlsplit(url).netloc} to download {url} ({reason}); check the connection, "
            "or set FLOWCLI_OFFLINE=1 to use only cached weights"
        ) from None
    with response:
        if have and response.status != 206:  # the server ignored Range: start over
            out.seek(0)
            out.truncate()
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar.update(task, total=total, completed=have)
        while chunk := _read(response, have):
            out.write(chunk)  # an OSError here (disk full) is the cache's, not the connection's
            have += len(chunk)
            bar.update(task, completed=have, info=_megabytes(have, total))
    if total is not None and have < total:
        raise _TransferCut(f"connection closed after {have} of {total} bytes")


def _read(response, have: int) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except (OSError, HTTPException) as error:
        raise _TransferCut(f"connection lost after {have} bytes: {error}") from None


def _megabytes(done: int, total: int | None) -> str:
    return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
