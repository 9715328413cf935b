"""The Files API (beta): uploads kept in memory, and the check of `file_id` references in Messages and batches.

Every call needs the beta header `anthropic-beta: files-api-2025-04-14`, and so does a Messages request (or a batch
create) whose content refers to a file. A reference to a file that does not exist is a 400 (an errored result in
a batch); a file referenced as a document must be a PDF or plain text, as an image an image.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from typing import Any

from .media import image_format

FILES_BETA = "files-api-2025-04-14"
DOCUMENT_TYPES = ("application/pdf", "text/plain")


class FileProblem(ValueError):
    """A reference or upload the API refuses; the message is the API's."""


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    mime_type: str
    data: bytes
    created_at: float

    def to_json(self) -> dict[str, Any]:
        created = datetime.datetime.fromtimestamp(self.created_at, datetime.UTC).isoformat().replace("+00:00", "Z")
        return {
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": len(self.data),
            "created_at": created,
            "downloadable": False,
        }


def has_beta(headers: Any) -> bool:
    values = ",".join(headers.getall("anthropic-beta", [])) if hasattr(headers, "getall") else ""
    return FILES_BETA in {v.strip() for v in values.split(",")}


def mime_type_of(filename: str, given: str | None, data: bytes) -> str:
    """What the file is, from its bytes first (the API sniffs too), then from the part's content type."""
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    found = image_format(data)
    if found:
        return found
    if given and given != "application/octet-stream":
        return given
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


class FileStore:
    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}  # insertion order = creation order
        self.uploaded = 0

    def add(self, filename: str, content_type: str | None, data: bytes, now: float) -> StoredFile:
        mime_type = mime_type_of(filename, content_type, data)
        stored = StoredFile("file_" + secrets.token_hex(12), filename or "unnamed", mime_type, data, now)
        self.files[stored.id] = stored
        self.uploaded += 1
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self.files.get(file_id)

    def delete(self, file_id: str) -> bool:
        return self.files.pop(file_id, None) is not None

    def references(self, params: Any) -> list[tuple[str, str]]:
        """(block type, file_id) of every block of the request whose source is a file."""
        found = []
        messages = params.get("messages") if isinstance(params, dict) else None
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else []:
                source = block.get("source") if isinstance(block, dict) else None
                if isinstance(source, dict) and source.get("type") == "file":
                    found.append((str(block.get("type")), str(source.get("file_id"))))
        return found

    def check(self, params: Any, beta: bool) -> str | None:
        """The API's 400 message for the request's file references, or None when they are good."""
        refs = self.references(params)
        if refs and not beta:
            return (
                f"file_id references need the beta header 'anthropic-beta: {FILES_BETA}' "
                "(add it to the request, or to the batch create call)"
            )
        for kind, file_id in refs:
            stored = self.files.get(file_id)
            if stored is None:
                return f"File '{file_id}' not found."
            if kind == "image" and not stored.mime_type.startswith("image/"):
                return f"File '{file_id}' is {stored.mime_type}, not an image."
            if kind == "document" and stored.mime_type not in DOCUMENT_TYPES:
                return f"File '{file_id}' is {stored.mime_type}: a document must be a PDF or plain text."
        return None
