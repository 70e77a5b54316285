#!/usr/bin/env python3
# A copy of the project's ../shared/tools/layout_check.py, run by .ci/run (CI has only the repo).
"""Layout check of a Rust crate's src/: module import cycles and file sizes.

Top-level modules are src/X.rs or src/X/. An edge X -> Y is a `crate::Y` path (in a use
or inline) in X's production code (text before the first `#[cfg(test)]` of each file).
Allowed: no cycle, except one pair made of the module defining `pub enum Value` and the
module defining `pub struct MessagePort` (a type reference of the web's value model).
Also: no production part of a file over MAX_LINES lines. Exit 1 on a finding.
"""
import os, re, sys

MAX_LINES = int(os.environ.get("MAX_LINES", "800"))
src = sys.argv[1] if len(sys.argv) > 1 else "src"
top = {}
for entry in sorted(os.listdir(src)):
    p = os.path.join(src, entry)
    if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
        top[entry[:-3]] = [p]
    elif os.path.isdir(p):
        top[entry] = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if f.endswith(".rs")]

def production(path):
    text = open(path, encoding="utf-8").read()
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]

edges, owner, findings = {m: set() for m in top}, {}, []
for m, files in top.items():
    for f in files:
        code = production(f)
        lines = code.count("\n")
        if lines > MAX_LINES:
            findings.append(f"{os.path.relpath(f, src)}: {lines} production lines (> {MAX_LINES})")
        if re.search(r"pub enum Value\b", code):
            owner["Value"] = m
        if re.search(r"pub struct MessagePort\b", code):
            owner["MessagePort"] = m
        for use in re.findall(r"crate::\{([^}]*)\}", code):
            for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b", use):
                if name in top and name != m:
                    edges[m].add(name)
        for name in re.findall(r"crate::([a-z_][a-z0-9_]*)", code):
            if name in top and name != m:
                edges[m].add(name)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in top:
    if v not in index:
        visit(v)
allowed = sorted({owner.get("Value"), owner.get("MessagePort")} - {None})
for comp in sccs:
    if len(allowed) == 2 and comp == allowed:
        continue
    findings.append("import cycle: " + " <-> ".join(comp))
for f in findings:
    print(f)
print(f"layout: {len(top)} top-level modules, {len(sccs)} cycle(s), {len(findings)} finding(s)")
sys.exit(1 if findings else 0)
