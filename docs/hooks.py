"""MkDocs hook: `<!-- cli-help COMMAND -->` in a page becomes the current `tsai-ssl COMMAND --help` text, so the
command-line guide cannot drift from the parser (the parser imports no torch: this costs milliseconds)."""
from __future__ import annotations

import argparse
import re

from tsai_ssl.cli import build_parser

_MARK = re.compile(r'<!-- cli-help ?([a-z ]*?) -->')


def help_text(command: str) -> str:
    "``tsai-ssl COMMAND --help`` ('' for the top level; 'store build' for a nested command)."
    parser = build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser.format_help()


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARK.sub(lambda m: f'```text\n{help_text(m.group(1)).rstrip()}\n```', markdown)
