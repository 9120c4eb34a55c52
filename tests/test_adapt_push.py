"""`flowcli weights push` against a loopback Hub look-alike that also accepts uploads; no internet.

The upload side speaks the endpoints huggingface_hub 2.x's HfApi.create_repo / upload_file call:
  POST /api/repos/create                          {"name", "organization", "visibility"?} -> {"url"}
  POST /api/models/{repo}/preupload/{revision}    which files are LFS: this server answers "regular",
                                                  so the bytes come inline (base64) in the commit
  POST /api/models/{repo}/commit/{revision}       ndjson: a header line, then one line per file
The download side is tests/hub_server.py's, so a pushed file is then fetched by `registry.resolve`.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer, _HubHandler, commit_for

TOKEN = "hf_test_write_token"


class _UploadHandler(_HubHandler):
    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.hub._log("POST", path, None)
        self.hub.auth_headers.append(self.headers.get("Authorization"))
        if self.hub.require_token and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._json(401, {"error": "Invalid credentials"}, error_code=None)
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}"
            if repo_id in self.hub.repos:
                return self._json(
                    409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"}
                )
            self.hub.repos[repo_id] = {}
            self.hub.created.append((repo_id, data.get("visibility")))
            return self._json(200, {"url": f"{self.hub.url}/{repo_id}"})
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id not in self.hub.repos:
                return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ]})  # fmt: skip
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            for line in lines[1:]:
                if line["key"] == "file":
                    self.hub.add_repo_file(repo_id, line["value"]["path"], base64.b64decode(line["value"]["content"]))
            self.hub.commits.append((repo_id, parts[5], lines[0]["value"]["summary"]))
            commit = commit_for(repo_id, "main")
            return self._json(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                                    "pullRequestUrl": None})  # fmt: skip
        return self._json(404, {"error": "not found"})

    def _json(self, code: int, data: dict, error_code: str | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UploadHubServer(HubServer):
    handler_class = _UploadHandler

    def __init__(self) -> None:
        super().__init__()
        self.created: list = []
        self.commits: list = []
        self.auth_headers: list = []
        self.require_token = True


@pytest.fixture(scope="module")
def server():
    with UploadHubServer() as hub:
        yield hub


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    server.reset()
    server.created.clear()
    server.commits.clear()
    server.auth_headers.clear()
    server.require_token = True
    for var in ("HF_HUB_OFFLINE", "FLOWCLI_OFFLINE", "HF_HUB_CACHE", "FLOWCLI_REGISTRY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("FLOWCLI_CACHE", str(tmp_path / "flowcli-cache"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    # the download URL template is built from HF_ENDPOINT once, when huggingface_hub is first imported
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from flowcli.checkpoint import save_checkpoint
    from flowcli.models.pwc import FlowNet, FlowNetConfig

    config = FlowNetConfig(
        pyramid_channels=(8, 8, 8, 8, 8, 8), decoder_channels=(8, 8), context_channels=(8,), context_dilations=(1,)
    )
    path = tmp_path_factory.mktemp("push") / "adapted.safetensors"
    provenance = {
        "trained_by": "flowcli adapt",
        "steps": 20,
        "base_weights": {"spec": "tiny", "sha256": "0" * 64},
        "footage": {"fingerprint": "ab" * 32},
        "heldout_after": {"photo": 0.1},
        "date": "2026-01-01",
    }
    save_checkpoint(FlowNet(config), path, provenance=provenance)
    return path


def _app():
    """A Typer app holding only `weights` (as tests/test_registry.py does)."""
    import typer

    from flowcli.cli import weights

    app = typer.Typer()
    weights.register(app)

    @app.callback()
    def main() -> None:
        """flowcli (test app holding only `weights`)"""

    return app


@pytest.mark.parametrize("existing", [None, "{}"])  # a registry file made by the push, or an empty one added to
def test_push_uploads_and_the_pinned_source_resolves(hub, checkpoint, tmp_path, existing):
    from flowcli import registry
    from flowcli.checkpoint import load_checkpoint

    reg = tmp_path / "my_registry.json"
    if existing is not None:
        reg.write_text(existing)
    result = CliRunner().invoke(
        _app(), ["weights", "push", str(checkpoint), "--repo", "me/my-flow", "--registry", str(reg), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    commit = commit_for("me/my-flow", "main")
    assert out["source"] == f"hf://me/my-flow/adapted.safetensors@{commit}"
    assert hub.repos["me/my-flow"]["adapted.safetensors"].data == checkpoint.read_bytes()
    assert hub.created == [("me/my-flow", None)]
    assert all(h == f"Bearer {TOKEN}" for h in hub.auth_headers)  # HF_TOKEN is what authenticates
    entry = json.loads(reg.read_text())["models"]["my-flow"]
    assert entry["files"][0]["sha256"] == registry.sha256_file(checkpoint)
    assert entry["training"]["footage_fingerprint"] == "ab" * 32
    # the published file is usable anywhere --weights is: resolve downloads and verifies it
    path = registry.resolve(out["source"], quiet=True)
    assert path.read_bytes() == checkpoint.read_bytes()
    assert load_checkpoint(path).provenance["trained_by"] == "flowcli adapt"


def test_the_pushed_source_is_described_and_verified_by_weights_info_and_verify(hub, checkpoint):
    """The hf:// source push prints works with --weights; `weights info` and `weights verify` said "unknown model"."""
    app = _app()
    result = CliRunner().invoke(app, ["weights", "push", str(checkpoint), "--repo", "me/my-flow"])
    assert result.exit_code == 0, result.output
    source = result.stdout.strip()
    result = CliRunner().invoke(app, ["weights", "verify", source, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["status"] == "not downloaded", result.output
    info = CliRunner().invoke(app, ["weights", "info", source, "--json"])
    assert info.exit_code == 0, info.output
    out = json.loads(info.stdout)
    assert out["source"] == source and out["checkpoint"]["flowcli.provenance"]["trained_by"] == "flowcli adapt"
    assert Path(out["path"]).read_bytes() == checkpoint.read_bytes()
    result = CliRunner().invoke(app, ["weights", "verify", source, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["status"] == "ok", result.output


def test_push_to_existing_repo_and_custom_name(hub, checkpoint):
    hub.repos["me/existing"] = {}
    result = CliRunner().invoke(
        _app(), ["weights", "push", str(checkpoint), "--repo", "me/existing", "--path-in-repo", "v2/model.safetensors"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("hf://me/existing/v2/model.safetensors@")
    assert "v2/model.safetensors" in hub.repos["me/existing"]


def test_push_errors_are_one_line(hub, checkpoint, tmp_path, monkeypatch):
    from flowcli.errors import FlowcliError

    def run_cli(args):
        result = CliRunner().invoke(_app(), args)
        assert isinstance(result.exception, FlowcliError), result.output
        assert len(str(result.exception).splitlines()) == 1
        return result.exception.exit_code

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert run_cli(["weights", "push", str(checkpoint), "--repo", "me/x"]) == 4
    not_flowcli = tmp_path / "plain.safetensors"
    not_flowcli.write_bytes(b"garbage")
    assert run_cli(["weights", "push", str(not_flowcli), "--repo", "me/x"]) == 4
    assert run_cli(["weights", "push", str(checkpoint), "--repo", "no-slash"]) == 2  # a bad option value
    assert not hub.commits


@pytest.mark.parametrize("content", ["[1, 2]", '{"models": []}', '{"models": {"x": 1}}', "{oops"])
def test_push_checks_the_registry_file_before_uploading(hub, checkpoint, tmp_path, content):
    from flowcli.errors import WeightsError

    reg = tmp_path / "r.json"
    reg.write_text(content)
    result = CliRunner().invoke(_app(), ["weights", "push", str(checkpoint), "--repo", "me/x", "--registry", str(reg)])
    assert isinstance(result.exception, WeightsError), result.output
    assert len(str(result.exception).splitlines()) == 1 and str(reg) in str(result.exception)
    assert not hub.commits and not hub.created  # nothing was uploaded
    assert reg.read_text() == content


def test_push_refuses_a_registry_file_that_gives_a_model_twice(hub, checkpoint, tmp_path):
    """JSON keeps the last of two equal keys: the push uploaded, then rewrote the --registry file without the first
    entry of the model given twice."""
    from flowcli.errors import WeightsError

    reg = tmp_path / "r.json"
    model = '{"files": [{"path": "m.safetensors", "source": "https://h/%s.safetensors"}]}'
    content = '{"models": {"old": %s, "old": %s}}' % (model % "a", model % "b")
    reg.write_text(content)
    result = CliRunner().invoke(
        _app(), ["weights", "push", str(checkpoint), "--repo", "me/new", "--registry", str(reg)]
    )
    assert isinstance(result.exception, WeightsError), result.output
    assert "'old' is given twice" in str(result.exception) and str(reg) in str(result.exception)
    assert not hub.commits and not hub.created and reg.read_text() == content


@pytest.mark.parametrize(
    "args, option",
    [
        (["--repo", "me/my flow"], "--repo"),
        (["--repo", "me/x", "--name", "../x"], "--name"),
        (["--repo", "me/x", "--path-in-repo", "../x.safetensors"], "--path-in-repo"),
        (["--repo", "me/x", "--path-in-repo", "/x.safetensors"], "--path-in-repo"),
        (["--repo", "me/x", "--path-in-repo", "v2/"], "--path-in-repo"),  # a source that resolves to "v2"
    ],
)
def test_push_refuses_names_before_uploading(hub, checkpoint, tmp_path, args, option):
    """A --name or --path-in-repo flowcli's registry refuses was uploaded, then written into the --registry file,
    which every flowcli command then refused as a whole; an invalid --repo failed only after the checks."""
    from flowcli.errors import InputError

    reg = tmp_path / "r.json"
    result = CliRunner().invoke(_app(), ["weights", "push", str(checkpoint), *args, "--registry", str(reg)])
    assert isinstance(result.exception, InputError), result.output
    assert str(result.exception).startswith(option) and len(str(result.exception).splitlines()) == 1
    assert not hub.commits and not hub.created and not reg.exists()


def test_a_run_that_held_nothing_out_publishes_its_training_pair_metrics_as_such(tmp_path):
    """With nothing held out, adapt measures its training pairs; push published them as "heldout" metrics."""
    from flowcli.cli.weights import _registry_entry

    def metrics(footage: dict) -> dict:
        provenance = {"footage": footage, "heldout_after": {"photo": 0.1}, "gt_after": {"sintel": {"epe": 2.0}}}
        metadata = {"flowcli.provenance": provenance}
        return _registry_entry(tmp_path / "m.safetensors", metadata, "hf://me/r/m.safetensors", "m.safetensors",
                               "0" * 64, 1)["metrics"]  # fmt: skip

    gt = {"sintel": {"epe": 2.0}}
    assert metrics({"measured_on": "training"}) == {"training_pairs": {"photo": 0.1}, "gt": gt}
    assert metrics({"measured_on": "heldout"}) == metrics({}) == {"heldout": {"photo": 0.1}, "gt": gt}


def test_push_help_says_what_json_replaces():
    """--json shared the other weights commands' help, 'instead of a table'; push prints no table."""
    result = CliRunner().invoke(_app(), ["weights", "push", "--help"], env={"COLUMNS": "200"})
    assert "instead of the hf:// source" in result.stdout and "table" not in result.stdout
