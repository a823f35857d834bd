"""MkDocs hook: `<!-- cli-help COMMAND -->` in a page becomes the current `tsai-ssl COMMAND --help` text, so the
command-line guide cannot drift from the parser (the parser imports no torch: this costs milliseconds)."""
from __future__ import annotations

import re

from tsai_ssl.cli import build_parser

_MARK = re.compile(r'<!-- cli-help ?([a-z]*) -->')


def _help(command: str) -> str:
    parser = build_parser()
    if command:
        sub = next(a for a in parser._actions if a.dest == 'command')
        parser = sub.choices[command]
    return parser.format_help()


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _MARK.sub(lambda m: f'```text\n{_help(m.group(1)).rstrip()}\n```', markdown)
