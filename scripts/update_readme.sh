#!/usr/bin/env bash
# Regenerates README.md's environment-variable table from the code's table.
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(./build/default/tools/dynamoe-config --markdown)
/usr/bin/python3 - "$table" <<'PY'
import sys
begin, end = "<!-- env-table:begin -->\n", "<!-- env-table:end -->"
text = open("README.md").read()
a, b = text.index(begin) + len(begin), text.index(end)
open("README.md", "w").write(text[:a] + sys.argv[1] + "\n" + text[b:])
PY
