"""The domain layer stays pure: standard library, eventsourcing's domain/utils, itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "mission_ledger" / "domain"
ALLOWED_PACKAGES = ("eventsourcing.domain", "eventsourcing.utils", "mission_ledger.domain")


def _allowed(module: str) -> bool:
    if module.split(".")[0] in sys.stdlib_module_names:
        return True
    return any(module == p or module.startswith(p + ".") for p in ALLOWED_PACKAGES)


def _package_of(path: Path) -> list[str]:
    """The dotted package a module's relative imports are resolved against."""
    parts = ["mission_ledger", "domain", *path.relative_to(DOMAIN).with_suffix("").parts]
    return parts[:-1]  # drops the module name, or "__init__" (a package is its own anchor)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every (line, absolute module) a module imports; ``from x import y`` yields ``x.y``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(path)
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}".lstrip(".")) for alias in node.names]
    return found


def test_domain_imports_only_stdlib_eventsourcing_domain_and_itself() -> None:
    modules = sorted(DOMAIN.rglob("*.py"))
    assert modules, f"no modules found under {DOMAIN}"
    violations = [
        f"{path.relative_to(DOMAIN.parents[2])}:{line}: imports {module!r}"
        for path in modules
        for line, module in _imports(path)
        if not _allowed(module)
    ]
    assert not violations, (
        "the domain layer may import only the standard library, eventsourcing.domain, "
        "eventsourcing.utils and mission_ledger.domain:\n  " + "\n  ".join(violations)
    )
