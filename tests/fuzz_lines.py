"""A seeded generator of hostile input lines (issue 16), and an oracle for which of them are blank.

Own generator rather than hypothesis: the inputs are byte strings shaped by a dozen
mutations of valid requests, a failing line is its own minimal example (the test
prints the seed and the line), and no dependency is added. Same seed, same lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

SEEDS: list[dict[str, Any]] = [
    {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
     "body": {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8, "temperature": 0.7}},
    {"custom_id": "p", "url": "/v1/completions", "body": {"prompt": "once upon a time", "max_tokens": 4}},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"prompt": [1, 2, 3, 4], "seed": 3},
    {"custom_id": "s", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}},
]  # fmt: skip
ODD_TEXT = ["\ufeff", "\u2028", "\u0085", "\x1e", "\r", "\t", "é", "\U0001f600", "\\ud800", "\\udfff", "\\u0000", "\x00", "\\"]
ODD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\xef\xbb\xbf"]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**64), rng.randrange(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1e308, 5e-324, rng.random()])
    if kind == 4:
        return "".join(rng.choice(["a", " ", "é", "\u2028", "\U0001f600", "\x00", '"', "\\"]) for _ in range(rng.randrange(6)))
    if kind in (5, 6):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["custom_id", "url", "body", "messages", "prompt", "model", "x"]): random_json(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def wrong_type(rng: random.Random, base: dict[str, Any]) -> bytes:
    obj = json.loads(json.dumps(base))
    paths = _paths(obj)
    for _ in range(rng.randint(1, 2)):
        _set(obj, rng.choice(paths), random_json(rng))
        paths = _paths(obj) or paths
        if not _paths(obj):
            break
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()


def nested(rng: random.Random, base: dict[str, Any]) -> bytes:
    depth = rng.choice([rng.randint(1, 140), rng.randint(100, 3000), 100_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
    if rng.random() < 0.2:
        inner = inner[: rng.randrange(len(inner))]  # cut short as well
    text = json.dumps(base)
    return (text[:-1] + f', "deep": {inner}}}').encode()


def huge_number(rng: random.Random, base: dict[str, Any]) -> bytes:
    number = rng.choice(["9" * rng.randint(4000, 6000), "1e999", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 30, "0.1e-99999"])
    return (json.dumps(base)[:-1] + f', "max_tokens": {number}}}').encode()


def odd_encoding(rng: random.Random, base: dict[str, Any]) -> bytes:
    text = json.dumps(base, ensure_ascii=False)
    choice = rng.randrange(4)
    if choice == 0:
        return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32", "latin-1" if text.isascii() else "utf-8"]))
    if choice == 1:
        at = rng.randrange(len(text) + 1)
        return (text[:at] + rng.choice(ODD_TEXT) + text[at:]).encode("utf-8", "surrogatepass")
    if choice == 2:
        raw = text.encode()
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.choice(ODD_BYTES) + raw[at:]
    quote = text.find('"', text.find(":"))  # inside the first string value
    return (
        text[: quote + 1] + rng.choice(["\\ud800", "\\udc00x", "\\ud83d\\ude00", "\\u0000", "\\uD800\\uD800"]) + text[quote + 1 :]
    ).encode()


def truncated(rng: random.Random, base: dict[str, Any]) -> bytes:
    raw = json.dumps(base).encode()
    return raw[: rng.randrange(len(raw))]


def byte_noise(rng: random.Random, base: dict[str, Any]) -> bytes:
    raw = bytearray(json.dumps(base).encode())
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(raw))
        op = rng.randrange(3)
        if op == 0:
            raw[at] = rng.randrange(256)
        elif op == 1:
            del raw[at]
        else:
            raw[at:at] = bytes([rng.randrange(256)])
    return bytes(raw)


def huge_line(rng: random.Random, base: dict[str, Any]) -> bytes:
    """Over a test's max_line_bytes (or just under it): valid JSON with a long prompt."""
    size = rng.choice([rng.randint(3000, 5000), rng.randint(20_000, 200_000)])
    return json.dumps({"custom_id": f"h{rng.randrange(10**6)}", "prompt": "word " * (size // 5)}).encode()


def garbage(rng: random.Random, base: dict[str, Any]) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))


def blank(rng: random.Random, base: dict[str, Any]) -> bytes:
    return rng.choice([b"", b"   ", b"\t", b"\r", b"\xef\xbb\xbf", b" \x0b\x0c ", "\u2028".encode(), "\u3000".encode()])


def valid(rng: random.Random, base: dict[str, Any]) -> bytes:
    obj = json.loads(json.dumps(base))
    if "custom_id" in obj:
        obj["custom_id"] = f"{obj['custom_id']}{rng.randrange(50)}"  # some repeat: duplicate ids
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode()


def random_line(rng: random.Random, base: dict[str, Any]) -> bytes:
    return json.dumps(random_json(rng)).encode()


MUTATIONS: list[tuple[Callable[[random.Random, dict[str, Any]], bytes], int]] = [
    (valid, 8), (wrong_type, 4), (nested, 2), (huge_number, 2), (odd_encoding, 4), (truncated, 2),
    (byte_noise, 3), (huge_line, 1), (garbage, 1), (blank, 1), (random_line, 2),
]  # fmt: skip


def fuzz_lines(rng: random.Random, n: int) -> list[bytes]:
    """`n` lines, none containing a newline (each is exactly one line of the file)."""
    funcs = [f for f, _ in MUTATIONS]
    weights = [w for _, w in MUTATIONS]
    out = []
    for _ in range(n):
        func = rng.choices(funcs, weights)[0]
        out.append(func(rng, rng.choice(SEEDS)).replace(b"\n", b" "))
    return out


def is_blank(line: bytes, max_line_bytes: int) -> bool:
    """The oracle for SPEC's "blank lines are skipped" (a line without its newline)."""
    if len(line) > max_line_bytes:
        return False
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not text.strip().removeprefix("\ufeff")
