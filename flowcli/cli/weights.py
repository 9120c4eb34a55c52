"""`flowcli weights`: list, inspect, pre-fetch and verify pretrained checkpoints.

Results (tables, JSON, paths) go to stdout; progress and messages to stderr.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flowcli import registry
from flowcli.console import natural_width, print_at_natural_width, print_error, print_table
from flowcli.cli.options import nonempty_path
from flowcli.errors import FlowcliError, InputError, WeightsError

weights_app = typer.Typer(
    help=(
        "Pretrained checkpoints: the registry of named models, the download cache and checksums.\n\n"
        "A NAME of task flow from `flowcli weights list` works wherever flowcli takes --weights (the face "
        "entry is what `flowcli face fit` uses); its files are downloaded on first use and checked against "
        "the registry's sha256. Files from the Hugging Face Hub (hf:// sources) live in the Hugging Face "
        "cache (HF_HOME); other downloads in $FLOWCLI_CACHE (default $XDG_CACHE_HOME/flowcli or "
        "~/.cache/flowcli).\n\n"
        "To work without network: run `flowcli weights download NAME` (or `--all`) once while online, then "
        "set FLOWCLI_OFFLINE=1 (or HF_HUB_OFFLINE=1). FLOWCLI_REGISTRY=path/to/registry.json swaps in "
        "another registry file of the same format.\n\n"
        "Results (tables, JSON, paths) go to stdout, messages to stderr. Exit codes of every weights command: 0 ok, "
        "1 other error, 2 input error, 3 output error, 4 weights error (unknown name, a file missing, corrupt or "
        "not a flowcli checkpoint, offline without a cached copy, a failed download or push)."
    ),
    no_args_is_help=True,
)

_STATUS_STYLE = {
    registry.OK: "green",
    registry.UNVERIFIED: "yellow",
    registry.NOT_DOWNLOADED: "dim",
    registry.MISSING: "red",
    registry.CORRUPT: "red",
}
_FAILED = (registry.MISSING, registry.CORRUPT)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table (for scripts).")]
OfflineOption = Annotated[bool, typer.Option("--offline", help="Use only cached weights, never the network.")]


def _fields(entry: dict) -> dict:
    """A registry entry's fields for --json next to its name: a "name" field of its own does not replace it."""
    return {key: value for key, value in entry.items() if key != "name"}


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")


def _stdout() -> Console:
    return Console()


def _fit_words(text: str, width: int) -> str:
    """`text` with each word longer than `width` broken into lines that fit, so that rich's word wrap need not cut
    a name, a number or a checksum mid-way: a URL or path between its folders; a flattened key=value between the
    parts of its dotted key, its last part kept with the value where they fit a line, else after the "=". Only a
    piece still longer than `width` is left for rich to fold."""

    def fit(word: str) -> str:
        if len(word) <= width:
            return word
        key, equals, value = word.partition("=")
        if not equals or not re.fullmatch(r"[\w.-]+", key):  # a URL or a path (or an odd word)
            pieces = re.split(r"(?<=/)", word)
        else:
            *parents, last = re.split(r"(?<=\.)", key)
            if len(last) + 1 + len(value) <= width:
                tail = [f"{last}={value}"]
            else:  # the value from a line of its own
                tail = [f"{last}=", *([value] if len(value) <= width else re.split(r"(?<=/)", value))]
            pieces = parents + tail
        lines = [""]
        for piece in pieces:
            if lines[-1] and len(lines[-1]) + len(piece) > width:
                lines.append("")
            lines[-1] += piece
        return "\n".join(lines)

    return re.sub(r"\S+", lambda match: fit(match.group()), text)


