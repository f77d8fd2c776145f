"""The shape the code and docs keep: short functions and modules, a trainer that fits on a few
screens, a README of a few screens whose links resolve, and an architecture doc that names
every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mnist_ddp"
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_TRAINER_LINES, MAX_README_LINES = 60, 400, 200, 150


def sizes() -> dict[str, int]:
    """Lines of every module, function and of the Trainer class, keyed 'path' and 'path:name'."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(REPO))
        source = path.read_text()
        found[name] = len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
                isinstance(node, ast.ClassDef) and node.name == "Trainer"
            ):
                key = f"{name}:{node.name}"
                found[key] = max(found.get(key, 0), node.end_lineno - node.lineno + 1)
    return found


def limit(key: str) -> int:
    if ":" not in key:
        return MAX_MODULE_LINES
    return MAX_TRAINER_LINES if key.endswith(":Trainer") else MAX_FUNCTION_LINES


def test_functions_modules_and_the_trainer_stay_short():
    over = {key: lines for key, lines in sizes().items() if lines > limit(key)}
    assert not over, f"over the limit (lines): {over}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", path.read_text())}


def test_the_readme_is_short_and_every_link_in_it_and_the_docs_resolves():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= MAX_README_LINES
    pages = [readme, *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken


def test_the_architecture_doc_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not {m for m in modules if f"`{m}`" not in text}
