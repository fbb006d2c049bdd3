#!/usr/bin/env python3
"""Prints the markdown table of configuration keys of a binary, from its
--help (so docs/config.md lists exactly the flags the binary has).
The Reload column says whether SIGHUP applies a key live: for
revtun-control every key but those in RESTART_ONLY (control/src/main.rs);
for revtun-site run the services and cameras.
Usage: scripts/config-keys.py BINARY [SUBCOMMAND]
       scripts/config-keys.py --update [BINDIR]   (rewrites docs/config.md's
       tables from BINDIR's binaries, default target/debug)"""
import os, re, subprocess, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

if sys.argv[1:2] == ["--update"]:
    bindir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "target/debug")
    doc_path = os.path.join(root, "docs/config.md")
    doc = open(doc_path).read()
    for heading, cmd in (("## revtun-control", ["revtun-control"]), ("## revtun-site run", ["revtun-site", "run"])):
        table = subprocess.run([sys.executable, os.path.abspath(__file__), os.path.join(bindir, cmd[0])] + cmd[1:],
                               capture_output=True, text=True, check=True).stdout
        i = doc.index(heading)
        j = doc.index("| Key |", i)
        k = j
        for line in doc[j:].split("\n"):
            if not line.startswith("|"):
                break
            k += len(line) + 1
        doc = doc[:j] + table + doc[k:]
    open(doc_path, "w").write(doc)
    sys.exit(0)

name = os.path.basename(sys.argv[1])
if name == "revtun-control":
    src = open(os.path.join(root, "control/src/main.rs")).read()
    block = re.search(r"const RESTART_ONLY: &\[&str\] = &\[(.*?)\];", src, re.S).group(1)
    restart = {k.replace("-", "_") for k in re.findall(r'"([a-z0-9-]+)"', block)}
    live = lambda key: key not in restart
else:
    live = lambda key: key in ("service", "camera")

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
print("| Key | Default | What | Reload |")
print("|---|---|---|---|")
for r in rows:
    if r["key"] in ("config", "check_config", "help", "version"):
        continue
    doc = " ".join(r["doc"]).replace("|", "\\|")
    first = doc.split(". ")[0]
    kind = "" if r["value"] else " (true/false)"
    reload = "live" if live(r["key"]) else "restart"
    print(f"| `{r['key']}`{kind} | {r['default'] or '-'} | {first} | {reload} |")
