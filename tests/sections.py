#!/usr/bin/env python3
"""make sections: every function of llmgw.c sits in the section that owns
its prefix.

The table of contents at the top of llmgw.c gives each section a line
"N. Title   prefixes : what it owns" (the prefix list may wrap onto the
following lines; it ends at " : "). A prefix ending in "_" owns every name
that starts with it; one without owns that name and the names that start
with it and "_" (lg_str owns lg_str and lg_str_eq, not lg_strz). A
function belongs to the section whose listed prefix is the longest that
matches its name. The check fails when a function is defined outside the
section that owns its name, when no section owns it, or when two sections
list the same prefix (one meaning per prefix). Prints one line per
problem and ends with "N passed, N failed" (one check per function)."""
import re
import sys

args = [a for a in sys.argv[1:] if a != "--self-test"]
path = args[0] if args else "llmgw.c"
src = open(path, encoding="utf-8").read().split("\n")
if "--self-test" in sys.argv:
    # the check must catch a function in the wrong section: rename the
    # first lg_srv_ definition into section 13's prefix
    for k, line in enumerate(src):
        if line.startswith("static ") and " lg_srv_" in line and line.rstrip().endswith(")"):
            src[k] = line.replace(" lg_srv_", " lg_acct_selftest_", 1)
            break

# --- the table of contents: the header comment's "N. Title ..." lines
toc, cur = {}, None
for line in src:
    if line.startswith(" */"):
        break
    m = re.match(r"^ \*\s+(\d+)\.\s+(.*)$", line)
    if m:
        cur = int(m.group(1))
        toc[cur] = [m.group(2)]
    elif cur is not None and re.match(r"^ \*\s{6,}\S", line):
        toc[cur].append(line[2:].strip())
    else:
        cur = None
owner, problems = {}, []
for n, parts in toc.items():
    text = " ".join(parts)
    left = text.split(" : ", 1)[0] if " : " in text else ""
    for p in re.findall(r"\b(?:lg|llmgw)_\w*", left):
        if p in owner and owner[p] != n:
            problems.append("prefix %s is listed by sections %d and %d" % (p, owner[p], n))
        owner[p] = n


def owner_of(name):
    best = None
    for p, n in owner.items():
        if (p.endswith("_") and name.startswith(p)) or name == p or name.startswith(p + "_"):
            if best is None or len(p) > len(best[0]):
                best = (p, n)
    return best


def code(line):
    """the line without a trailing comment, right-stripped"""
    return re.sub(r"\s*(/\*.*?\*/|//.*)\s*$", "", line).rstrip()


# --- function definitions, by section
sec, checked = None, 0
i = 0
while i < len(src):
    line = src[i]
    m = re.match(r"/\* ===== (\d+)\. ", line)
    if m:
        sec = int(m.group(1))
    m = re.match(r"^(?!typedef|#|struct \w+ \{|enum)[A-Za-z][^=;(]*?\b((?:lg|llmgw)_\w+)\s*\(", line)
    if sec is not None and m:
        j = i  # a definition reaches "{" before ";"
        while j < len(src) and "{" not in code(src[j]) and not code(src[j]).endswith(";"):
            j += 1
        if j < len(src) and "{" in code(src[j]) and not code(src[j]).split("{")[0].rstrip().endswith(";"):
            name = m.group(1)
            checked += 1
            o = owner_of(name)
            if o is None:
                problems.append("%s:%d: %s (section %d): no section's contents line lists its prefix"
                                % (path, i + 1, name, sec))
            elif o[1] != sec:
                problems.append("%s:%d: %s is in section %d, but %s belongs to section %d"
                                % (path, i + 1, name, sec, o[0], o[1]))
    i += 1

if "--self-test" in sys.argv:
    ok = len(problems) == 1 and "lg_acct_selftest_" in problems[0] and "section 13" in problems[0]
    print("sections self-test: %s" % ("a misplaced function is reported" if ok else "NOT reported as expected"))
    sys.exit(0 if ok else 1)
for p in problems:
    print(p)
print("sections: %d functions in %d sections checked" % (checked, len(toc)))
print("%d passed, %d failed" % (checked - len([p for p in problems if ":" in p]), len(problems)))
sys.exit(1 if problems else 0)
