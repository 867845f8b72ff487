#!/usr/bin/env python3
"""README's table of configuration keys is the gateway's own.

`llmgw --keys` prints the key table of llmgw.c (the one the parser, the
defaults and llmgw -t read). README.md holds the same table between the
lines "<!-- llmgw --keys -->" and "<!-- /llmgw --keys -->". This check
fails when they differ (a key added, renamed, its default or its doc
changed in one place only), naming each row that differs; with --update it
rewrites README's block from the binary. Ends with "N passed, N failed"
(one check per key row, one for the whole block)."""
import subprocess
import sys

gw = "./llmgw"
args = [a for a in sys.argv[1:] if not a.startswith("--")]
if args:
    gw = args[0]
BEGIN, END = "<!-- llmgw --keys -->", "<!-- /llmgw --keys -->"
table = subprocess.run([gw, "--keys"], check=True, capture_output=True, text=True).stdout
readme = open("README.md", encoding="utf-8").read()
if BEGIN not in readme or END not in readme:
    print("README.md has no %s ... %s block" % (BEGIN, END))
    print("0 passed, 1 failed")
    sys.exit(1)
head, rest = readme.split(BEGIN, 1)
block, tail = rest.split(END, 1)
if "--update" in sys.argv:
    open("README.md", "w", encoding="utf-8").write(head + BEGIN + "\n" + table + END + tail)
    print("README.md: key table rewritten (%d rows)" % (len(table.splitlines()) - 2))
    sys.exit(0)
want = table.splitlines()
have = block.strip("\n").splitlines()
passed = failed = 0
for row in want[2:]:
    if row in have:
        passed += 1
    else:
        failed += 1
        print("README.md lacks (or differs in) the row: %s" % row)
for row in have[2:]:
    if row not in want:
        failed += 1
        print("README.md has a row llmgw does not: %s" % row)
if want == have:
    passed += 1
else:
    failed += 1
    print("README.md's key table is not llmgw --keys (python3 tests/keys_doc.py --update rewrites it)")
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
