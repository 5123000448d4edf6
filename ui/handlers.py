"""What every tab's handlers share: the person's workflow from the request, and the pipeline's refusals as messages.

A handler is written for one person's ``Workflow``; ``for_person`` makes it a Gradio handler::

    @for_person(people, missing="Select a model first: click its card.")
    def rename(workflow: Workflow, mid: str, name: str) -> tuple: ...

Gradio sees ``rename(mid, name, request: gr.Request)``: the same inputs, and with them the same parameter names in
the API (``view_api()``), plus the request it injects. The pipeline refuses with a ``ValueError`` (a
``SettingsError``, a model that is not this person's, a full disk); ``refused`` turns one into the ``gr.Error``
the page shows as a toast and an API caller reads as text, without server paths (``ui.text.escaped``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from ui.people import People
from ui.text import escaped


@contextlib.contextmanager
def refused(prefix: str = "") -> Iterator[None]:
    """A ``ValueError`` raised inside as a ``gr.Error`` with its message (after ``prefix``); a ``gr.Error`` (itself a
    ``ValueError``) passes as it is."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as exc:
        raise gr.Error(prefix + escaped(exc)) from exc


def for_person(people: People, *, storing: bool = False, missing: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: ``handler(workflow, *inputs)`` → a Gradio handler ``(*inputs, request)`` that runs it on the
    workflow of the person who sent the request, with ``refused``'s messages.

    ``storing``: the handler stores something, so the person's workspace is made if need be (``people.storing``);
    otherwise it reads (``people(request)``: the blank view, nothing is made). ``missing``: the message when the
    first input is empty, said before anything is looked up. Generator handlers stay generators (streamed)."""

    def decorate(handler: Callable) -> Callable:
        signature, hints = _without_workflow(handler)

        def call(args: tuple, kwargs: dict) -> tuple[Any, dict[str, Any]]:
            arguments = signature.bind(*args, **kwargs).arguments
            request = arguments.pop("request")
            if missing is not None and not next(iter(arguments.values()), None):
                raise gr.Error(missing)
            return (people.storing(request) if storing else people(request)), arguments

        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def streamed(*args: Any, **kwargs: Any) -> Iterator[Any]:
                workflow, arguments = call(args, kwargs)
                with refused():
                    yield from handler(workflow, **arguments)

            wrapper = streamed
        else:
            @functools.wraps(handler)
            def answered(*args: Any, **kwargs: Any) -> Any:
                workflow, arguments = call(args, kwargs)
                with refused():
                    return handler(workflow, **arguments)

            wrapper = answered
        # What Gradio reads: the inputs' names and types, then the request it injects (and gr.Progress, by default).
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = hints
        del wrapper.__wrapped__  # inspect.signature and typing would otherwise read the handler's own
        return wrapper

    return decorate


def _without_workflow(handler: Callable) -> tuple[inspect.Signature, dict[str, Any]]:
    """``handler``'s signature and resolved annotations without its first parameter (the workflow), with
    ``request: gr.Request`` where Gradio injects it: after the inputs, before the first parameter with a default
    (``progress: gr.Progress = gr.Progress()``)."""
    hints = typing.get_type_hints(handler)  # resolved now: an unresolvable one would hide the request from Gradio
    _workflow, *rest = inspect.signature(handler).parameters.values()
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    place = next((i for i, p in enumerate(rest) if p.default is not inspect.Parameter.empty), len(rest))
    parameters = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in rest]
    parameters.insert(place, request)
    annotations = {p.name: p.annotation for p in parameters if p.annotation is not inspect.Parameter.empty}
    if "return" in hints:
        annotations["return"] = hints["return"]
    return inspect.signature(handler).replace(parameters=parameters), annotations
