"""Images and documents: decode enough of the bytes to size them, and count their tokens as the API does.

An image costs about width x height / 750 tokens after the API's resize (long edge at most 1,568 px, about
1.15 megapixels), so never much more than 1,600 tokens. A PDF page costs its text plus an image of the page.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 8000
MAX_IMAGES = 100
MAX_PDF_PAGES = 100
LONG_EDGE = 1568
MAX_PIXELS = 1_150_000
PIXELS_PER_TOKEN = 750
PDF_PAGE_TOKENS = 1_600
PDF_PAGE_RE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


class MediaError(ValueError):
    """A problem with the bytes of an image or document, worded as the API's 400 message."""


def decode_base64(data: object) -> bytes:
    if not isinstance(data, str) or not data:
        raise MediaError("data: Input should be a non-empty base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("data: Input should be valid base64-encoded data") from None


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
        width = int.from_bytes(raw[24:27], "little") + 1
        height = int.from_bytes(raw[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(raw) >= 25:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(raw) >= 30:
        width, height = struct.unpack("<HH", raw[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def image_size(raw: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) read from the header, or None when it cannot be read."""
    if media_type == "image/png" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if media_type == "image/gif" and len(raw) >= 10:
        return struct.unpack("<HH", raw[6:10])
    if media_type == "image/jpeg":
        return _jpeg_size(raw)
    if media_type == "image/webp":
        return _webp_size(raw)
    return None


def check_image(data: object, media_type: object) -> tuple[int, int]:
    """Validate a base64 image source; returns its (width, height). Raises MediaError."""
    if media_type not in IMAGE_MEDIA_TYPES:
        raise MediaError("media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'")
    raw = decode_base64(data)
    if len(raw) > MAX_IMAGE_BYTES:
        raise MediaError(f"image exceeds 5 MB maximum: {len(raw)} bytes > {MAX_IMAGE_BYTES} bytes")
    found = image_format(raw)
    if found != media_type:
        raise MediaError(f"Image does not match the provided media type {media_type}")
    size = image_size(raw, media_type)
    if size is None or min(size) < 1:
        raise MediaError(f"Could not process image: the {media_type} header cannot be read")
    if max(size) > MAX_IMAGE_SIDE:
        raise MediaError(f"image dimensions exceed max allowed size: {MAX_IMAGE_SIDE} pixels")
    return size


def image_tokens(width: int, height: int) -> int:
    scale = min(1.0, LONG_EDGE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
    return max(1, math.ceil(int(width * scale) * int(height * scale) / PIXELS_PER_TOKEN))


def pdf_pages(raw: bytes) -> int:
    return max(1, len(PDF_PAGE_RE.findall(raw)))


def check_pdf(data: object) -> int:
    """Validate a base64 PDF source; returns its page count. Raises MediaError."""
    raw = decode_base64(data)
    if not raw.startswith(b"%PDF-"):
        raise MediaError("The PDF specified was not valid")
    pages = pdf_pages(raw)
    if pages > MAX_PDF_PAGES:
        raise MediaError(f"A maximum of {MAX_PDF_PAGES} PDF pages may be provided. Found {pages}.")
    return pages


def block_tokens(block: dict) -> int | None:
    """Tokens of an image or document block from its size, or None when it is not one sized from bytes."""
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    try:
        if block.get("type") == "image" and source.get("type") == "base64":
            return image_tokens(*check_image(source.get("data"), source.get("media_type")))
        if block.get("type") == "document" and source.get("type") == "base64":
            return PDF_PAGE_TOKENS * check_pdf(source.get("data"))
        if block.get("type") == "image" and source.get("type") == "url":
            return PDF_PAGE_TOKENS  # not fetched: counted as a full-size image
        if block.get("type") == "document" and source.get("type") == "text":
            text = source.get("data")
            return math.ceil(len(text) / 4) if isinstance(text, str) else None
    except MediaError:
        return None
    return None
