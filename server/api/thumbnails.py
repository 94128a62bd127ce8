"""Thumbnails of images, made on the server with Pillow and kept in a small
byte-bounded LRU keyed by (content hash, size), so a photo is decoded once
however many phones scroll past it.

Decoding untrusted images is where a server gets hurt, so every limit is
checked before any pixel is decoded: the file's size (its bytes are read
into memory), the pixel count from the header (``Image.open`` reads only
the header; a 100,000 x 100,000 PNG of a few hundred bytes is refused
there), a format allow-list, and at most ``RENDERS`` decodes at once, in
worker threads. JPEGs decode at a reduced scale (``draft``), so a 48 MP
photo never exists at full size in memory.
"""

from __future__ import annotations

import asyncio
import collections
import io

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import ErrorCode, ProtocolError
from server.api.common import HttpError, authed, int_param
from server.api.files import file_entry
from server.metastore import Principal
from server.services import Services

SIZES = (64, 256, 1024)
MAX_SOURCE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000  # about 8000 x 8000; Pillow refuses twice this on its own
FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}
RENDERS = 2  # concurrent decodes per server process
CACHE_BYTES = 16 * 1024 * 1024

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # a second line of defence for any other Pillow use here


class ThumbnailCache:
    """Encoded thumbnails, least recently used dropped first beyond ``limit`` bytes."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit, self.used = limit, 0
        self._items: collections.OrderedDict[tuple[bytes, int], bytes] = collections.OrderedDict()

    def get(self, key: tuple[bytes, int]) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: tuple[bytes, int], data: bytes) -> None:
        if key in self._items or len(data) > self.limit:
            return
        self._items[key] = data
        self.used += len(data)
        while self.used > self.limit:
            _, dropped = self._items.popitem(last=False)
            self.used -= len(dropped)


_cache = ThumbnailCache()
_renders = asyncio.Semaphore(RENDERS)


def render(data: bytes, size: int) -> bytes:
    """A JPEG at most ``size`` px on its longer side, upright (EXIF orientation)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in FORMATS:
                raise HttpError(415, "not_an_image", f"cannot make thumbnails of {img.format} images")
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise HttpError(
                    413, "image_too_large",
                    f"image is {width} x {height} pixels; thumbnails are made up to {MAX_PIXELS:,} pixels",
                )  # fmt: skip
            img.draft("RGB", (size, size))
            out = ImageOps.exif_transpose(img) or img
            out.thumbnail((size, size))
            if out.mode in ("RGBA", "LA", "P"):
                out = out.convert("RGBA")
                flat = Image.new("RGB", out.size, "white")
                flat.paste(out, mask=out.getchannel("A"))
                out = flat
            buf = io.BytesIO()
            out.convert("RGB").save(buf, "JPEG", quality=85)
            return buf.getvalue()
    except Image.DecompressionBombError as e:  # found by Image.open, from the header alone
        raise HttpError(413, "image_too_large", str(e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise HttpError(415, "not_an_image", f"not an image Ferry can read: {e}") from None


@authed
async def thumbnail(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "A JPEG thumbnail of an image file (JPEG, PNG, GIF, WebP, BMP, TIFF)"
    parameters:
      - {name: path, in: query, required: true, schema: {type: string}}
      - {name: size, in: query, description: longest side in pixels, schema: {type: integer, enum: [64, 256, 1024], default: 256}}
      - {name: ns, in: query, schema: {type: integer}}
    responses:
      200: {description: image/jpeg; X-Ferry-Cache says hit or miss}
      304: {description: not modified (If-None-Match matched the ETag)}
      400: {description: a size other than 64, 256 or 1024}
      413: {description: the image is too large (bytes or pixels) to thumbnail}
      415: {description: not an image}
    """
    size = int_param(request, "size", 256)
    if size not in SIZES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"size must be one of {', '.join(map(str, SIZES))}")
    entry = await file_entry(services, who, request)
    assert entry.content_hash is not None and entry.blocks is not None
    if entry.size > MAX_SOURCE_BYTES:
        raise HttpError(
            413, "image_too_large", f"thumbnails are made of files up to {MAX_SOURCE_BYTES} bytes"
        )
    key = (entry.content_hash, size)
    headers = {"ETag": f'"{entry.content_hash.hex()}-{size}"', "Cache-Control": "private, no-cache"}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    data = _cache.get(key)
    headers["X-Ferry-Cache"] = "hit" if data is not None else "miss"
    if data is None:
        async with _renders:  # bounds the source bytes held in memory too, not only the decodes
            source = b"".join([await services.get_block(who, b.hash) for b in entry.blocks])
            data = await asyncio.to_thread(render, source, size)
        _cache.put(key, data)
    return Response(data, headers=headers, media_type="image/jpeg")
