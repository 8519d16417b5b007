"""The package's layering: each part imports only from the parts that come before it (README, "Layout")."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "elfatt"

# Each part, and the parts it may import from (itself always allowed). Private helpers (elfatt._*) are open to all.
ALLOWED = {
    "core": set(),
    "attention": {"core"},
    "models": {"core"},
    "export": {"core", "models"},
    "bench": {"core", "attention", "models"},
    "data": {"core"},
    "train": {"core", "attention", "models", "data"},
    "diffusion": {"core", "data"},
    "cli": {"core", "bench", "train", "export"},
}
CORE = {"ops", "modules"}


def part_of(module: str) -> str | None:
    """The part of ``elfatt.<name>...``; None for elfatt's private helpers and the package itself."""
    parts = module.split(".")
    if parts[0] != "elfatt" or len(parts) == 1 or parts[1].startswith("_"):
        return None
    return "core" if parts[1] in CORE else parts[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"elfatt(\.\w+)+", node.value)
        ):
            names.add(node.value)  # modules imported by name (the CLI's command table)
    return {name for name in names if name.split(".")[0] == "elfatt"}


FILES = sorted(
    p for p in PACKAGE.rglob("*.py") if part_of("elfatt." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts))
)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layout(path: Path) -> None:
    own = part_of("elfatt." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    assert own in ALLOWED, f"{path} belongs to no part of the layout; add it to ALLOWED and the README"
    wrong = {name for name in imported_modules(path) if part_of(name) not in {None, own, *ALLOWED[own]}}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}) imports {sorted(wrong)}"


def test_the_part_of_a_module() -> None:
    assert part_of("elfatt.modules") == "core" and part_of("elfatt.attention.swin") == "attention"
    assert part_of("elfatt._atomic") is None and part_of("elfatt.ops.plan") == "core"
    assert part_of("elfatt._checks") is None and part_of("torch.nn") is None
    assert part_of("elfatt.bench.cli") == "bench"
