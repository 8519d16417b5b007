"""The repository's layering: the library (``elfatt``) never imports the lab (``elfatt_lab``), and inside each
package every part imports only from the parts before it (README, "Layout")."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY, LAB = ROOT / "elfatt", ROOT / "elfatt_lab"

# Each part, and the parts it may import from (itself always allowed). Private helpers (``<package>._*``) are open
# to their own package; the lab may import any of the library.
LIBRARY_PARTS = {
    "core": set(),
    "models": {"core"},
    "export": {"core", "models"},
    "diffusion": {"core"},
}
LAB_PARTS = {
    "attention": set(),
    "data": set(),
    "bench": {"attention"},
    "train": {"attention", "data"},
    "diffusion": {"data"},
    "export_cli": set(),
    "cli": {"bench", "train", "export_cli"},
}
CORE = {"ops", "modules"}


def part_of(module: str) -> tuple[str, str | None] | None:
    """``(package, part)`` of a module of either package (part None for private helpers and the package itself);
    None for any other module."""
    parts = module.split(".")
    if parts[0] not in ("elfatt", "elfatt_lab"):
        return None
    if len(parts) == 1 or parts[1].startswith("_"):
        return parts[0], None
    part = "core" if parts[0] == "elfatt" and parts[1] in CORE else parts[1]
    return parts[0], part


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"elfatt(_lab)?(\.\w+)+", node.value):
                names.add(node.value)  # modules imported by name (the CLI's command table, lazy attributes)
    return {name for name in names if part_of(name) is not None}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


FILES = sorted([*LIBRARY.rglob("*.py"), *LAB.rglob("*.py")])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layout(path: Path) -> None:
    package, own = part_of(module_name(path))
    if own is None:
        return
    allowed = LIBRARY_PARTS if package == "elfatt" else LAB_PARTS
    assert own in allowed, f"{path} belongs to no part of the layout; add it to the parts and the README"
    wrong = set()
    for name in imported_modules(path):
        other_package, other = part_of(name)
        if package == "elfatt" and other_package == "elfatt_lab":
            wrong.add(name)  # the library never imports the lab
        elif other_package == package and other not in {None, own, *allowed[own]}:
            wrong.add(name)
    assert not wrong, f"{path.relative_to(ROOT)} ({package}: {own}) imports {sorted(wrong)}"


def test_no_private_helper_of_the_library_imports_the_lab() -> None:
    for path in LIBRARY.glob("_*.py"):
        lab = {name for name in imported_modules(path) if name.startswith("elfatt_lab")}
        assert not lab, f"{path.relative_to(ROOT)} imports {sorted(lab)}"


def test_the_part_of_a_module() -> None:
    assert part_of("elfatt.modules") == ("elfatt", "core") and part_of("elfatt_lab.attention.swin")[1] == "attention"
    assert part_of("elfatt._deprecated") == ("elfatt", None) and part_of("elfatt.ops.plan") == ("elfatt", "core")
    assert part_of("torch.nn") is None and part_of("elfatt_lab.bench.cli") == ("elfatt_lab", "bench")


def test_import_elfatt_imports_neither_timm_nor_the_lab_and_is_quick() -> None:
    code = (
        "import sys, time; import torch; start = time.perf_counter(); import elfatt; "
        "print(time.perf_counter() - start); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'diffusers', 'onnx', 'elfatt_lab')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, imported = result.stdout.splitlines()
    assert imported == "[]", f"import elfatt imported {imported}"
    # torch is imported first, so this is elfatt's own cost (about 0.1 s here); timm alone takes seconds
    assert float(seconds) < 1.5, f"import elfatt took {float(seconds):.2f} s after torch"


def test_the_public_api_fits_on_one_screen() -> None:
    import elfatt

    assert len(elfatt.__all__) <= 12
    for name in elfatt.__all__:
        value = getattr(elfatt, name)
        if callable(value):  # BlockSpec, a type alias, is documented with the package
            assert value.__doc__, f"elfatt.{name} has no docstring"


def test_every_package_folder_is_a_regular_package_that_the_distribution_ships() -> None:
    import setuptools

    shipped = set(setuptools.find_packages(str(ROOT), include=["elfatt*"]))
    for folder in (LIBRARY, LAB):
        for path in [folder, *(p for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            name = ".".join(path.relative_to(ROOT).parts)
            assert (path / "__init__.py").is_file() and name in shipped, f"{name} would be left out of the wheel"
