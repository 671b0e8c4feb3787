"""spoold.api.files.multipart's own form parser, fed bodies in random splits (one byte up to whole), and
receive_upload writing into a real upload folder: the file's bytes, the fields, and the refusals."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spoold.api.area import ApiArea
from spoold.api.errors import ApiError
from spoold.api.files.multipart import CR_MISSES, FormParser, _Parts, receive_upload
from spoold.api.files.store import CONTENT, Upload, writev_all
from spoold.spool.layout import Spool

BOUNDARY = b"----spooldtest" + b"a1b2c3d4e5f6"


def body(fields: list[tuple[str, bytes, str | None]], boundary: bytes = BOUNDARY, preamble: bytes = b"") -> bytes:
    out = [preamble]
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        headers = f"Content-Disposition: {disposition}\r\n" + ("Content-Type: application/jsonl\r\n" if filename else "")
        out += [b"--" + boundary + b"\r\n", headers.encode() + b"\r\n", value, b"\r\n"]
    out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def parse(data: bytes, rng: random.Random, max_chunk: int) -> tuple[_Parts, bytes]:
    parts = _Parts()
    parser = FormParser(BOUNDARY, parts)
    got = []
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max_chunk)
        parser.feed(data[pos : pos + step])
        pos += step
        got += parts.take_pending()
    parser.finish()
    return parts, b"".join(got)


def nasty_content(rng: random.Random, size: int) -> bytes:
    """JSONL-ish bytes full of CRs, CRLFs and cut-off delimiters ('\\r\\n--' + a prefix of the boundary)."""
    pieces = [b'{"a":1}\n', b'{"b":"x"}\r\n', b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"--" + BOUNDARY[:5], b"z" * 50]
    for cut in range(1, len(BOUNDARY)):
        pieces.append(b"\r\n--" + BOUNDARY[:cut] + b"X")
    out = bytearray()
    while len(out) < size:
        out += rng.choice(pieces)
    return bytes(out)


@pytest.mark.parametrize("seed", range(40))
def test_random_bodies_in_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    content = nasty_content(rng, rng.choice([0, 10, 3000, 70000]))
    order = [("purpose", b"batch", None), ("file", content, "in/put.jsonl")]
    if seed % 2:
        order.reverse()
    data = body(order, preamble=b"a preamble\r\n" if seed % 3 == 0 else b"")
    parts, got = parse(data + b"an epilogue", rng, rng.choice([1, 3, 64, 5000, len(data) + 1]))
    assert got == content
    assert parts.fields == {"purpose": b"batch"} and parts.filename == "in_put.jsonl"


def test_many_crs_in_one_chunk_fall_back_to_find() -> None:
    content = b'{"a":1}\r\n' * (CR_MISSES * 50) + b"\r\n--" + BOUNDARY[:-1] + b"\r"
    data = body([("file", content, "f.jsonl"), ("purpose", b"batch", None)])
    for max_chunk in (len(data), 4096, len(data) // 2 + 7):
        parts, got = parse(data, random.Random(1), max_chunk)
        assert got == content and parts.fields == {"purpose": b"batch"}


def test_a_chunk_inside_the_file_is_handed_on_without_a_copy() -> None:
    parts = _Parts()
    parser = FormParser(BOUNDARY, parts)
    parser.feed(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n')
    chunk = os.urandom(1 << 16).replace(b"\r", b"x")
    parser.feed(chunk)
    assert parts.take_pending()[-1] is chunk


@pytest.mark.parametrize(
    "data, message",
    [
        (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n{}', "before its closing boundary"),
        (b"x" * 20000, "no boundary where the body starts"),
        (b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\n", "no ':'"),
        (b"--" + BOUNDARY + b"\r\nX-Long: " + b"h" * 20000, "headers are too long"),
        (b"--" + BOUNDARY + b"junk", "neither CRLF nor '--'"),
        (body([("purpose", b"p" * 5000, None)]), "too long"),
        (body([("other", b"{}", "f.jsonl")]), "the field 'file'"),
        (body([("file", b"{}", "a"), ("file", b"{}", "b")]), "Only one file"),
    ],
)
def test_refusals(data: bytes, message: str) -> None:
    parser = FormParser(BOUNDARY, _Parts())
    with pytest.raises(ApiError) as caught:
        for i in range(0, len(data), 1000):
            parser.feed(data[i : i + 1000])
        parser.finish()
    assert caught.value.status == 400 and message in caught.value.message


def test_writev_all_takes_more_buffers_than_one_writev(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (1, 70000, 0, 3, 200000)] * 300  # more buffers than one writev takes
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        writev_all(fd, pieces)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_receive_upload_into_the_spool(tmp_path: Path) -> None:
    area = ApiArea(Spool(tmp_path / "spool"))
    area.ensure()
    content = b'{"custom_id":"a","body":{}}\n' * 100000  # several write blocks
    data = body([("purpose", b"batch", None), ("file", content, "big.jsonl")])
    content_type = "multipart/form-data; boundary=" + BOUNDARY.decode()
    record = asyncio.run(receive_upload(chunks(data, 65536), content_type, Upload(area, "alice", "file-" + "1" * 32, 1 << 30)))
    assert record.bytes == len(content) and record.filename == "big.jsonl" and record.purpose == "batch"
    assert (area.files / record.id / CONTENT).read_bytes() == content
    assert [p.name for p in area.files.iterdir()] == [record.id]

    refused = Upload(area, "alice", "file-" + "2" * 32, len(content) // 2)
    with pytest.raises(ApiError) as caught:
        asyncio.run(receive_upload(chunks(data, 65536), content_type, refused))
    assert caught.value.status == 413 and [p.name for p in area.files.iterdir()] == [record.id]
