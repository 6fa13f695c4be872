"""`dptrain completion bash|zsh|fish`: the shell's completion script (argcomplete's).

    eval "$(dptrain completion bash)"      # in ~/.bashrc; zsh and fish likewise
"""
from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("completion", help="print the shell completion script: eval \"$(dptrain completion bash)\"")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=completion)


def completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["dptrain"], shell=args.shell))
    return 0


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request, if this run is one (exits), else do nothing."""
    import argcomplete

    argcomplete.autocomplete(parser)
