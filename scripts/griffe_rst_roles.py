"""A griffe extension for the API reference (``extensions`` in mkdocs.yml; ``make docs``).

The docstrings name other objects with reStructuredText roles (:func:`fit`, :class:`~x.MaskStore`)
and open literal blocks with ``::``. mkdocstrings renders docstrings as Markdown, where a role would
show as typed; this turns each role into inline code (``~`` keeps the last name, as Sphinx does) and
a trailing ``::`` into ``:`` (the indented block after it is already code in Markdown). The
docstrings themselves are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
LITERAL = re.compile(r"::$", flags=re.M)


def markdown(text: str) -> str:
    """``text`` with every role as inline code and every ``::`` at a line's end as ``:``."""
    text = ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return LITERAL.sub(":", text)


class RstRoles(griffe.Extension):
    """Rewrites each loaded object's docstring for Markdown rendering."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
