"""The `__call__` of a PLADIS pipeline: the parent pipeline's parameters plus the table's keywords, made once.

`@pipeline_call(SDXL)` on a pipeline's `__call__(self, keywords, arguments)` gives the class, when it is created,
a `__call__` whose signature is its diffusers parent's exact parameters (names, order, kinds, defaults,
annotations) followed by the keywords `pipeline/guidance.py`'s table lists for that pipeline, and whose docstring
is the parent's with those keywords added to its arguments. A call binds as the parent's would (positionally or
by keyword), refuses a `pladis_*` or table keyword the pipeline does not take by name, and hands the body the
table's keywords (given or default) and the parent's arguments by name. Nothing of diffusers' source is copied:
whatever the installed diffusers' parent takes, the subclass takes.
"""

from __future__ import annotations

import difflib
import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from attention.settings import PLADISSettings

from .guidance import GUIDANCE_BY_NAME, GuidanceArgument, keywords_of
from .saving import stock_pipeline_class

Body = Callable[[Any, dict[str, Any], dict[str, Any]], Any]
_ENTRY_INDENT, _TEXT_INDENT, _WIDTH = " " * 12, " " * 16, 119


def call_signature(parent: Callable, keywords: Sequence[GuidanceArgument]) -> inspect.Signature:
    """The parent's parameters, then `keywords` (keyword-only, before the parent's `**kwargs`). A parent parameter
    that is also a keyword (the PAG parents' `pag_scale`) keeps its place, kind and annotation and takes the table's
    default: the PLADIS pipelines run plain CFG unless a guidance is asked for."""
    parent_signature = inspect.signature(parent)
    table = {keyword.name: keyword for keyword in keywords}
    kept = [
        parameter if parameter.name not in table else parameter.replace(default=table[parameter.name].default)
        for parameter in parent_signature.parameters.values()
        if parameter.kind is not parameter.VAR_KEYWORD
    ]
    added = [
        inspect.Parameter(
            keyword.name, inspect.Parameter.KEYWORD_ONLY, default=keyword.default, annotation=keyword.annotation
        )
        for keyword in keywords
        if keyword.name not in parent_signature.parameters
    ]
    var_keyword = [p for p in parent_signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    return parent_signature.replace(parameters=[*kept, *added, *var_keyword])


def _entry(keyword: GuidanceArgument) -> str:
    """`keyword` as an argument entry in diffusers' docstring style."""
    head = f"{_ENTRY_INDENT}{keyword.name} (`{keyword.annotation}`, *optional*, defaults to {keyword.default!r}):"
    return f"{head}\n{textwrap.fill(keyword.help, _WIDTH, initial_indent=_TEXT_INDENT, subsequent_indent=_TEXT_INDENT)}"


def call_docstring(summary: str, parent_doc: str | None, keywords: Sequence[GuidanceArgument]) -> str:
    """`summary`, then the parent's docstring with `keywords` in its arguments: a parent entry of the same name
    is replaced (its default is the table's), the others follow the parent's last argument."""
    doc = parent_doc or ""
    added = []
    for keyword in keywords:
        entry = re.compile(rf"^{_ENTRY_INDENT}{re.escape(keyword.name)} \(.*?(?=^ {{0,12}}\S|^[ \t]*$)", re.M | re.S)
        doc, replaced = entry.subn(lambda match, keyword=keyword: _entry(keyword) + "\n", doc, count=1)
        if not replaced:
            added.append(_entry(keyword))
    if added:
        end = re.search(r"\n(?=\s*\n\s*(Examples|Returns):)", doc)
        if end is None:
            doc = f"{doc.rstrip()}\n\n        PLADIS arguments:\n" + "\n".join(added) + "\n"
        else:
            doc = doc[: end.start()] + "\n" + "\n".join(added) + doc[end.start() :]
    margin = " " * min((len(line) - len(line.lstrip()) for line in doc.splitlines()[1:] if line.strip()), default=8)
    first, *rest = inspect.cleandoc(summary).splitlines() or [""]
    return "\n".join([first, *(f"{margin}{line}" if line else "" for line in rest)]) + "\n" + doc


# `PLADISSettings` fields that are no pipeline keyword (the call's kernel): given to a pipeline, they are refused.
_SETTINGS_ONLY = {field.name for field in fields(PLADISSettings)} - set(GUIDANCE_BY_NAME)


def _refuse_foreign_keywords(cls: type, given: Sequence[str], keywords: Sequence[GuidanceArgument]) -> None:
    """A `pladis_*` keyword, a table keyword of another PLADIS pipeline, or a `PLADISSettings` field that is no
    pipeline keyword, that `cls` does not take raises a `TypeError` naming it and the keywords `cls` takes (the
    parent's `**kwargs` would swallow it silently)."""
    accepted = [keyword.name for keyword in keywords]
    for name in given:
        if name in accepted or not (name.startswith("pladis_") or name in GUIDANCE_BY_NAME or name in _SETTINGS_ONLY):
            continue
        if name in _SETTINGS_ONLY:
            hint = (
                f" (a PLADISSettings field, not a pipeline keyword: `with apply_pladis(pipe, PLADISSettings(2.0, "
                f"{name}=...)): pipe(prompt)`, or the PLADIS_KERNEL environment variable)"
            )
        elif name in GUIDANCE_BY_NAME:
            takers = sorted(GUIDANCE_BY_NAME[name].pipelines)
            hint = f" (a keyword of the {' and '.join(takers)} pipeline{'s' if len(takers) > 1 else ''} only)"
        else:
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(
            f"{cls.__name__}.__call__() got an unexpected keyword argument {name!r}{hint}; "
            f"its PLADIS keywords are {', '.join(accepted)}"
        )


def generated_call(owner: type, body: Body, keywords: Sequence[GuidanceArgument]) -> Callable:
    """`owner.__call__`: binds a call to `call_signature(parent, keywords)` and runs `body(self, keywords, arguments)`
    with the table's keywords (given or default) and the parent's arguments by name (its `**kwargs` merged in)."""
    parent = stock_pipeline_class(owner).__call__
    signature = call_signature(parent, keywords)
    first, *_ = signature.parameters
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _refuse_foreign_keywords(type(self), list(kwargs), keywords)
        arguments = signature.bind(self, *args, **kwargs).arguments
        del arguments[first]
        arguments.update(arguments.pop(var_keyword, {}))
        chosen = {keyword.name: arguments.pop(keyword.name, keyword.default) for keyword in keywords}
        return body(self, chosen, arguments)

    __call__.__name__, __call__.__qualname__, __call__.__module__ = body.__name__, body.__qualname__, body.__module__
    __call__.__doc__ = call_docstring(body.__doc__ or "", parent.__doc__, keywords)
    __call__.__signature__ = signature
    __call__.__annotations__ = {
        **{p.name: p.annotation for p in signature.parameters.values() if p.annotation is not p.empty},
        **({} if signature.return_annotation is signature.empty else {"return": signature.return_annotation}),
    }
    return __call__


class _PipelineCall:
    """What `@pipeline_call` leaves in the class body: once the class exists (`__set_name__`), its parent is
    known and the generated `__call__` takes this placeholder's place."""

    def __init__(self, body: Body, pipeline: str) -> None:
        self.body, self.keywords = body, keywords_of(pipeline)

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, name, generated_call(owner, self.body, self.keywords))


def pipeline_call(pipeline: str) -> Callable[[Body], Any]:
    """Decorate the `__call__(self, keywords, arguments)` of the PLADIS pipeline `pipeline` (a name of
    `pipeline/guidance.py`: SDXL, SDXL_SEG, CONTROLNET, FLUX); see the module docstring."""

    def decorate(body: Body) -> _PipelineCall:
        return _PipelineCall(body, pipeline)

    return decorate
