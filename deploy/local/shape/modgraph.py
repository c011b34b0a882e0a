#!/usr/bin/env python3
"""Module dependency graph of a Rust crate from its sources; prints cycles.

Nodes are modules (one per file, plus inline `mod x {}` blocks are folded
into their file; `#[cfg(test)]` modules are dropped). An edge A -> B is a
path in A that names B: `crate::b::...`, `super::...`, `self::...`, or a
child module declared in A (`mod b;` then `b::...`). A path resolves to the
longest known module prefix; naming an item of an ancestor module is an
edge to that ancestor.
"""
import os, re, sys
from collections import defaultdict

root = sys.argv[1]  # e.g. dispatcher/src
crate_root = sys.argv[2] if len(sys.argv) > 2 else "lib.rs"

def modpath(rel):
    p = rel[:-3].split(os.sep)
    if p[-1] in ("mod",):
        p = p[:-1]
    if p == [crate_root[:-3]]:
        return ()
    return tuple(p)

files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith(".rs"):
            rel = os.path.relpath(os.path.join(d, f), root)
            if rel == "main.rs" and crate_root != "main.rs":
                continue
            files[modpath(rel)] = open(os.path.join(d, f)).read()

def strip(src):
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r'"(\\.|[^"\\])*"', '""', src)
    # drop #[cfg(test)] items (a mod block or a single item)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", src):
        if m.start() < i:
            continue
        out.append(src[i:m.start()])
        j = src.find("{", m.end()); semi = src.find(";", m.end())
        if semi != -1 and (j == -1 or semi < j):
            i = semi + 1; continue
        depth = 0
        for k in range(j, len(src)):
            if src[k] == "{": depth += 1
            elif src[k] == "}":
                depth -= 1
                if depth == 0: break
        i = k + 1
    out.append(src[i:])
    return "".join(out)

mods = set(files)
children = defaultdict(set)
for m, src in files.items():
    for c in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", strip(src), re.M):
        children[m].add(c)

def expand(prefix, body):
    """`a::{b, c::{d}}` -> [a::b, a::c::d] (rough)."""
    res, depth, cur = [], 0, ""
    for ch in body + ",":
        if ch == "," and depth == 0:
            cur = cur.strip()
            if cur:
                mm = re.match(r"([\w:]*?)::\{(.*)\}$", cur, re.S)
                if mm:
                    res += expand(prefix + [x for x in mm.group(1).split("::") if x], mm.group(2))
                else:
                    res.append(prefix + [x for x in cur.split(" as ")[0].strip().split("::") if x])
            cur = ""
        else:
            if ch == "{": depth += 1
            if ch == "}": depth -= 1
            cur += ch
    return res

def paths(src):
    src = strip(src)
    out = []
    # use trees with braces
    for m in re.finditer(r"\buse\s+([^;]+);", src):
        out += expand([], m.group(1))
    # plain paths in code
    for m in re.finditer(r"\b((?:crate|super|self|\w+)(?:::\w+)+)", src):
        out.append(m.group(1).split("::"))
    return out

def resolve(cur, segs):
    if not segs: return None
    if segs[0] == "crate": base, rest = (), segs[1:]
    elif segs[0] == "self": base, rest = cur, segs[1:]
    elif segs[0] == "super":
        base, rest = cur, segs
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif segs[0] in children[cur]: base, rest = cur, segs
    else: return None
    best = base
    for i in range(len(rest)):
        cand = base + tuple(rest[: i + 1])
        if cand in mods: best = cand
        else: break
    return best

aliases = defaultdict(dict)
for m, src in files.items():
    for mm in re.finditer(r"\buse\s+([^;]+);", strip(src)):
        for p in expand([], mm.group(1)):
            if p and p[-1] == "self":
                p = p[:-1]
            t = resolve(m, p)
            if t is not None and t != () and len(p) > 0 and t[-1] == p[-1]:
                aliases[m][p[-1]] = t

edges = defaultdict(set)
for m, src in files.items():
    for p in paths(src):
        if p and p[0] in aliases[m] and p[0] not in children[m]:
            t = resolve(m, ["crate", *aliases[m][p[0]], *p[1:]])
        else:
            t = resolve(m, p)
        if t is not None and t != m:
            edges[m].add(t)

name = lambda m: "::".join(("crate",) + m)
if "-v" in sys.argv:
    for m in sorted(edges):
        print(name(m), "->", ", ".join(sorted(name(t) for t in edges[m])))

# Tarjan SCC
index, low, onstack, stack, sccs, counter = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); onstack.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in onstack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); onstack.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in sorted(mods):
    if v not in index: visit(v)
cycles = [c for c in sccs if len(c) > 1]
print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(cycles)} cycles")
for c in cycles:
    print("cycle:", " <-> ".join(sorted(name(m) for m in c)))
    for a in sorted(c):
        print("   ", name(a), "->", ", ".join(sorted(name(b) for b in edges[a] if b in c)))
sys.exit(1 if cycles else 0)
