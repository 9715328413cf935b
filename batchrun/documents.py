"""A folder (or a quoted glob) of files as a run's input: one item per file, in path order.

Each item's stored request holds a placeholder where the file goes, `{"batchrun_file": {...}}` with the file's
relative path, size and SHA-256, never its bytes: the database stays small, and a file is read only when its
item is sent (`resolve`), where its hash is checked again. The request hash (the response cache's key) covers
the placeholder, so it covers the file's content: an unchanged file is answered from the cache, a changed one
is a new request. A file that changed after its run was created is refused, never sent under the old hash:
`check_unchanged` refuses the whole run before anything is sent (size differs), and `resolve` fails the item
(same size, other bytes).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import InputError, UsageError
from batchrun.inputs import MAX_PROBLEMS, MAX_REQUEST_BYTES, Item, safe_custom_id
from batchrun.job import Job, RenderError, render

TEXT_SUFFIXES = frozenset(
    {".txt", ".md", ".markdown", ".text", ".rst", ".csv", ".tsv", ".json", ".html", ".htm", ".xml", ".yaml",
     ".yml", ".log", ".org", ".tex"}
)  # fmt: skip
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}  # fmt: skip
PDF = "application/pdf"
MAX_PDF_PAGES = 100
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 8000
PDF_PAGE_RE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")  # the emulator's count (batchrun/emulator/media.py)
MARK = "batchrun_file"
TEXT_FIELD = "text"
_SENTINEL = "\x00batchrun-text\x00"
FILES_BETA = "files-api-2025-04-14"
FIELDS = ("file", "name", "stem", "suffix", "bytes")
SKIPPED_SHOWN = 20


class FileChanged(Exception):
    """A file's bytes are not those its item was created with."""


def is_folder_input(path: str) -> bool:
    """A folder, or a glob (a file whose name holds `*`, `?` or `[` is still that file)."""
    return Path(path).is_dir() or (glob.has_magic(path) and not Path(path).exists())


def root_of(label: str) -> Path:
    """The directory relative paths start from: the folder itself, or a glob's part before its first wildcard."""
    if not glob.has_magic(label):
        return Path(label)
    parts = Path(label).parts
    base = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*base) if base else Path(".")


def folder_label(path: str) -> str:
    """The input as a run records it: the folder's real path, or the glob with its fixed part made absolute."""
    if not glob.has_magic(path):
        return str(Path(path).resolve())
    root = root_of(path)
    rest = Path(path).relative_to(root) if root != Path(".") else Path(path)
    return str(root.resolve() / rest)


def list_files(label: str) -> tuple[Path, list[str]]:
    """(root, relative POSIX paths of the regular files, sorted); hidden files and folders are left out."""
    root = root_of(label)
    if glob.has_magic(label):
        found = (Path(p) for p in glob.glob(label, recursive=True))
        rels = [p.relative_to(root).as_posix() for p in found if p.is_file()]
    else:
        if not root.is_dir():
            raise UsageError(f"{label}: no such folder (check the path)")
        rels = []
        for top, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rels += [(Path(top) / f).relative_to(root).as_posix() for f in files if not f.startswith(".")]
    rels = [r for r in rels if not any(part.startswith(".") for part in r.split("/"))]
    return root, sorted(rels)


@dataclass(frozen=True, slots=True)
class FileItem(Item):
    file: tuple[str, str, int, int] | None = None  # (relative path, sha256, bytes, extra bytes when sent)


