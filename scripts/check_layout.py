#!/usr/bin/env python3
"""The function crate's layout, checked from its `use` lines (part of `make lint`).

Fails, naming the file and the line, when:
  * an AWS SDK crate (`aws_sdk_*`, `aws_config`, `aws_smithy_*`) is named outside `src/aws/`;
  * a plan or `model/` reads the clock (outside its tests): `now` is an argument of every
    decision;
  * a module imports a layer above its own. The layers, lowest first:
        model  <-  error, config, jobs  <-  aws  <-  <concern>/plan  <-  app  <-  <concern>/step  <-  entry  <-  lib
    (`model/` imports nothing of the crate but itself; `aws/` never imports a concern; and,
    although it stands above `aws/`, a plan never imports `aws/` or `app`: it is pure);
  * the imports between files, or between the top-level folders (the concerns), form a cycle.

Usage: check_layout.py [SRC_DIR]   (default: functions/consistent-snapshot/src)
"""

import re
import sys
from pathlib import Path

SDK = re.compile(r"\b(aws_sdk_\w+|aws_config|aws_smithy_\w+)\b")
CLOCK = re.compile(r"\b(Utc::now|SystemTime::now|Instant::now|Local::now)\b")
CONCERNS = {"run", "copy", "vault", "retention", "restore", "report"}


def strip_comments(text):
    """Drops // comments (doc comments included) and string literals' contents, keeping lines."""
    out = []
    for line in text.split("\n"):
        line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
        out.append(line.split("//", 1)[0])
    return out


def module_of(path, src):
    """`src/run/plan/track.rs` -> ('run', 'plan', 'track'); `src/aws/mod.rs` -> ('aws',)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts == ["lib"] or parts == ["main"]:
        return (parts[0],)
    return tuple(parts)


def layer(module):
    """The layer a module stands in (higher may import lower, never the other way)."""
    top = module[0]
    if top == "model":
        return 0
    if top in ("error", "config", "jobs"):
        return 1
    if top == "aws":
        return 2
    if top in CONCERNS:
        if len(module) == 1:
            return 6  # the concern's mod.rs only declares its plan and step
        return 3 if module[1] == "plan" else 5
    if top == "app":
        return 4
    if top == "entry":
        return 6
    return 7  # lib, main


LAYER_NAMES = {0: "model", 1: "error/config/jobs", 2: "aws", 3: "a plan", 4: "app",
               5: "a step", 6: "entry", 7: "lib"}


def use_paths(lines):
    """Every `crate::a::b` path a file names, with its line number; `use` groups expanded to
    their first segments (`use crate::x::{a, b::c}` names crate::x::a and crate::x::b)."""
    found = []
    text = "\n".join(lines)
    for m in re.finditer(r"\bcrate::((?:\w+::)*)(\{[^}]*\}|\w+)", text):
        line = text.count("\n", 0, m.start()) + 1
        head = [p for p in m.group(1).split("::") if p]
        tail = m.group(2)
        if tail.startswith("{"):
            names = [n.strip().split("::")[0] for n in tail[1:-1].split(",")]
            for name in names:
                if name and name != "self":
                    found.append((line, head + [name]))
                elif name == "self":
                    found.append((line, head))
        else:
            found.append((line, head + [tail]))
    return found


def resolve(path, modules):
    """The longest module prefix of a `crate::` path."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "functions/consistent-snapshot/src")
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(f, src): f for f in files}
    problems = []
    file_graph, folder_graph = {}, {}
    for module, path in modules.items():
        lines = strip_comments(path.read_text())
        rel = path
        if module[0] != "aws":
            for n, line in enumerate(lines, 1):
                m = SDK.search(line)
                if m:
                    problems.append(f"{rel}:{n}: names {m.group(1)} outside aws/ (only aws/ talks to the SDK)")
        if layer(module) in (0, 3):
            for n, line in enumerate(lines, 1):
                if line.startswith("#[cfg(test)]"):
                    break
                m = CLOCK.search(line)
                if m:
                    problems.append(f"{rel}:{n}: {m.group(1)}() in a pure module: take `now` as an argument")
        for n, target_path in use_paths(lines):
            target = resolve(target_path, modules)
            if target is None or target == module:
                continue
            file_graph.setdefault(module, set()).add(target)
            if target[0] != module[0]:
                folder_graph.setdefault(module[0], set()).add(target[0])
            if layer(module) == 3 and target[0] in ("aws", "app"):
                problems.append(
                    f"{rel}:{n}: the plan {'::'.join(module)} imports {'::'.join(target)}: "
                    "a plan is pure, it never imports aws/ (nor app, which holds the clients)"
                )
            elif layer(target) > layer(module):
                problems.append(
                    f"{rel}:{n}: {'::'.join(module)} ({LAYER_NAMES[layer(module)]}) imports "
                    f"{'::'.join(target)} ({LAYER_NAMES[layer(target)]}), a layer above it"
                )
    for comp in cycles(file_graph):
        problems.append("import cycle between files: " + " -> ".join("::".join(m) for m in comp))
    for comp in cycles(folder_graph):
        problems.append("import cycle between folders: " + " -> ".join(comp))
    if problems:
        print("layout check failed:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    edges = sum(len(v) for v in file_graph.values())
    print(f"layout ok: {len(modules)} modules, {edges} imports between them, no cycle, "
          "the SDK named only in aws/, no clock in a plan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