def _wrapped(text: str, width: int) -> str:
    """`text` in lines of at most `width` characters where it can be: broken at spaces, and a word longer than
    that as _fit_words breaks it."""
    import textwrap

    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [text]
    return "\n".join(_fit_words(line, width) for line in lines)


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _human_size(num_bytes: int) -> str:
    if not num_bytes:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    raise AssertionError("unreachable")


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            # e.g. an averaged checkpoint's sources: averaged_from.1.path=..., averaged_from.2.path=...
            flat.update(_flatten({str(i): item for i, item in enumerate(value, start=1)}, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _summary(mapping: dict | None, limit: int | None = None) -> str:
    items = list(_flatten(mapping or {}).items())
    text = ", ".join(f"{k}={'?' if v is None else v}" for k, v in items[:limit])
    if limit is not None and len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text or "-"


def _stage_line(number: int, stage: dict) -> str:
    """'2: recipes/x.json, 3800 steps x 4 at 192x320, 96 min' (keys it does not know appended as k=v)."""
    stage = dict(stage)
    parts = [str(stage.pop("recipe", "?"))]
    if "steps" in stage:  # batch size and crop read as "x 4 at 192x320" after it; else, or a crop that is no HxW, k=v
        steps, batch = stage.pop("steps"), stage.pop("batch_size", None)
        crop = stage.pop("crop") if isinstance(stage.get("crop"), list) and len(stage["crop"]) == 2 else None
        parts.append(f"{steps} steps" + (f" x {batch}" if batch else "") + (f" at {crop[0]}x{crop[1]}" if crop else ""))
    if "minutes" in stage:
        parts.append(f"{stage.pop('minutes')} min")
    parts += [f"{k}={v}" for k, v in stage.items()]
    return f"{number}: " + ", ".join(parts)


def _short_sha(record: dict) -> str:
    sha = record.get("sha256", registry.UNKNOWN_SHA256)
    return sha if sha == registry.UNKNOWN_SHA256 else sha[:12]


def _short_source(record: dict) -> str:
    """Where the files come from, in a few words for the table: bundled, the URL's host, hf://OWNER/REPO;
    `weights info` and --json show the whole source."""
    source = record["source"]
    if source.startswith("bundled:"):
        return "bundled"
    if source.startswith(("https://", "http://")):
        return urlsplit(source).netloc
    if source.startswith("hf://"):
        return "/".join(source.split("/")[:4])
    return source


def _total_size(entry: dict) -> int:
    sizes = [record.get("size") or 0 for record in entry["files"]]
    return 0 if 0 in sizes else sum(sizes)


@weights_app.command(
    "list",
    help=(
        "List the models in the registry: task, size, where the files come from, checksum and key metrics.\n\n"
        "Any NAME of task flow works as `flowcli estimate --weights NAME`; the face entry holds the landmark "
        "models `flowcli face fit` downloads. sha256 \"TBD\" means the entry has no "
        "recorded checksum yet, so its file cannot be verified (an hf:// file is checked against the Hub's own).\n\n"
        "--json prints one JSON document: registry (the registry file) and models, a list of the registry entries "
        "(name and the entry's fields as in the registry file: task, description, files, license...) with "
        "local_path (the primary file's local copy, or null).\n\n"
        "Example: flowcli weights list --json | jq '.models[].name'"
    ),
)
def list_command(json_output: JsonOption = False) -> None:
    models = registry.load_registry()["models"]
    if json_output:
        out = []
        for name, entry in models.items():
            local = registry.local_copy(name)
            out.append({"name": name, **_fields(entry), "local_path": str(local) if local else None})
        _echo_json({"registry": str(registry.registry_path()), "models": out})
        return
    _print_list_table(models)


_LIST_COLUMNS = ("task", "size", "source", "sha256", "metrics")


def _list_table(models: dict, columns: tuple[str, ...] = _LIST_COLUMNS) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # only metrics may wrap, at spaces: a name, checksum or number broken over lines is unreadable
    table.add_column("name", no_wrap=True)
    for column in columns:
        if column == "source":  # a host too long for it ends in "…"; `weights info` shows the whole source
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=22)
        else:
            table.add_column(column, no_wrap=column != "metrics")
    for name, entry in models.items():
        primary = entry["files"][0]
        cells = {
            "task": entry.get("task") or "?",
            "size": _human_size(_total_size(entry)),
            "source": _short_source(primary)
            + (f"\n(+{len(entry['files']) - 1} files)" if len(entry["files"]) > 1 else ""),
            "sha256": _short_sha(primary),
            "metrics": _summary(entry.get("metrics"), limit=3).replace(", ", "\n"),  # one metric a line
        }
        table.add_row(Text(name), *(Text(cells[column]) for column in columns))
    return table


def _print_list_table(models: dict) -> None:
    """One table at its natural width where stdout is not a terminal; on a terminal too narrow for it (80
    columns), as eval does: several tables of the columns that fit, each with the names, rather than one whose
    metrics and hosts rich would fold mid-word ("chairs_epe=3" / ".5")."""
    console = _stdout()
    # a line of its own, not the table's title: that is wrapped to the table's width, a long registry path folded
    console.print(Text(f"flowcli weights ({registry.registry_path()})", style="table.title"), soft_wrap=True)
    print_table(console, lambda keys: _list_table(models, _LIST_COLUMNS if keys is None else tuple(keys)),
                list(_LIST_COLUMNS))


@weights_app.command(
    "info",
    help=(
        "Show everything known about a model: registry fields, its files and their local state, and the "
        "metadata stored inside the checkpoint (architecture config, training provenance) when a local copy "
        "exists.\n\n"
        "Given a checkpoint file instead of a name, shows that file's metadata; given an hf://OWNER/REPO/FILE\\[@REV] "
        "or https:// source, fetches and verifies it as --weights does (--offline, FLOWCLI_OFFLINE=1 or "
        "HF_HUB_OFFLINE=1: the cached copy only) and shows that file's.\n\n"
        "--json prints one JSON document: name, the registry fields, files (each with status and local_path) and "
        "checkpoint (the metadata inside the local copy, or null); for a checkpoint file: path, sha256 and "
        "checkpoint; for a source, source as well.\n\n"
        "Example: flowcli weights info flowcli-pwc-synth"
    ),
)
def info_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A registry name (see `flowcli weights list`), a checkpoint file, or an hf:// or https:// source.",
            metavar="NAME",
        ),
    ],
    json_output: JsonOption = False,
    offline: OfflineOption = False,
) -> None:
    registry.refuse_empty(
        name, "a registry name (see `flowcli weights list`), a checkpoint file, or an hf:// or https:// source"
    )
    try:
        entry = registry.model_entry(name)
    except WeightsError:
        # a checkpoint file or a source; a missing path or a folder is said as such, an unknown name lists the
        # known ones
        source = name if name.startswith(registry.SOURCE_PREFIXES) else None
        _show_file_metadata(registry.resolve(name, offline=offline), json_output, source)
        return
    statuses = dict(registry.verify(name))
    files = []
    for record in entry["files"]:
        local = registry.local_copy(name, record["path"])
        files.append({**record, "status": statuses[record["path"]], "local_path": str(local) if local else None})
    primary = files[0]["local_path"]
    is_checkpoint = files[0]["path"].endswith(".safetensors")  # face entries hold .tflite models
    checkpoint = _checkpoint_metadata(Path(primary)) if primary and is_checkpoint else None
    if json_output:
        _echo_json({"name": name, **_fields(entry), "files": files, "checkpoint": checkpoint})
        return

    console = _stdout()
    console.print(Text.assemble((name, "bold"), f"  ({entry.get('task') or '?'})"), highlight=False)
    if entry.get("description"):  # registry text is shown as written: a [tag] in it is not rich markup
        console.print(Text(str(entry["description"])), highlight=False)
    fields = [
        ("license", str(entry.get("license", "?"))),
        ("architecture", _summary(entry.get("architecture"))),
    ]
    training = dict(entry.get("training") or {})
    stages = training.pop("stages", None)
    fields.append(("training", _summary(training)))
    if stages:
        fields.append(("stages", "\n".join(_stage_line(i, stage) for i, stage in enumerate(stages, start=1))))
    fields.append(("metrics", _summary(entry.get("metrics")) if entry.get("metrics") else "none recorded"))
    for record in files:
        fields += [("file", record["path"]), ("  source", record["source"])]
        if "member" in record:
            fields.append(("  member", f"{record['member']} (archive sha256 {record['archive_sha256'][:12]}...)"))
        fields += [
            ("  size", _human_size(record.get("size") or 0)),
            ("  sha256", record.get("sha256", registry.UNKNOWN_SHA256)),
            ("  status", Text(record["status"], style=_STATUS_STYLE.get(record["status"], ""))),
            ("  local copy", record["local_path"] or "none"),
        ]
    if is_checkpoint and checkpoint is None:
        fields.append(("checkpoint", f"no local copy; `flowcli weights download {name}` fetches it"))
    elif is_checkpoint:
        fields += _checkpoint_fields(checkpoint)
    _print_fields(console, fields)


