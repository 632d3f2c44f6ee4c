"""Command-line flags generated from the flows' parameter models: the UI form and the CLI cannot drift.

Every field of a parameter model (nowcast.flows.params) becomes one flag:
``archive`` is ``--archive``, ``t_in`` is ``--t-in``; the field's type gives
the flag's type and choices, its description the help, its default the
default (shown by ``--help``). A nested :class:`~nowcast.flows.params.Runner`
becomes ``--runner KIND``, ``--workers`` and ``--dask-address``, with Beam's
own flags after ``--``. :func:`params_from_args` builds the model from the
parsed flags, so a bad value fails with the form's own message.

Stores given on the command line are the user's own paths: they are not
confined to NOWCAST_STORAGE_ROOTS, which guards a server against paths typed
into its forms (see :data:`nowcast.flows.params.LOCAL_USER`).
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from nowcast.flows.params import LOCAL_USER, ParameterError, Runner

NONE_WORDS = ("", "none")  # what clears an optional value: --patch-size none


def flag(name: str) -> str:
    """The flag of a field.

    >>> flag("t_in")
    '--t-in'
    """
    return "--" + name.replace("_", "-")


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the type inside ``X | None``, whether None is allowed); ``Annotated`` constraints dropped."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(inner) == 1:
            annotation, optional = inner[0], True
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation, optional


def _scalar(annotation: Any, optional: bool) -> tuple[Callable[[str], Any], list[Any] | None]:
    """(a converter from text, the choices or None) for a scalar field type."""
    choices = None
    if typing.get_origin(annotation) is Literal:
        choices = list(typing.get_args(annotation))
        annotation = type(choices[0])
    if annotation not in (str, int, float):
        raise TypeError(f"no command-line form for a field of type {annotation!r}")

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in NONE_WORDS:
            return None  # not among the choices, which argparse checks: this converter checks them
        value = annotation(text)
        if optional and choices and value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(map(str, choices))}, or none)")
        return value

    convert.__name__ = annotation.__name__  # argparse names the type in its error message
    return convert, choices


def add_params(parser: argparse.ArgumentParser, model: type[BaseModel], *, skip: Iterable[str] = (),
               aliases: Mapping[str, str] = {}) -> None:
    """One flag per field of ``model`` (but ``skip``), with the field's type, default and description.

    ``aliases`` gives a field a second, shorter flag (``{"input_dir": "--input"}``).
    """
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if field.annotation is Runner:
            add_runner(parser)
            continue
        annotation, optional = _optional(field.annotation)
        names = [flag(name), *([aliases[name]] if name in aliases else [])]
        help_text = (field.description or name).replace("(empty", "(empty or none")
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        if field.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = field.get_default(call_default_factory=True)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            item, _ = _optional(item)  # an item's own bounds (Annotated) are the form's to check
            kwargs["type"], kwargs["choices"] = _scalar(item, optional=False)
            kwargs["nargs"] = "+"
        else:
            kwargs["type"], choices = _scalar(annotation, optional)
            if choices and optional:  # its converter checks them: argparse would refuse "none" (None)
                kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
            else:
                kwargs["choices"] = choices
        parser.add_argument(*names, **kwargs)


def add_runner(parser: argparse.ArgumentParser) -> None:
    """The Beam runner's flags, from :class:`Runner`; Beam's own flags follow ``--``."""
    group = parser.add_argument_group("Beam runner")
    fields = Runner.model_fields
    kind = fields["kind"]
    group.add_argument("--runner", dest="runner_kind", default=kind.default,
                       choices=list(typing.get_args(kind.annotation)),
                       help="inmemory: one process; multiprocess: --workers processes; dask: a cluster at "
                            "--dask-address; beam: any Beam runner, named and configured by Beam's own "
                            "flags after '--' (e.g. -- --runner=FlinkRunner --flink_master=host:8081)")
    # no default here: a --workers given to another runner is refused even at the default's value
    group.add_argument("--workers", type=int, default=None,
                       help=f"{fields['workers'].description} (default: {fields['workers'].default})")
    group.add_argument("--dask-address", default=fields["dask_address"].default,
                       help=fields["dask_address"].description)


def params_from_args(model: type[BaseModel], args: argparse.Namespace, **values: Any) -> Any:
    """``model`` from the parsed flags (``values`` override them), validated as the form validates it.

    Raises:
        ParameterError: each bad field with its flag and the form's message.
    """
    fields: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.annotation is Runner:
            fields[name] = {"kind": args.runner_kind, "dask_address": args.dask_address,
                            "beam_args": list(args.beam_args)}
            if args.workers is not None:
                _check_workers_given(args.runner_kind, args.workers)
                fields[name]["workers"] = args.workers
        elif hasattr(args, name):
            fields[name] = getattr(args, name)
    fields.update(values)
    try:
        return model.model_validate(fields, context={LOCAL_USER: True})
    except ValidationError as error:
        raise ParameterError("; ".join(_problem(problem, model.model_fields) for problem in error.errors())
                             ) from None


def _check_workers_given(kind: str, workers: int) -> None:
    """The form cannot tell a default from a given value; the command line can (``--workers 2`` beside
    the in-memory runner was accepted without a word, and ran one process)."""
    if kind != "multiprocess":
        raise ParameterError(f"--workers {workers} sets the multiprocess runner's processes: choose it "
                             f"(--runner multiprocess), or drop --workers (the {kind} runner does not use "
                             "it)")


def _flags_named(message: str, fields: Iterable[str]) -> str:
    """``message`` with the form's two-word field names (``split_fractions``) spelt as flags.

    >>> _flags_named("split_fractions [1.0] must sum to 1", ["split_fractions"])
    '--split-fractions [1.0] must sum to 1'
    """
    for name in (field for field in fields if "_" in field):  # one word (archive) is also plain English
        message = re.sub(rf"(?<![\w-]){name}\b", flag(name), message)
    return message


def _problem(problem: Mapping[str, Any], fields: Iterable[str]) -> str:
    """One validation problem as the command line names it: its flag, then the form's message."""
    location = [str(part) for part in problem["loc"] if not isinstance(part, int)]
    message = str(problem["msg"]).removeprefix("Value error, ")
    if not location:  # a check across fields: the message names them as the form does, so say the flags
        return _flags_named(message, fields)
    name = "runner" if location[0] == "runner" and location[-1] == "kind" else location[-1]
    if message.startswith(f"{name} "):  # the message names its field: once, as the flag
        return f"{flag(name)}{message.removeprefix(name)}"
    return f"{flag(name)}: {message}"
