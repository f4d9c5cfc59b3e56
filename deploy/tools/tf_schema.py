"""Offline check of Terraform attribute names against the azurerm provider's own schema.

``terraform validate`` needs the provider binary, which comes only from registry.terraform.io. The
provider's schema also ships on PyPI inside ``cdktn-provider-azurerm`` (bindings generated from the
provider): its jsii assembly links every attribute to its documentation anchor,
``.../hashicorp/azurerm/VERSION/docs/resources/RESOURCE#ATTRIBUTE``. This script collects those names
per resource and reports every resource type, argument or block in the ``*.tf`` files that the
provider does not have. The names are collected per resource across nesting levels, so an argument
placed in the wrong block is not caught; a misspelt or removed one is.

Usage: python tf_schema.py ASSEMBLY.jsii TFDIR   (exit 1 on any unknown name)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hcl2

LINK = re.compile(r"hashicorp/azurerm/([0-9.]+)/docs/(resources|data-sources)/([a-z0-9_]+)#([a-z0-9_]+)")
META = {"count", "for_each", "depends_on", "lifecycle", "provider", "timeouts"}


def schema(assembly: Path) -> tuple[str, dict[str, set[str]]]:
    """Attribute names per ``azurerm_*`` resource and data source, and the provider version."""
    text = assembly.read_text(encoding="utf-8")
    names: dict[str, set[str]] = {}
    versions = set()
    for version, kind, resource, attr in LINK.findall(text):
        versions.add(version)
        key = ("data." if kind == "data-sources" else "") + "azurerm_" + resource
        names.setdefault(key, set()).add(attr)
    return ",".join(sorted(versions)), names


def walk(body: object, known: set[str], where: str, out: list[str]) -> None:
    """Report every key of an HCL body (and of its nested blocks) that the resource does not know."""
    items = body if isinstance(body, list) else [body]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            key = key.strip('"')
            if key.startswith("__") or key in META:
                continue
            if key == "dynamic":  # dynamic "NAME" { for_each = ...  content { ... } }
                for spec in value if isinstance(value, list) else [value]:
                    for name, inner in spec.items():
                        name = name.strip('"')
                        if name not in known:
                            out.append(f"{where}: unknown dynamic block {name!r}")
                        for part in inner if isinstance(inner, list) else [inner]:
                            walk(part.get("content", []), known, f"{where}.{name}", out)
                continue
            if key not in known:
                out.append(f"{where}: unknown argument or block {key!r}")
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                walk(value, known, f"{where}.{key}", out)


def main() -> int:
    version, names = schema(Path(sys.argv[1]))
    problems: list[str] = []
    checked = 0
    for tf in sorted(Path(sys.argv[2]).glob("*.tf")):
        doc = hcl2.loads(tf.read_text(encoding="utf-8"))
        for kind, prefix in (("resource", ""), ("data", "data.")):
            for block in doc.get(kind, []):
                for rtype, instances in block.items():
                    rtype = rtype.strip('"')
                    if not rtype.startswith("azurerm_"):
                        continue
                    for rname, body in instances.items():
                        where = f"{tf.name}: {prefix}{rtype}.{rname.strip(chr(34))}"
                        checked += 1
                        if prefix + rtype not in names:
                            problems.append(f"{where}: azurerm {version} has no such {kind}")
                            continue
                        walk(body, names[prefix + rtype], where, problems)
    for p in problems:
        print(p)
    print(f"tf_schema: azurerm {version}: {checked} resource(s) checked, {len(problems)} unknown name(s)")
    return 1 if problems or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
