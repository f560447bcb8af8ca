"""``nmt analyze``: dispatches to the analysis subcommands, importing only the one asked for."""

from __future__ import annotations

import sys

USAGE = """usage: nmt analyze <what> [args…]

  attention  write attention.html for chosen sentences: every site × layer × head, offline (nmt analyze attention -h)
  heads      per-head entropy, importance (Michel et al. 2019) and pruning curves per site (nmt analyze heads -h)
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    what, rest = argv[0], argv[1:]
    if what == "attention":
        from nmt.analysis.viewer import main as viewer_main

        return viewer_main(rest)
    if what == "heads":
        from nmt.analysis.heads import main as heads_main

        return heads_main(rest)
    print(f"nmt analyze: unknown subcommand {what!r}\n{USAGE}", file=sys.stderr, end="")
    return 2
