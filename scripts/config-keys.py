#!/usr/bin/env python3
"""Prints the markdown table of configuration keys of a binary, from its
--help (so docs/config.md lists exactly the flags the binary has).
Usage: scripts/config-keys.py BINARY [SUBCOMMAND]"""
import re, subprocess, sys

cmd = sys.argv[1:] + ["--help"]
text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
rows, cur = [], None
for line in text.splitlines():
    m = re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)(?: <([^>]+)>)?(?:\.\.\.)?\s*$", line)
    if m:
        cur = {"key": m.group(1).replace("-", "_"), "value": m.group(2), "doc": [], "default": ""}
        rows.append(cur)
        continue
    if cur is None:
        continue
    d = re.match(r"^\s+\[default: (.*)\]\s*$", line)
    if d:
        cur["default"] = d.group(1)
    elif line.strip() and not line.strip().startswith("["):
        cur["doc"].append(line.strip())
print("| Key | Default | What |")
print("|---|---|---|")
for r in rows:
    if r["key"] in ("config", "check_config", "help", "version"):
        continue
    doc = " ".join(r["doc"]).replace("|", "\\|")
    first = doc.split(". ")[0]
    kind = "" if r["value"] else " (true/false)"
    print(f"| `{r['key']}`{kind} | {r['default'] or '-'} | {first} |")
