"""The docs point at what exists: every relative link resolves (file, and heading when it names one), every repository
path they mention exists, every `make TARGET` they tell people to run is a Makefile target, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    {
        ROOT / "README.md",
        ROOT / "systemd" / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "handlers").rglob("README.md"),
        *(ROOT / "benchmarks").glob("*.md"),
    }
)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
# a repository path: starts with a top-level folder, not inside another path (/etc/spoold/..., SPOOL/.spoold/...)
PATH = re.compile(r"(?<![\w./@-])((?:spoold|tests|benchmarks|examples|handlers|etc|systemd|models|docs)/[\w./*@-]*[\w*/])")
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")
SPAN = re.compile(r"`([^`\n]*)`")


def _blank_code(text: str) -> str:
    """Code blocks and spans hold commands and examples, not links: blank them, keeping line numbers."""
    text = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    return CODE.sub("", text)


def slugs(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", doc.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m[1].replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _lines(doc: Path, text: str):
    for number, line in enumerate(text.splitlines(), 1):
        yield f"{doc.relative_to(ROOT)}:{number}", line


def test_the_docs_are_found() -> None:
    names = {str(d.relative_to(ROOT)) for d in DOCS}
    assert {"README.md", "systemd/README.md", "handlers/README.md", "docs/code-map.md", "docs/contributing.md"} <= names
    assert len([d for d in DOCS if d.parent.name == "docs"]) >= 10


def test_every_relative_link_points_at_an_existing_file_and_heading() -> None:
    broken = []
    checked = 0
    for doc in DOCS:
        for where, line in _lines(doc, _blank_code(doc.read_text(encoding="utf-8"))):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                checked += 1
                path, _, anchor = target.partition("#")
                dest = (doc.parent / path).resolve() if path else doc
                if not dest.exists():
                    broken.append(f"{where}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                    broken.append(f"{where}: {target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert checked > 60, f"only {checked} links found: the link pattern no longer matches the docs"
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_repository_path_the_docs_name_exists() -> None:
    missing = []
    named = set()
    for doc in DOCS:
        for where, line in _lines(doc, doc.read_text(encoding="utf-8")):
            for path in PATH.findall(line):
                path = path.rstrip(".")
                named.add(path)
                if "*" in path:
                    if not any(ROOT.glob(path)):
                        missing.append(f"{where}: {path} (matches nothing)")
                elif not (ROOT / path).exists() and not (doc.parent / path).exists():  # handlers/README.md: examples/...
                    missing.append(f"{where}: {path}")
    for stage in ("spoold/spool/claim.py", "spoold/engine/loop.py", "spoold/job/checkpoint.py", "spoold/job/finish.py"):
        assert stage in named, f"the docs no longer name {stage}"
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*)\s*:", makefile, re.M))
    unknown = []
    commands = 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        fenced = {n for m in FENCE.finditer(text) for n in range(text.count("\n", 0, m.start()) + 1, text.count("\n", 0, m.end()) + 2)}
        for number, line in enumerate(text.splitlines(), 1):
            code = [line] if number in fenced else SPAN.findall(line)  # commands, not prose ("make it")
            for target in (t for part in code for t in MAKE.findall(part)):
                commands += 1
                if target not in targets:
                    unknown.append(f"{doc.relative_to(ROOT)}:{number}: make {target}")
    assert commands >= 5, f"only {commands} make commands found in the docs"
    assert not unknown, "make targets the docs name but the Makefile lacks:\n" + "\n".join(unknown)


def test_the_readme_starts_with_its_two_commands_and_stays_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "```sh"
    assert lines[3].startswith("make demo ") and lines[4].startswith("make test ")
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move operators' and contributors' material under docs/"