@dataclass(slots=True)
class Folder:
    """A folder input: its label, root, the files to send (relative paths, sorted) and the job for them."""

    label: str
    root: Path
    files: list[str]
    job: Job

    @property
    def sha256(self) -> str:
        """The run's identity: every file's path, size and modification time (a changed file makes a new run;
        its items are then answered from the cache when their content is the same)."""
        digest = hashlib.sha256(b"folder\0")
        for rel in self.files:
            st = (self.root / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def items(self) -> Iterator[Item]:
        yield from read_files(self.root, self.files, self.job)


def folder_input(path: str, job: Job) -> Folder | None:
    """The folder (or glob) input `path`, or None when it is a file; a job for it is checked here."""
    if str(path) == "-" or not is_folder_input(path):
        return None
    label = folder_label(path)
    root, rels = list_files(path)
    kinds = [(r, kind_of(r)) for r in rels]
    files = [r for r, k in kinds if k is not None]
    skipped = [r for r, k in kinds if k is None]
    if not files:
        raise UsageError(
            f"{path}: no files to send (supported: text such as .txt and .md, .pdf, .png, .jpg, .gif, .webp"
            + (f"; {len(skipped)} other file(s) skipped" if skipped else "")
            + ")"
        )
    if job.template is None:
        raise UsageError(
            f"{path}: a folder input needs the job's template, what to ask about each file "
            '(e.g. template = "Summarise {name} in three sentences.")'
        )
    return Folder(label, root, files, job_for_folder(job))


def job_for_folder(job: Job) -> Job:
    """The job as a folder run keeps it: the file's fields are kept for every table export."""
    keep = [*FIELDS, *(k for k in job.keep if k not in FIELDS)]
    return job.with_overrides(keep=keep)


def kind_of(rel: str) -> str | None:
    suffix = Path(rel).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".pdf":
        return "pdf"
    if suffix in IMAGE_TYPES:
        return "image"
    return None


def read_files(root: Path, rels: list[str], job: Job) -> Iterator[Item]:
    """One item per file, each read once (hash, checks) and let go; every problem is reported at the end."""
    problems: list[str] = []
    more = 0
    for n, rel in enumerate(rels, start=1):
        try:
            yield file_item(root, rel, n, job)
        except RenderError as e:
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"{rel}: {e}")
            else:
                more += 1
    if problems:
        raise InputError(problems, more)


def file_item(root: Path, rel: str, line_no: int, job: Job) -> FileItem:
    path = root / rel
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RenderError(f"cannot read it: {e.strerror} (make it readable)") from None
    kind = kind_of(rel)
    media_type, text = check_file(rel, kind, raw)
    suffix = Path(rel).suffix
    fields: dict[str, Any] = {"file": rel, "name": Path(rel).name, "stem": Path(rel).stem, "suffix": suffix,
                              "bytes": len(raw)}  # fmt: skip
    sha = hashlib.sha256(raw).hexdigest()
    held = {"file": rel, "bytes": len(raw), "sha256": sha, "media_type": media_type}
    inline = text is not None and TEXT_FIELD in template_fields(job.template or "")
    if inline:
        prompt = _fill(job.template or "", {**fields, TEXT_FIELD: _SENTINEL})
        parts = prompt.split(_SENTINEL)
        if len(parts) < 2:
            raise RenderError("the template's {text} has a conversion or format (write it as {text})")
        placeholder = {MARK: {**held, "as": "prompt", "parts": parts}}
        content = [placeholder]
    else:
        placeholder = {MARK: {**held, "as": "image" if kind == "image" else "document"}}
        content = [placeholder, {"type": "text", "text": _fill(job.template or "", fields)}]
    params = render({"messages": [{"role": "user", "content": content}]}, job)
    block = _block(placeholder[MARK], raw, text, None)
    extra = len(orjson.dumps(block, option=orjson.OPT_SORT_KEYS)) - len(
        orjson.dumps(placeholder, option=orjson.OPT_SORT_KEYS)
    )
    sent = len(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)) + extra
    if sent > MAX_REQUEST_BYTES:
        raise RenderError(
            f"the request with this file would be {sent / 2**20:.1f} MB, over the API's 32 MB request limit "
            "(split or compress the file, or leave it out)"
        )
    custom_id = safe_custom_id(rel)
    return FileItem(line_no, custom_id, params, rel, fields, (rel, sha, len(raw), extra))


