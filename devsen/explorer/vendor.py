"""Copy the explorer's pinned npm crypto (@noble/hashes, @noble/curves) into static/vendor/.

    python -m devsen.explorer.vendor          # rewrite static/vendor from node_modules
    python -m devsen.explorer.vendor --check  # exit 1 if the committed copy differs (CI)

Why a committed copy and not node_modules at run time: a node installed from the Python
package alone has no node_modules, and the explorer must work with no network. The copy is
the transitive closure of the ES modules the explorer imports (ENTRY_POINTS), byte for byte
except that bare specifiers (`@noble/hashes/x.js`) become relative paths, because browsers
resolve bare specifiers only through an import map (an inline script, which the explorer's
Content-Security-Policy forbids). No bundler, no minifier: every file can be diffed against
the npm tarball pinned in package-lock.json.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
VENDOR = Path(__file__).resolve().parent / "static" / "vendor"
PACKAGES = {"@noble/hashes": "noble-hashes", "@noble/curves": "noble-curves"}
ENTRY_POINTS = ("@noble/hashes/sha3.js", "@noble/curves/secp256k1.js")
MAX_FILES = 64  # the closure is about 20 files; more means the packages changed shape
# import/export statements at the start of a line (not the examples in doc comments)
_IMPORT = re.compile(r"""^((?:import|export)\b[^'";]*?(?:\bfrom\s*|import\s*))(['"])([^'"]+)\2""", re.MULTILINE)


def _split(specifier: str) -> tuple[str, str]:
    """(package, path inside it) of a bare `@scope/name/path` specifier."""
    for package in PACKAGES:
        if specifier.startswith(package + "/"):
            return package, specifier[len(package) + 1:]
    raise ValueError(f"the explorer vendors only {sorted(PACKAGES)}, not {specifier!r}")


def vendored_files(node_modules: Path = NODE_MODULES) -> dict[str, bytes]:
    """{path under static/vendor: content} for the closure of ENTRY_POINTS."""
    out: dict[str, bytes] = {}
    pending = [_split(e) for e in ENTRY_POINTS]
    versions = {}
    for package, folder in PACKAGES.items():
        manifest = json.loads((node_modules / package / "package.json").read_text())
        versions[folder] = manifest["version"]
    while pending:
        package, inner = pending.pop()
        target = f"{PACKAGES[package]}/{inner}"
        if target in out:
            continue
        if len(out) >= MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files to vendor")
        text = (node_modules / package / inner).read_text()

        def rewrite(match: re.Match[str], package: str = package, inner: str = inner) -> str:
            specifier = match.group(3)
            if specifier.startswith("."):
                dep_package, dep_inner = package, posixpath.normpath(posixpath.join(posixpath.dirname(inner), specifier))
            else:
                dep_package, dep_inner = _split(specifier)
            pending.append((dep_package, dep_inner))
            here = posixpath.dirname(f"{PACKAGES[package]}/{inner}")
            relative = posixpath.relpath(f"{PACKAGES[dep_package]}/{dep_inner}", here)
            return f"{match.group(1)}{match.group(2)}{relative if relative.startswith('.') else './' + relative}" \
                   f"{match.group(2)}"

        out[target] = _IMPORT.sub(rewrite, text).encode()
    for folder, version in versions.items():
        license_text = (node_modules / next(p for p, f in PACKAGES.items() if f == folder) / "LICENSE").read_bytes()
        out[f"{folder}/LICENSE"] = license_text
        out[f"{folder}/VERSION"] = f"{version}\n".encode()
    return dict(sorted(out.items()))


def committed_files(vendor: Path = VENDOR) -> dict[str, bytes]:
    return {p.relative_to(vendor).as_posix(): p.read_bytes() for p in sorted(vendor.rglob("*")) if p.is_file()}


def main(argv: list[str]) -> int:
    wanted = vendored_files()
    if argv == ["--check"]:
        have = committed_files()
        if have != wanted:
            differ = sorted(set(have) ^ set(wanted) | {k for k in have.keys() & wanted.keys() if have[k] != wanted[k]})
            print(f"static/vendor differs from node_modules in {differ}; run python -m devsen.explorer.vendor",
                  file=sys.stderr)
            return 1
        print(f"static/vendor matches node_modules ({len(wanted)} files)")
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for old in committed_files():
        os.remove(VENDOR / old)
    for name, content in wanted.items():
        path = VENDOR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {len(wanted)} files to {VENDOR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