def _print_fields(console: Console, fields: list[tuple[str, str | Text]]) -> None:
    """Label and value rows, the values wrapped to the console's width at spaces and, in a word longer than a line
    (a URL, a path, a checksum after its key=), between folders or after the "=" rather than mid-name."""
    value_width = max(console.width - max(len(label) for label, _ in fields) - 2, 20)  # 2: the gap between them
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in fields:
        table.add_row(Text(label), value if isinstance(value, Text) else Text(_fit_words(value, value_width)))
    console.print(table)


def _checkpoint_metadata(path: Path) -> dict:
    from flowcli.checkpoint import read_metadata

    try:
        return read_metadata(path)
    except WeightsError as error:
        return {"error": str(error)}


def _checkpoint_fields(metadata: dict) -> list[tuple[str, str | Text]]:
    if "error" in metadata:
        return [("checkpoint", Text(metadata["error"], style="red"))]
    checkpoint_format = f"flowcli format {metadata.get('flowcli.format')}, model {metadata.get('flowcli.model')}"
    return [
        ("checkpoint", checkpoint_format),
        ("config", _summary(metadata.get("flowcli.config"))),
        ("provenance", _summary(metadata.get("flowcli.provenance"))),
    ]


def _show_file_metadata(path: Path, json_output: bool, source: str | None = None) -> None:
    metadata = _checkpoint_metadata(path)
    if "error" in metadata:
        raise WeightsError(metadata["error"])
    if json_output:
        where = {"source": source} if source else {}
        _echo_json({**where, "path": str(path), "sha256": registry.sha256_file(path), "checkpoint": metadata})
        return
    fields = [("source", source)] if source else []
    fields += [("file", str(path)), ("sha256", registry.sha256_file(path)), *_checkpoint_fields(metadata)]
    _print_fields(_stdout(), fields)


