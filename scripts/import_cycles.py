#!/usr/bin/env python3
"""Import circles between the files of a Rust crate's `src/`.

Each file is a node (`mod.rs` stands for its folder's module). An edge a -> b means file a
names an item of file b: `crate::x::y` paths (in `use` lines and inline), `super::` and
`self::` paths, resolved to the deepest module file that exists. Prints every strongly
connected component with more than one file, largest first, and exits with status 1 when one
is larger than `--max` (default 2).

    python3 scripts/import_cycles.py engine/src [--max 2]
"""

import argparse
import re
import sys
from pathlib import Path


def module_path(src: Path, file: Path) -> tuple:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def test_free(text: str) -> str:
    """The text before `#[cfg(test)] mod tests` (tests may name anything)."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+", text)
    return text[: m.start()] if m else text


def paths_in(text: str):
    """Every path written as `crate::a::b`, `super::a`, `self::a`, including `use` groups."""
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)(::\{([^;]*?)\})?", text):
        head = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        yield head
        if m.group(4):
            for item in re.split(r",", m.group(4)):
                item = item.strip().split(" as ")[0].strip()
                if item and item != "self":
                    yield head + [p for p in item.split("::") if p and p != "{"]


def resolve(path: list, here: tuple, modules: dict):
    parts = list(path)
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    else:
        base = list(here)
        rest = parts
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    best = None
    for i in range(len(rest) + 1):
        candidate = tuple(base + rest[:i])
        if candidate in modules:
            best = candidate
    return best


def sccs(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("--max", type=int, default=2)
    args = ap.parse_args()
    files = sorted(args.src.rglob("*.rs"))
    modules = {module_path(args.src, f): f for f in files}
    edges = {}
    for mod, file in modules.items():
        # A folder module's `mod.rs` is where `self::` and `super::` are resolved from.
        here = mod
        text = test_free(strip_comments(file.read_text()))
        for path in paths_in(text):
            target = resolve(path, here, modules)
            if target is not None and target != mod:
                edges.setdefault(mod, set()).add(target)
    comps = [c for c in sccs(list(modules), edges) if len(c) > 1]
    comps.sort(key=len, reverse=True)
    name = lambda m: str(modules[m].relative_to(args.src))
    for c in comps:
        print(f"{len(c)} files: " + ", ".join(sorted(name(m) for m in c)))
    largest = max((len(c) for c in comps), default=1)
    print(f"{len(modules)} files, {sum(len(v) for v in edges.values())} edges; "
          f"largest import circle: {largest} file{'s' if largest != 1 else ''}")
    sys.exit(1 if largest > args.max else 0)


if __name__ == "__main__":
    main()
