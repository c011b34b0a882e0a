#!/usr/bin/env python3
"""Lists non-test .rs files over 600 lines and functions over 100 lines
(`#[cfg(test)] mod tests` excluded) under the given folders; exits 1 when
it lists any."""
import re, sys, os
found = 0
roots = sys.argv[1:]
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')
for root in roots:
    for dp, dn, fns in os.walk(root):
        for f in fns:
            if not f.endswith('.rs'): continue
            p = os.path.join(dp, f)
            lines = open(p).read().split('\n')
            # cut test module
            body = lines
            for i, l in enumerate(lines):
                if l.strip() == '#[cfg(test)]' and i + 1 < len(lines) and re.match(r'\s*mod\s+tests', lines[i+1]):
                    body = lines[:i]; break
            if len(body) > 600:
                print(f"FILE {p}: {len(body)} lines (non-test)"); found += 1
            i = 0
            while i < len(body):
                m = fn_re.match(body[i])
                if m:
                    # find opening brace and its match
                    depth = 0; started = False; j = i
                    while j < len(body):
                        s = re.sub(r'"(\\.|[^"\\])*"', '""', body[j])
                        s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                        s = s.split('//')[0]
                        for ch in s:
                            if ch == '{': depth += 1; started = True
                            elif ch == '}': depth -= 1
                        if started and depth == 0: break
                        if not started and s.rstrip().endswith(';'): break
                        j += 1
                    n = j - i + 1
                    if started and n > 100:
                        print(f"FN {p}:{i+1} {m.group(7)}: {n} lines"); found += 1
                i += 1
sys.exit(1 if found else 0)