@weights_app.command(
    "download",
    help=(
        "Fetch models into the cache now and verify their sha256, so later runs work offline.\n\n"
        "Prints one `NAME<TAB>PATH` line per file. Files already cached and intact are not downloaded again; "
        "a corrupt cached file is replaced. With several models (or --all), one that fails does not stop the "
        "others: each failure is one error line, and the exit code is 4 if any failed.\n\n"
        "Example: flowcli weights download --all && export FLOWCLI_OFFLINE=1"
    ),
)
def download_command(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(help="Registry names, or hf://OWNER/REPO/FILE\\[@REV] / https:// sources.", metavar="NAME"),
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Fetch every model in the registry.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    if all_models and names:
        raise typer.BadParameter(
            f"--all fetches every model; drop it to fetch only {' '.join(names)}", param_hint="NAME"
        )
    if all_models:
        names = registry.list_models()
    elif not names:
        raise typer.BadParameter(
            "name at least one model (see `flowcli weights list`), or pass --all", param_hint="NAME"
        )
    for name in names:  # before any download: the others would be fetched, then the run fail at the end
        registry.refuse_empty(name, "registry names (see `flowcli weights list`), hf:// or https:// sources, or --all")
    models = registry.load_registry()["models"]
    failed = []
    for name in names:
        try:
            paths = registry.fetch_model(name, quiet=quiet) if name in models else [registry.resolve(name, quiet=quiet)]
        except FlowcliError as error:
            if len(names) == 1:
                raise
            # one model's failure must not keep the others from being fetched: say it, go on, fail at the end
            print_error(error if str(error).startswith(name) else WeightsError(f"{name}: {error}"))
            failed.append(name)
            continue
        for path in paths:
            typer.echo(f"{name}\t{path}")
    if failed:
        raise WeightsError(
            f"{len(failed)} of {len(names)} models could not be fetched: {', '.join(failed)} (errors above); "
            f"fix those and run `flowcli weights download {' '.join(failed)}` again"
        )


@weights_app.command(
    "verify",
    help=(
        "Check local copies against the registry's sha256 and size, without downloading anything.\n\n"
        "Status per file: ok; unverified (no sha256 to check it against: none recorded yet, and for an hf:// file "
        "none from the Hub either); not downloaded; missing (a bundled file "
        "absent from this installation); corrupt (wrong size or sha256; a download is re-fetched on next use or by "
        "`flowcli weights download NAME`, a bundled file needs a reinstall of flowcli). Exits with code 4 when a "
        "file is missing or corrupt.\n\n"
        "Given an hf://OWNER/REPO/FILE\\[@REV] or https:// source instead of a name, checks its cached copy "
        "against the registry entry that uses that source, else (hf://) against the Hub's sha256; an https:// URL "
        "in no registry entry has no sha256 to check it against (unverified).\n\n"
        "Given a checkpoint file, checks it against the registry entry whose bundled or cached copy it is. Any other "
        "file has no recorded sha256 (unverified): flowcli checks that it loads as a flowcli model, as --weights "
        "loads it (else corrupt), and prints its sha256, to compare with the one published with it.\n\n"
        "--json prints one JSON document: a list of {name, file, status}; for a checkpoint file in no registry "
        "entry, with its sha256.\n\n"
        "Example: flowcli weights verify flowcli-pwc-synth"
    ),
)
def verify_command(
    name: Annotated[
        Optional[str],
        typer.Argument(
            help="One registry name, an hf:// or https:// source, or a checkpoint file; default: every model.",
            metavar="NAME",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    from flowcli.console import stderr

    registry.refuse_empty(
        name, "a registry name, an hf:// or https:// source or a checkpoint file, or leave it out for every model"
    )
    models = registry.load_registry()["models"]
    if name is None or name in models or name.startswith(registry.SOURCE_PREFIXES):
        rows = [row for model in ([name] if name else list(models)) for row in _verify_rows(model)]
    else:
        # a checkpoint file; a missing path or a folder is said as such, an unknown name lists the known ones
        path = registry.resolve(name)
        found = registry.verify_path(path)
        if found is None:
            _verify_unregistered_file(name, path, json_output)
            return
        model, record, status = found
        rows = [(model, record["path"], status, record["source"])]
    if json_output:
        _echo_json([{"name": model, "file": file, "status": status} for model, file, status, _ in rows])
    else:
        _print_verify_table(rows)
    if name is not None and name.startswith(registry.SOURCE_PREFIXES):
        note = _source_note(name, rows[0][2])
        if note:
            stderr.print(note, highlight=False, soft_wrap=True)
    failed = [row for row in rows if row[2] in _FAILED]
    if failed:
        fixes = []
        # a bundled file is not downloaded, so `weights download` cannot replace it
        if any(source.startswith("bundled:") for *_, source in failed):
            fixes.append("reinstall flowcli for missing or corrupt bundled files")
        downloads = list(dict.fromkeys(model for model, *_, source in failed if not source.startswith("bundled:")))
        if downloads:
            fixes.append(f"`flowcli weights download {' '.join(downloads)}` fetches corrupt ones again")
        listed = ", ".join(
            f"{model if model == source else f'{model}/{file}'} ({status})" for model, file, status, source in failed
        )
        raise WeightsError(f"{len(failed)} file(s) failed verification: {listed}; {'; '.join(fixes)}")


def _print_verify_table(rows: list[tuple[str, str, str, str]]) -> None:
    """One table, at its natural width where stdout is not a terminal; on a terminal too narrow for it (80
    columns), file paths (then names, then statuses at their space) are broken into lines that fit: paths between
    folders ("mediapipe/" over "face_landmark.tflite"), not mid-name as rich would."""
    columns = [[row[i] for row in rows] for i in range(3)]  # names, files, statuses

    def verify_table(widths: list[int] | None = None) -> Table:
        table = Table()
        # fold only what is still too long after the breaks: a name cut short or folded mid-way is unreadable
        for column in ("name", "file", "status"):
            table.add_column(column, overflow="fold")
        for model, file, status, _ in rows:
            cells = [model, file, status] if widths is None else list(map(_wrapped, (model, file, status), widths))
            table.add_row(Text(cells[0]), Text(cells[1]), Text(cells[2], style=_STATUS_STYLE.get(status, "")))
        return table

    console = _stdout()
    table = verify_table()
    if not console.is_terminal:
        print_at_natural_width(console, table)
        return
    natural = natural_width(console, table)
    if natural <= console.width:
        console.print(table)
        return
    widths = [max(map(len, column)) for column in columns]
    room = console.width - (natural - sum(widths))  # what the three columns' text may take
    for i in (1, 0, 2):
        narrowest = max(len(line) for text in columns[i] for line in _wrapped(text, 1).splitlines())
        widths[i] = max(narrowest, widths[i] - (sum(widths) - room))
        if sum(widths) <= room:
            break
    console.print(verify_table(widths))


def _verify_unregistered_file(name: str, path: Path, json_output: bool) -> None:
    """`verify` of a checkpoint file in no registry entry: with no sha256 to check it against, check that every
    tensor reads (a damaged file may still have a sound header) and that it loads as a flowcli model, and print its
    sha256 for the user to compare."""
    from flowcli.checkpoint import check_readable, load_checkpoint
    from flowcli.console import say

    try:
        sha256 = registry.sha256_file(path)
    except OSError as error:
        raise WeightsError(f"cannot read {path} ({error.strerror or error}); fix its permissions") from None
    try:
        check_readable(path)
        load_checkpoint(path)  # strictly, as --weights loads it
        problem = None
    except WeightsError as error:
        problem = str(error)
    status = registry.UNVERIFIED if problem is None else registry.CORRUPT
    if json_output:
        _echo_json([{"name": name, "file": path.name, "status": status, "sha256": sha256}])
    else:
        _print_verify_table([(name, path.name, status, name)])
    if problem is not None:
        raise WeightsError(f"1 file(s) failed verification: {name} (corrupt); {problem}")
    say(
        f"no sha256 is recorded for {name} (no registry entry holds it), so flowcli checked only that it loads "
        f"as a flowcli model; its sha256 is {sha256}: compare it with the one published with the file"
    )


def _verify_rows(name: str) -> list[tuple[str, str, str, str]]:
    """(name, file, status, source) for each file of a registry model, or for a source spec given as `name`."""
    if name.startswith(registry.SOURCE_PREFIXES):
        return [(name, *registry.verify_source(name), name)]
    sources = {record["path"]: record["source"] for record in registry.model_entry(name)["files"]}
    return [(name, file, status, sources[file]) for file, status in registry.verify(name)]


def _source_note(source: str, status: str) -> str | None:
    """What a source's verify status means and what to do, in one line (the table says only the status)."""
    if status == registry.NOT_DOWNLOADED:
        return f"{source} is not downloaded; run `flowcli weights download {source}` to fetch it"
    if status == registry.UNVERIFIED:
        hub = ", and the Hub stores the file without one (not with git LFS)" if source.startswith("hf://") else ""
        return (
            f"no sha256 is known for {source} (no registry entry records one{hub}), so flowcli cannot verify it; "
            "list it with its sha256 in a FLOWCLI_REGISTRY file to have it checked"
        )
    return None


def _registry_entry(path: Path, metadata: dict, source: str, path_in_repo: str, sha256: str, size: int) -> dict:
    """A registry entry (flowcli/weights.json format) for a pushed checkpoint."""
    provenance = metadata.get("flowcli.provenance") or {}
    config = metadata.get("flowcli.config") or {}
    training = {k: provenance[k] for k in ("trained_by", "steps", "date", "mode") if k in provenance}
    if isinstance(provenance.get("base_weights"), dict):
        training["base_weights"] = provenance["base_weights"].get("spec")
    if isinstance(provenance.get("footage"), dict):
        training["footage_fingerprint"] = provenance["footage"].get("fingerprint")
    footage = provenance.get("footage") if isinstance(provenance.get("footage"), dict) else {}
    # a run that held no pairs out measured its training pairs: not published as held-out metrics
    measured = "training_pairs" if footage.get("measured_on") == "training" else "heldout"
    metrics = {}
    for key, name in (("heldout_after", measured), ("gt_after", "gt")):
        if isinstance(provenance.get(key), dict):
            metrics[name] = provenance[key]
    return {
        "task": "stereo" if str(provenance.get("mode", "")).startswith("stereo") else "flow",
        "description": f"{path.name}, published with `flowcli weights push`"
        + (f" ({provenance['trained_by']})" if provenance.get("trained_by") else ""),
        "architecture": {"family": metadata.get("flowcli.model", "flownet"), "matching": config.get("matching")},
        "files": [{"path": path_in_repo, "source": source, "sha256": sha256, "size": size}],
        "license": "TBD",
        "training": training,
        "metrics": metrics,
    }


def _check_checkpoint_file(file: Path, what_to_do: str) -> None:
    if file.is_dir():
        raise WeightsError(f"{file} is a folder, not a checkpoint file; {what_to_do}")
    if not file.is_file():
        raise WeightsError(f"{file} does not exist; {what_to_do}")


def _read_registry_for_push(path: Path) -> dict:
    """The registry JSON that `push --registry` adds to ({"models": {}} if absent), checked before any upload."""
    from flowcli.io.atomic import check_writable

    check_writable(path, overwrite=True)  # not a folder; its folder can be made and written
    if not path.exists():
        return {"models": {}}
    try:
        data = registry.parse_registry_json(path.read_text(encoding="utf-8"), path)  # a repeated name: refused
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path} is not valid JSON (line {error.lineno}); fix or remove it") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsError(f"cannot read registry {path} ({error}); fix it or choose another --registry") from None
    if isinstance(data, dict):
        data.setdefault("models", {})  # an empty registry ({}) is one to add to
    registry._check_registry(data, path)
    return data


def _parse_mix(mix: str, count: int) -> list[float]:
    """--mix as one weight per checkpoint: finite, non-negative, with a positive sum."""
    try:
        weights = [float(v) for v in mix.split(",")]
    except ValueError:
        raise InputError(f"--mix {mix!r} is not a comma-separated list of numbers, e.g. 0.5,0.5") from None
    if len(weights) != count or not math.isfinite(sum(weights)) or min(weights) < 0 or sum(weights) <= 0:
        raise InputError(
            f"--mix needs {count} finite, non-negative weights with a positive sum, e.g. {','.join(['1'] * count)}; "
            f"got {mix}"
        )
    return weights


def _hub_error(error: Exception, repo: str, endpoint: str) -> WeightsError:
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return WeightsError(
            f"{endpoint} refused to let you write to {repo} (HTTP {status}); set HF_TOKEN to a token with write "
            "access (or run `hf auth login`) and check the repository name"
        )
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return WeightsError(f"cannot push to {repo} on {endpoint}: {type(error).__name__}: {first}")


@weights_app.command(
    "average",
    help=(
        "Average the weights of checkpoints of one architecture into a new checkpoint (a \"model soup\").\n\n"
        "Useful for stages of one training lineage, e.g. a model and the model fine-tuned from it: the average "
        "often keeps the strengths of both. The output's provenance records every source, its sha256 and weight.\n\n"
        "Example: flowcli weights average runs/a/last.safetensors runs/b/last.safetensors -o soup.safetensors --fp16"
    ),
)
def average_command(
    # str, not Path: a Path would read "" (an unset variable) as the current folder
    files: Annotated[
        list[str], typer.Argument(help="Two or more flowcli checkpoints with the same architecture.", metavar="FILES")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="The averaged checkpoint to write (.safetensors).")],
    mix: Annotated[
        Optional[str],
        typer.Option("--mix", help="Comma-separated weights, one per file, scaled to sum to 1 (default: equal)."),
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store float16 (half the size).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    import torch

    from flowcli.checkpoint import average_checkpoints, save_checkpoint
    from flowcli.console import say
    from flowcli.io.atomic import check_writable

    if len(files) < 2:
        raise InputError("averaging needs at least two checkpoints; give two or more files")
    weights = _parse_mix(mix, len(files)) if mix is not None else None  # --mix "" is refused, not ignored
    if not all(files):
        raise WeightsError('a checkpoint to average is "" (empty); give flowcli .safetensors checkpoints')
    output = nonempty_path(output, "--output", "the .safetensors file to write")
    files = [Path(file) for file in files]
    for file in files:
        _check_checkpoint_file(file, "give flowcli .safetensors checkpoints to average")
    # what it writes, and what `flowcli adapt -o` asks for too; a folder is said to be one by check_writable
    if output.suffix != ".safetensors" and not output.is_dir():
        raise InputError(f"the output {output} must be a .safetensors file")
    check_writable(output, overwrite)  # before loading anything; refuses a folder even with --overwrite
    model = average_checkpoints(list(files), weights)
    save_checkpoint(model, output, provenance=model.provenance, dtype=torch.float16 if fp16 else None,
                    overwrite=overwrite)  # fmt: skip
    say(f"wrote {output}: the average of {len(files)} checkpoints")


@weights_app.command(
    "push",
    help=(
        "Publish a flowcli checkpoint (e.g. from `flowcli adapt`) to a Hugging Face Hub model repository.\n\n"
        "Creates the repository if needed and uploads FILE with huggingface_hub (HF_ENDPOINT and HF_TOKEN are "
        "honoured; HF_TOKEN needs write access). Prints the hf:// source, pinned to the new commit, which works "
        "anywhere flowcli takes weights (--weights hf://OWNER/NAME/FILE@COMMIT), and a registry entry with the "
        "file's sha256; --registry FILE adds that entry to a registry JSON (created if missing) that "
        "FLOWCLI_REGISTRY can point at.\n\n"
        "--json prints one JSON document instead: source, commit, name, entry (the registry entry) and registry "
        "(the --registry file, or null).\n\n"
        "Example: flowcli weights push my_model.safetensors --repo me/my-flow --registry my_registry.json"
    ),
)
def push_command(
    # str, not Path (nor --registry): a Path would read "" (an unset variable) as the current folder
    file: Annotated[
        str, typer.Argument(help="A flowcli checkpoint (.safetensors with flowcli metadata).", metavar="FILE")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository OWNER/NAME (created if missing).")],
    path_in_repo: Annotated[
        Optional[str], typer.Option("--path-in-repo", help="File name in the repository (default: FILE's name).")
    ] = None,
    revision: Annotated[str, typer.Option("--revision", help="Branch to commit to.")] = "main",
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Commit message.")] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Registry name of the entry (default: the repository name).")
    ] = None,
    registry_file: Annotated[
        Optional[str], typer.Option("--registry", help="Add the entry to this registry JSON file.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an entry of the same --name in the --registry file.")
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON document on stdout instead of the hf:// source (for scripts)."),
    ] = False,
) -> None:
    import hashlib
    import os

    from flowcli.checkpoint import load_checkpoint, read_metadata

    if not file:
        raise WeightsError('FILE is "" (empty); give the .safetensors file to publish')
    registry_file = nonempty_path(
        registry_file, "--registry", "the registry JSON file to add the entry to, or leave it out"
    )
    file = Path(file)
    _check_checkpoint_file(file, "give the .safetensors file to publish")
    offline = registry.offline_reason()
    if offline is not None:
        raise WeightsError(f"cannot push while flowcli is offline ({offline}); unset it to publish")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise InputError(f"--repo {repo!r} is not OWNER/NAME; give the Hub repository as e.g. me/my-flow")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise InputError(
            f"--repo {repo!r} is not a valid Hub repository name ({str(error).rstrip('.')}); give one like me/my-flow"
        ) from None
    # "" is refused below, not taken for the default
    path_in_repo = file.name if path_in_repo is None else path_in_repo
    name = parts[1] if name is None else name
    # the registry entry must be one flowcli reads back: a bad one would make the whole --registry file unusable
    # a trailing "/" names a folder: hf://OWNER/NAME/DIR/ would then resolve to DIR, which is not the file
    if not registry._is_plain_relative(path_in_repo) or path_in_repo.endswith(("/", "\\")):
        raise InputError(
            f"--path-in-repo {path_in_repo!r} must be a relative path to a file inside the repository (not empty, "
            "no '..', not absolute, not ending in '/')"
        )
    if not registry._is_plain_relative(name):
        raise InputError(
            f"--name {name!r} must not be empty, absolute, contain '..' or a ':' before its first '/'; give a name "
            "like my-flow"
        )
    # read and check the registry before uploading, so a bad one stops the push instead of failing after it
    registry_data = _read_registry_for_push(registry_file) if registry_file is not None else None
    if registry_data is not None and name in registry_data["models"] and not overwrite:
        raise WeightsError(
            f"{registry_file} already has a model {name!r}; pass --overwrite to replace it or choose another --name"
        )
    # What is hashed is what is uploaded, even if a training run replaces FILE meanwhile.
    data = file.read_bytes()
    metadata = read_metadata(file)  # refuses anything that is not a flowcli checkpoint
    load_checkpoint(file)  # and one that does not load strictly (wrong tensors, NaN) is not published either
    if hashlib.sha256(data).hexdigest() != registry.sha256_file(file):
        raise WeightsError(f"{file} changed while it was being checked; push it again once it is written")

    from huggingface_hub import HfApi

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint)  # token: HF_TOKEN, else the stored login
    try:
        api.create_repo(repo, private=True if private else None, exist_ok=True, repo_type="model")
        commit = api.upload_file(
            path_or_fileobj=data, path_in_repo=path_in_repo, repo_id=repo, repo_type="model",
            revision=revision, commit_message=message or f"Upload {path_in_repo} with flowcli weights push",
        )  # fmt: skip
    except Exception as error:  # huggingface_hub's HTTP stack varies by version: one line for any failure
        raise _hub_error(error, repo, endpoint) from None
    oid = getattr(commit, "oid", None)
    source = f"hf://{repo}/{path_in_repo}" + (f"@{oid}" if oid else f"@{revision}")
    entry = _registry_entry(file, metadata, source, path_in_repo, hashlib.sha256(data).hexdigest(), len(data))
    if registry_file is not None:
        from flowcli.io.atomic import atomic_path

        registry_data["models"][name] = entry
        with atomic_path(registry_file, overwrite=True) as tmp:
            tmp.write_text(json.dumps(registry_data, indent=2) + "\n", encoding="utf-8")
    if json_output:
        _echo_json({"source": source, "commit": oid, "name": name, "entry": entry,
                    "registry": str(registry_file) if registry_file else None})
        return
    typer.echo(source)
    from flowcli.console import say, stderr

    say(f"pushed {file} to {repo} ({entry['files'][0]['sha256'][:12]})")
    if registry_file is not None:
        say(f"registry entry {name!r} written to {registry_file}")
    else:
        say("registry entry (add it to a FLOWCLI_REGISTRY file, or pass --registry FILE):")
        stderr.print_json(json.dumps({name: entry}))