def template_fields(template: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _fill(template: str, fields: dict[str, Any]) -> str:
    missing = template_fields(template) - set(fields)
    if missing:
        raise RenderError(
            f"the template names {', '.join(sorted(missing))}, which a file does not have "
            f"(a file's fields: {', '.join(FIELDS)}, and text for a text file)"
        )
    return template.format_map(fields)


def check_file(rel: str, kind: str | None, raw: bytes) -> tuple[str, str | None]:
    """(media type, text for a text file); RenderError when the file is not what its extension says, or is over
    a limit of the API."""
    if not raw:
        raise RenderError("the file is empty (remove it, or give it content)")
    if kind == "text":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise RenderError(
                f"not UTF-8 text (byte {e.start}), though its extension says text (save it as UTF-8, or rename it)"
            ) from None
        return "text/plain", text
    if kind == "pdf":
        if not raw.startswith(b"%PDF-"):
            raise RenderError("not a PDF (it does not start with %PDF-), though its extension says PDF (fix or rename)")
        pages = max(1, len(PDF_PAGE_RE.findall(raw)))
        if pages > MAX_PDF_PAGES:
            raise RenderError(f"{pages} pages, over the API's {MAX_PDF_PAGES}-page limit for a PDF (split it)")
        return PDF, None
    media_type = IMAGE_TYPES[Path(rel).suffix.lower()]
    found = image_format(raw)
    if found != media_type:
        what = f"a {found.split('/')[1].upper()} image" if found else "not an image this API reads"
        raise RenderError(f"{what}, though its extension says {media_type} (rename it, or convert it)")
    if len(raw) > MAX_IMAGE_BYTES:
        raise RenderError(f"{len(raw):,} bytes, over the API's 5 MB limit for an image (shrink or compress it)")
    size = image_size(raw, media_type)
    if size is None or min(size) < 1:
        raise RenderError(f"its {media_type} header cannot be read (save the image again)")
    if max(size) > MAX_IMAGE_SIDE:
        raise RenderError(
            f"{size[0]} x {size[1]} pixels, over the API's {MAX_IMAGE_SIDE:,}-pixel limit on a side (scale it down)"
        )
    return media_type, None


def image_format(raw: bytes) -> str | None:
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(raw: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the header, read as the emulator reads it."""
    if media_type == "image/png" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if media_type == "image/gif" and len(raw) >= 10:
        return struct.unpack("<HH", raw[6:10])
    if media_type == "image/jpeg":
        return _jpeg_size(raw)
    if media_type == "image/webp":
        return _webp_size(raw)
    return None


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        (length,) = struct.unpack(">H", raw[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp_size(raw: bytes) -> tuple[int, int] | None:
    chunk = raw[12:16]
    if chunk == b"VP8X" and len(raw) >= 30:
        return int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1
    if chunk == b"VP8L" and len(raw) >= 25:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(raw) >= 30:
        width, height = struct.unpack("<HH", raw[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# sending


def _block(held: dict[str, Any], raw: bytes, text: str | None, file_id: str | None) -> dict[str, Any]:
    """The content block a placeholder stands for."""
    kind = held["as"]
    if kind == "prompt":
        return {"type": "text", "text": (text or "").join(held["parts"])}
    if file_id is not None:
        return {"type": kind, "source": {"type": "file", "file_id": file_id}}
    if text is not None:
        return {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    data = base64.b64encode(raw).decode("ascii")
    return {"type": kind, "source": {"type": "base64", "media_type": held["media_type"], "data": data}}


def uploadable(held: dict[str, Any]) -> bool:
    return held["as"] != "prompt"


def file_block(kind: str, file_id: str) -> dict[str, Any]:
    return {"type": kind, "source": {"type": "file", "file_id": file_id}}


def read_checked(root: Path, held: dict[str, Any]) -> bytes:
    """The file's bytes, checked against the hash its item was created with."""
    path = root / held["file"]
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileChanged(f"{held['file']}: cannot be read now: {e.strerror}") from None
    if len(raw) != held["bytes"] or hashlib.sha256(raw).hexdigest() != held["sha256"]:
        raise FileChanged(f"{held['file']}: changed since its run was created")
    return raw


# What the limiter counts for a file before the reply says (batchrun.limiter estimates the rest of the request):
# a PDF page is its text and an image of the page (the API's typical 1,500-3,000 text tokens a page, leaning high);
# an image about width x height / 750 tokens after the API's resize (long edge 1,568 px, 1.15 megapixels at most).
PAGE_TOKENS = 3_000
PIXELS_PER_TOKEN = 750
LONG_EDGE = 1568
MAX_PIXELS = 1_150_000
IMAGE_TOKENS = 1_600  # an image whose size cannot be read: the most one costs


def file_tokens(held: dict[str, Any], raw: bytes | None) -> int:
    """The input tokens a file's block adds to its request, estimated from the file (`raw`: its bytes, when read)."""
    media_type = held["media_type"]
    if media_type == "text/plain":
        return -(-int(held["bytes"]) // 4)  # 4 characters a token, and a character is a byte or more
    if raw is None:
        return PAGE_TOKENS * MAX_PDF_PAGES if media_type == PDF else IMAGE_TOKENS
    if media_type == PDF:
        return PAGE_TOKENS * max(1, len(PDF_PAGE_RE.findall(raw)))
    size = image_size(raw, media_type)
    if not size or min(size) < 1:
        return IMAGE_TOKENS
    width, height = size
    scale = min(1.0, LONG_EDGE / max(width, height), (MAX_PIXELS / (width * height)) ** 0.5)
    return max(1, -(-int(width * scale) * int(height * scale) // PIXELS_PER_TOKEN))


@dataclass(slots=True)
class Resolver:
    """Turns a stored request's placeholders into the blocks sent: the file's bytes (read now), or its upload."""

    root: Path
    file_ids: dict[str, str]

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.resolve(params, count=False)[0]

    def resolve(self, params: dict[str, Any], count: bool = True) -> tuple[dict[str, Any], int]:
        """The request as sent, and (with `count`) the input tokens its files add (file_tokens), for the limiter."""
        messages = []
        tokens = 0
        for message in params["messages"]:
            content = message.get("content")
            if isinstance(content, list) and any(isinstance(b, dict) and MARK in b for b in content):
                blocks = []
                for b in content:
                    if isinstance(b, dict) and MARK in b:
                        block, counted = self.block(b[MARK], count)
                        blocks.append(block)
                        tokens += counted
                    else:
                        blocks.append(b)
                message = {**message, "content": blocks}
            messages.append(message)
        return {**params, "messages": messages}, tokens

    def block(self, held: dict[str, Any], count: bool = True) -> tuple[dict[str, Any], int]:
        """A placeholder's block, and (with `count`) the input tokens it adds: an uploaded PDF or image is read to
        count them."""
        file_id = self.file_ids.get(held["sha256"]) if uploadable(held) else None
        if file_id is not None:
            if not count:
                return file_block(held["as"], file_id), 0
            raw = None if held["media_type"] == "text/plain" else _read_quietly(self.root / held["file"])
            return file_block(held["as"], file_id), file_tokens(held, raw)
        raw = read_checked(self.root, held)
        text = raw.decode("utf-8-sig") if held["media_type"] == "text/plain" else None
        return _block(held, raw, text, None), file_tokens(held, raw) if count else 0

    def line(self, line: bytes) -> bytes:
        """A batch request line `{"custom_id":...,"params":...}` as sent (sorted keys, as stored)."""
        if MARK.encode() not in line:
            return line
        request = orjson.loads(line)
        request["params"] = self.params(request["params"])
        return orjson.dumps(request, option=orjson.OPT_SORT_KEYS)


def _read_quietly(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # the upload is what is sent: the estimate leans high instead


def resolver(store: Any, run_id: str) -> Resolver | None:
    """The run's resolver, or None when the run was not made from a folder."""
    if not store.has_item_files(run_id):
        return None
    run = store.get_run(run_id)
    uploads = run["job"].get("files") == "upload"
    return Resolver(root_of(run["input_path"]), store.upload_ids(run_id, run.get("endpoint") or "") if uploads else {})


def check_unchanged(store: Any, run_id: str) -> None:
    """Before anything is sent: every file an unsent item needs is still there with its size (a file whose bytes
    changed at the same size is caught when it is read to be sent, and its item fails)."""
    run = store.get_run(run_id)
    root = root_of(run["input_path"])
    problems = []
    for rel, size in store.pending_files(run_id):
        try:
            now = (root / rel).stat().st_size
        except OSError:
            now = None
        if now != size:
            problems.append(
                f"{rel}: {'missing' if now is None else 'changed'} since run {run_id} was created "
                f"(restore it, or submit the folder again: a new run sends what changed and takes the rest "
                "from the response cache)"
            )
    if problems:
        raise InputError(problems[:MAX_PROBLEMS], max(0, len(problems) - MAX_PROBLEMS))


def upload_pending(store: Any, run_id: str, make_client: Callable[[], Any], endpoint: str) -> int:
    """Upload each file an unsent item needs and that has no upload on this endpoint yet (Files API, beta);
    each upload is stored as soon as it is made, so a resume never uploads a file again. Returns the uploads made."""
    import asyncio

    run = store.get_run(run_id)
    root = root_of(run["input_path"])
    made = 0

    async def go() -> None:
        client = make_client()
        try:
            with api_errors(getattr(client, "api_key", None)):
                await upload(client)
        finally:
            await client.close()

    async def upload(client: Any) -> None:
        nonlocal made
        known = store.upload_ids(run_id, endpoint)
        for line_no, held in _pending_placeholders(store, run_id):
            if not uploadable(held):
                continue
            sha = held["sha256"]
            if sha not in known:
                raw = read_checked(root, held)
                name = Path(held["file"]).name
                uploaded = await client.beta.files.upload(file=(name, raw, held["media_type"]), betas=[FILES_BETA])
                store.add_upload(endpoint, sha, uploaded.id, held["file"], held["media_type"], len(raw))
                known[sha] = uploaded.id
                made += 1
            extra = _size(file_block(held["as"], known[sha])) - _size({MARK: held})
            store.set_item_file_extra(run_id, line_no, extra)

    from batchrun.api import api_errors

    asyncio.run(go())
    return made


def _size(value: Any) -> int:
    return len(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _pending_placeholders(store: Any, run_id: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, request in store.pending_requests(run_id):
        for message in orjson.loads(request)["messages"]:
            content = message.get("content")
            if isinstance(content, list):
                for block in content:
                    if isinstance(block, dict) and MARK in block:
                        yield line_no, block[MARK]


def with_files_header(make_client: Callable[[], Any]) -> Callable[[], Any]:
    """A client that sends the Files API beta header on every call (a request or batch naming a file_id needs
    it)."""

    def make() -> Any:
        return make_client().with_options(default_headers={"anthropic-beta": FILES_BETA})

    return make


def sent_params(store: Any, run_id: str) -> Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], int]]]:
    """The online path's view of a request as sent, and the input tokens its files add (the stored request holds
    only a placeholder for each): itself and 0, or for a folder run with its files read now (in a thread). A file
    that changed since its item was created fails the item (never sent under the old hash)."""
    found = resolver(store, run_id)

    async def same(params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        return params, 0

    if found is None:
        return same

    async def resolved(params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        import asyncio

        from batchrun.api import APIFailure

        try:
            return await asyncio.to_thread(found.resolve, params)
        except FileChanged as e:
            raise APIFailure(
                None,
                "file_changed",
                f"{e} (submit the folder again: a new run sends the changed file and takes the rest from the "
                "response cache)",
                "FileChanged",
                retryable=False,
            ) from None

    return resolved


def before_sending(store: Any, run_id: str, job: Job, make_client: Callable[[], Any]) -> Callable[[], Any]:
    """For a folder run, before anything is sent: the files of its unsent items are checked, and with
    `files = "upload"` uploaded (once) and the client made to send the Files API's beta header."""
    if not store.has_item_files(run_id):
        return make_client
    check_unchanged(store, run_id)
    if job.files != "upload":
        return make_client
    make = with_files_header(make_client)
    run = store.get_run(run_id)
    from batchrun.api import APIFailure
    from batchrun.errors import APIUnavailable

    try:
        upload_pending(store, run_id, make, run.get("endpoint") or "")
    except APIFailure as f:
        if f.retryable:
            raise APIUnavailable(f"uploading the run's files: {f} (try again later: uploads made are kept)") from None
        raise UsageError(f"uploading the run's files, the API answered {f} (nothing else was sent)") from None
    return make


def skipped_notes(path: str) -> list[str]:
    """The lines saying which files of a folder input are not sent (none for a file input)."""
    if str(path) == "-" or not is_folder_input(path):
        return []
    _, rels = list_files(path)
    skipped = [r for r in rels if kind_of(r) is None]
    lines = [f"skipped {rel}: not a supported type (text, .pdf, .png, .jpg, .gif, .webp)" for rel in skipped]
    if len(lines) > SKIPPED_SHOWN:
        lines = [*lines[:SKIPPED_SHOWN], f"skipped {len(lines) - SKIPPED_SHOWN} more file(s) of unsupported types"]
    return lines
