"""Command-line options made from the settings' own definitions.

A command that takes whole settings objects (`LoraSettings`, `TrainSettings`, ...) does not
list their options by hand: `settings_options` gives it one option per field, named after
the field (`learning_rate` -> `--learning-rate`), with the field's help and default, and
validated by the field's definition as it is parsed. The command then receives the built
settings objects. Like litgpt's CLI, which is made from the signatures of its functions,
this keeps the settings the one place a setting is declared; typer (click underneath) reads
the generated signature as if it were written out. A setting added to a `Settings` class,
or contributed by a training mitigation, is an option of `forgetscope train` at once.

Lists are comma-separated (`--target-modules q_proj,v_proj`, `--scales 0,0.5,1`), and
`none` is the empty list.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import typer

from forgetscope.errors import UserInputError
from forgetscope.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _admits_list(annotation: Any) -> bool:
    return any(typing.get_origin(arg) is list for arg in (typing.get_args(annotation) or (annotation,))) \
        or typing.get_origin(annotation) is list


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The type typer parses (str for lists, literals and unions of them) and whether the
    option may be left out (None)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (bool, int, float, str):
        return annotation, optional
    return str, optional


def _admits_dict(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _key_values(raw: str, flag: str) -> dict[str, Any]:
    """`KEY=VALUE,KEY=VALUE` with each value read as YAML (numbers, booleans, strings); `none` is empty."""
    import yaml

    if raw.strip().lower() in ("none", ""):
        return {}
    pairs = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"{flag} takes KEY=VALUE pairs separated by commas, got {item!r}")
        try:
            pairs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            pairs[key.strip()] = value
    return pairs


def parse_value(owner: type[Settings], name: str, raw: Any, flag: str) -> Any:
    """`raw` as parsed by typer, turned into the setting's value and validated by its definition."""
    annotation = owner.model_fields[name].annotation
    if isinstance(raw, str) and _admits_dict(annotation):
        return owner.check(name, _key_values(raw, flag), flag)
    if isinstance(raw, str) and _admits_list(annotation):
        if raw.strip().lower() == "none":
            return owner.check(name, [], flag) if _takes(owner, name, []) else owner.check(name, None, flag)
        if not _takes(owner, name, raw):  # "all-linear" is a value of target_modules as it is
            items = [item.strip() for item in raw.split(",")]
            if not all(items):
                raise UserInputError(f"{flag} takes comma-separated values, got {raw!r}")
            return owner.check(name, items, flag)
    return owner.check(name, raw, flag)


def _takes(owner: type[Settings], name: str, value: Any) -> bool:
    try:
        owner.check(name, value)
        return True
    except UserInputError:
        return False


def _shown(value: Any) -> Any:
    """A default as the command line writes it."""
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return value


def _metavar(owner: type[Settings], name: str) -> str | None:
    """How help shows what an option takes: its literal choices, `A,B,...` for a list, and
    `none` where the setting may be empty."""
    annotation = owner.model_fields[name].annotation
    choices = [str(c) for arg in (annotation, *typing.get_args(annotation)) if typing.get_origin(arg) is Literal
               for c in typing.get_args(arg)]
    if _admits_dict(annotation):
        return "KEY=VALUE,...|none"
    if not _admits_list(annotation):
        return "|".join(choices) or None
    empty = ["none"] if _takes(owner, name, []) or _takes(owner, name, None) else []
    return "|".join(["A,B,...", *choices, *empty])


def field_option(owner: type[Settings], name: str, flags: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """`(annotation, default)` of the typer parameter for one setting."""
    field = owner.model_fields[name]
    kind, optional = _option_type(field.annotation)
    flags = flags or (f"--{name.replace('_', '-')}",)
    if kind is bool:
        flags = tuple(f"{f}/--no-{f.removeprefix('--')}" for f in flags[:1]) + flags[1:]

    def validate(param: typer.CallbackParam, value: Any) -> Any:
        return value if value is None else parse_value(owner, name, value, param.opts[0])

    default = _shown(owner.default(name))
    option = typer.Option(*flags, help=field.description or "", callback=validate, metavar=_metavar(owner, name))
    annotation = kind | None if optional or default is None else kind
    return Annotated[annotation, option], default


def settings_options(exclude: tuple[str, ...] = (), flags: dict[str, tuple[str, ...]] | None = None,
                     **groups: type[Settings]) -> Callable[[F], F]:
    """Give a typer command one option per field of each settings class in `groups`
    (`lora=LoraSettings`); the command receives `lora=LoraSettings(...)` built from them.
    `exclude` leaves fields at their defaults; `flags` renames options (`{"lora_alpha":
    ("--lora-alpha", "--alpha")}`)."""
    flags = flags or {}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name not in groups]
        fields = {name: owner for owner in groups.values() for name in owner.model_fields if name not in exclude}
        generated = []
        for name, owner in fields.items():
            annotation, default = field_option(owner, name, flags.get(name, ()))
            generated.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            for group, owner in groups.items():  # each value already parsed and checked by its option's callback
                kwargs[group] = owner(**{name: kwargs.pop(name) for name in list(kwargs) if fields.get(name) is owner})
            return command(**kwargs)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate
