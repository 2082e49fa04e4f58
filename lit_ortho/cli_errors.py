"""Bad input to ``lit-ortho`` gets one line, exit status 2: the option, the bad value and what would be valid.

:func:`cli_hooks` is what :func:`lit_ortho.cli.main` runs the LightningCLI under. It makes jsonargparse's parse
errors raise (:class:`ParseFailure`) instead of printing the whole usage and a nested union report, and checks,
right after parsing and before any model or data exists, that the directories the run will write are writable
(:func:`check_output_dirs`). :func:`user_error_message` turns what then escapes the CLI into that one line: a
:class:`ParseFailure`, a :class:`~lit_ortho.errors.UsageError` anywhere in an exception chain (jsonargparse wraps
the error a class raises while it is instantiated in a "Does not validate against any of the Union subtypes"
``ValueError``), or a ``ValueError`` a class raised while the CLI built it. Anything else is a bug and keeps its
traceback. ``LIT_ORTHO_DEBUG=1`` or ``--debug`` (see :func:`pop_debug_flag`) turn all of this off.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import os
import re
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Optional

from lit_ortho.errors import UsageError

__all__ = [
    "USAGE_EXIT_CODE",
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "ParseFailure",
    "ExitStatus",
    "pop_debug_flag",
    "debug_from_env",
    "exit_usage",
    "cli_hooks",
    "user_error_message",
    "check_output_dirs",
    "check_writable_dir",
    "check_writable_file",
]

USAGE_EXIT_CODE = 2  # argparse's status for bad usage
DEBUG_ENV = "LIT_ORTHO_DEBUG"
DEBUG_FLAG = "--debug"
RUN_SUBCOMMANDS = ("fit", "validate", "test", "predict")

_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "NoneType": "null"}


class ParseFailure(SystemExit):
    """A jsonargparse parse error, raised (not printed) under :func:`cli_hooks`. A ``SystemExit`` (code 2) like
    the exit it replaces, so code that expects the parser to exit still sees one."""

    def __init__(self, parser: Any, message: str, cause: Optional[BaseException]):
        super().__init__(message)
        self.code = USAGE_EXIT_CODE
        self.parser, self.message, self.cause = parser, message, cause


# ---- debug switch and the exit ---------------------------------------------------------------------------
def debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def pop_debug_flag(args: Sequence[str]) -> tuple[list[str], bool]:
    """``args`` without ``--debug`` (before a ``--``), and whether debug output is wanted (``--debug`` or
    ``LIT_ORTHO_DEBUG=1``)."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]
    return kept, len(kept) != len(args) or debug_from_env()


class ExitStatus(int):
    """Exit status 2 that reads as its message: ``SystemExit.code`` was the message (``sys.exit(message)``) before
    the status became 2, and in-process callers of :func:`lit_ortho.cli.main` read ``str(exc.code)``."""

    message: str

    def __new__(cls, status: int, message: str) -> "ExitStatus":
        self = super().__new__(cls, status)
        self.message = message
        return self

    def __str__(self) -> str:
        return self.message


def exit_usage(prog: str, message: str) -> NoReturn:
    """Print ``<prog>: error: <message>`` to stderr and exit with status 2. The ``SystemExit`` carries the line
    (``str(exc)`` and ``str(exc.code)``) for callers that run :func:`lit_ortho.cli.main` in-process."""
    line = f"{prog}: error: {message}"
    print(line, file=sys.stderr, flush=True)
    exc = SystemExit(line)
    exc.code = ExitStatus(USAGE_EXIT_CODE, line)
    raise exc


# ---- the hooks ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cli_hooks(debug: bool = False) -> Iterator[None]:
    """While the LightningCLI is built: parse errors raise :class:`ParseFailure` (unless ``debug``), and a parsed
    configuration has its output directories checked (:func:`check_output_dirs`) before anything is built."""
    from lightning.pytorch.cli import LightningArgumentParser

    original_parse_args = LightningArgumentParser.parse_args
    original_error = LightningArgumentParser.error

    @functools.wraps(original_parse_args)
    def parse_args(self: Any, *args: Any, **kwargs: Any) -> Any:
        cfg = original_parse_args(self, *args, **kwargs)
        if kwargs.get("defaults", True):  # a parse without defaults (to tell given values) is not the run's
            check_output_dirs(cfg)
        return cfg

    @functools.wraps(original_error)
    def error(self: Any, message: str, ex: Optional[BaseException] = None) -> NoReturn:
        if not self.exit_on_error:  # nested parsers: jsonargparse catches these itself
            original_error(self, message, ex)
        raise ParseFailure(getattr(ex, "subcommand_parser", None) or self, message, ex)

    patches = {"parse_args": parse_args}
    if not debug:
        patches["error"] = error
    saved = {name: LightningArgumentParser.__dict__.get(name) for name in patches}
    for name, fn in patches.items():
        setattr(LightningArgumentParser, name, fn)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                delattr(LightningArgumentParser, name)
            else:
                setattr(LightningArgumentParser, name, old)


# ---- what escaped the CLI: one line, or None for a bug ---------------------------------------------------------
def user_error_message(exc: BaseException, argv: Sequence[str] = ()) -> Optional[str]:
    """The one-line message for an exception that escaped the LightningCLI when it is the user's error (a parse
    error, a bad value, path or spec), else ``None`` (a bug: let its traceback show)."""
    if isinstance(exc, ParseFailure):
        return describe_parse_failure(exc, argv)
    if isinstance(exc, (SystemExit, KeyboardInterrupt)) or not isinstance(exc, Exception):
        return None
    chain = _chain(exc)
    # jsonargparse wraps what a class raised while it was built ("Does not validate against any of the Union
    # subtypes"); past those wrappers is the error itself. One raised while handling another is judged on its own.
    i = 0
    while i < len(chain) - 1 and _raised_by(chain[i], "jsonargparse/"):
        i += 1
    user = chain[i]
    deliberate = False
    if not isinstance(user, UsageError):
        # a ValueError a class raised (a ``raise`` statement, not a failing builtin) while the CLI built it from the
        # configuration: the model's, data module's, callbacks', logger's or Trainer's check of an argument
        if type(user) is not ValueError or not _raised_by_raise_statement(user):
            return None
        if not _in_frames(exc, "instantiate_classes", "lightning/pytorch/cli.py"):
            return None
        deliberate = True
    message = _one_line(str(user))
    # the pre-flight check's messages name the Trainer settings themselves
    option, value = (None, _MISSING) if _is_preflight(user) else _option_of(exc, user, message, argv)
    if option:
        shown = _shown_value(value)
        message = f"{option}: {message}" if shown is None or _mentions(message, value) else f"{option} {shown}: {message}"
    if deliberate:
        message += f" (run with {DEBUG_FLAG} for the traceback)"
    return message


def _is_preflight(exc: BaseException) -> bool:
    try:
        from lit_ortho.distributed import ConfigurationError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, ConfigurationError)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts, outermost first."""
    out: list[BaseException] = []
    e: Optional[BaseException] = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return out


def _frames(tb: Optional[TracebackType]) -> list[Any]:
    out = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def _tb_entries(tb: Optional[TracebackType]) -> list[tuple[Any, int]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def _in_frames(exc: BaseException, name: str, file_part: str) -> bool:
    return any(
        f.f_code.co_name == name and file_part in f.f_code.co_filename.replace(os.sep, "/")
        for e in _chain(exc)
        for f in _frames(e.__traceback__)
    )


def _raised_by(exc: BaseException, file_part: str) -> bool:
    entries = _tb_entries(exc.__traceback__)
    return bool(entries) and file_part in entries[-1][0].f_code.co_filename.replace(os.sep, "/")


def _raised_by_raise_statement(exc: BaseException) -> bool:
    import linecache

    entries = _tb_entries(exc.__traceback__)
    if not entries:
        return False
    frame, lineno = entries[-1]
    return linecache.getline(frame.f_code.co_filename, lineno).lstrip().startswith("raise")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _shown_value(value: Any) -> Optional[str]:
    if value is _MISSING:
        return None
    if isinstance(value, (str, Path)):
        return repr(str(value))
    return repr(value)


def _mentions(message: str, value: Any) -> bool:
    """Whether the message already shows the value (quoted, or a number it says it got)."""
    if isinstance(value, (str, Path)):
        text = str(value)
        return len(text) >= 2 and (repr(text) in message or f'"{text}"' in message or f"`{text}`" in message)
    if _is_plain_number(value):
        return re.search(rf"\b(got|=)\s*{re.escape(repr(value))}(?![\w.])", message) is not None
    return False


_MISSING = object()


# ---- which option a value error came from ------------------------------------------------------------------
def _option_of(outer: BaseException, user: BaseException, message: str, argv: Sequence[str]) -> tuple[Optional[str], Any]:
    """The option (``--model.init_args.activation``) and its value that a user error is about, or ``(None, _)``.

    A class jsonargparse was building: its constructor arguments are the candidates. The Trainer: its arguments.
    Later (a model builds its layers in ``setup``): every plain value of the model's and data's configuration. The candidate
    named in the message, whose value the message quotes, or whose value the code that raised still held wins."""
    group, index, group_value = _group_being_built(outer)
    built = _class_being_built(user)
    deeper: list[Any]
    fallback = None
    if built is not None and group is not None:
        cls, kwargs, deeper = built
        prefix = group + (f"[{index}]" if index is not None else "")
        sub = ".init_args" if _get(group_value, "class_path") is not None else ""
        defaults = _class_defaults(cls)
        candidates = {f"--{prefix}{sub}.{k}": v for k, v in kwargs.items()}
        as_default = {f"--{prefix}{sub}.{k}" for k, v in kwargs.items() if _same(defaults.get(k, _MISSING), v)}
        fallback = f"--{prefix}"
    elif _in_frames(outer, "_instantiate_trainer", "lightning/pytorch/cli.py"):
        kwargs = _trainer_kwargs(outer) or {}
        candidates = {f"--trainer.{k}": v for k, v in kwargs.items() if _is_plain(v)}
        deeper, fallback, as_default = [], None, set()
    else:
        cli = _cli_object(user) or _cli_object(outer)
        if cli is None:
            return None, _MISSING
        candidates, as_default = _config_values(cli)
        deeper = _frames(user.__traceback__)
    option = _best_option(candidates, message, deeper, argv, as_default)
    if option is None:
        return fallback, _MISSING
    return option, candidates[option]


def _group_being_built(exc: BaseException) -> tuple[Optional[str], Optional[int], Any]:
    """The config key (``model``, ``data``, ``trainer.callbacks``) jsonargparse was instantiating, the list index
    within it, and its configuration."""
    group, index, value = None, None, None
    for e in _chain(exc):
        for frame in _frames(e.__traceback__):
            if "jsonargparse/" not in frame.f_code.co_filename.replace(os.sep, "/"):
                continue
            local = frame.f_locals
            if frame.f_code.co_name == "instantiate" and hasattr(local.get("component"), "dest"):
                group, index, value = str(local["component"].dest), None, local.get("value")
            elif (
                frame.f_code.co_name == "instantiate_classes"
                and local.get("islist") is True
                and isinstance(local.get("num"), int)
            ):
                index = local["num"]
                items = local.get("value")
                if isinstance(items, list) and index < len(items):
                    value = items[index]
    return group, index, value


def _class_being_built(user: BaseException) -> Optional[tuple[type, dict[str, Any], list[Any]]]:
    """The class whose construction raised ``user``, its keyword arguments, and the frames below that call."""
    frames = _frames(user.__traceback__)
    found = None
    for i, frame in enumerate(frames):
        local = frame.f_locals
        for cls_key, kw_keys in (("class_type", ("kwargs",)), ("val_class", ("init_kwargs", "dict_kwargs"))):
            cls = local.get(cls_key)
            if inspect.isclass(cls):
                kwargs: dict[str, Any] = {}
                for k in kw_keys:
                    if isinstance(local.get(k), Mapping):
                        kwargs.update(local[k])
                if kwargs:
                    found = (cls, kwargs, frames[i + 1 :])
    return found


def _trainer_kwargs(exc: BaseException) -> Optional[dict[str, Any]]:
    for e in _chain(exc):
        for frame in _frames(e.__traceback__):
            if frame.f_code.co_name == "_instantiate_trainer" and isinstance(frame.f_locals.get("config"), Mapping):
                return dict(frame.f_locals["config"])
    return None


def _cli_object(exc: BaseException) -> Any:
    """The LightningCLI whose ``__init__`` is on ``exc``'s traceback."""
    from lightning.pytorch.cli import LightningCLI

    for frame in _frames(exc.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, LightningCLI) and getattr(candidate, "config", None) is not None:
            return candidate
    return None


def _config_values(cli: Any) -> tuple[dict[str, Any], set[str]]:
    """``--model.init_args.activation`` -> value, for every plain value of the run's model and data, and the
    options among them left at their class's default."""
    config = cli.config
    sub = _get(config, "subcommand")
    config = _get(config, sub) if sub else config
    out: dict[str, Any] = {}
    as_default: set[str] = set()
    for group in ("model", "data"):  # the Trainer's settings: the pre-flight check and the Trainer name them
        value = _get(config, group)
        class_path = _get(value, "class_path")
        init_args = _get(value, "init_args") if class_path is not None else value
        prefix = f"--{group}.init_args" if class_path is not None else f"--{group}"
        defaults = _class_defaults(_import_class(class_path))
        for k, v in _items(init_args):
            if _is_plain(v):
                out[f"{prefix}.{k}"] = v
                if _same(defaults.get(k, _MISSING), v):
                    as_default.add(f"{prefix}.{k}")
    return out, as_default


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except Exception:
        return False


def _import_class(class_path: Optional[str]) -> Optional[type]:
    if not class_path:
        return None
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return None
    return cls if inspect.isclass(cls) else None


def _class_parameters(cls: Optional[type]) -> list[inspect.Parameter]:
    """The constructor parameters of ``cls``, following ``**kwargs`` up its bases."""
    if cls is None:
        return []
    out: list[inspect.Parameter] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        seen = {p.name for p in out}
        out += [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in seen]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _class_defaults(cls: Optional[type]) -> dict[str, Any]:
    return {p.name: p.default for p in _class_parameters(cls) if p.default is not p.empty}


def _items(obj: Any) -> list[tuple[str, Any]]:
    if obj is None:
        return []
    if hasattr(obj, "as_dict") and not isinstance(obj, Mapping):
        try:
            return [(k, _get(obj, k)) for k in obj.as_dict()]
        except Exception:
            return []
    return list(obj.items()) if isinstance(obj, Mapping) else []


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, Path)) and not isinstance(value, bool)


def _best_option(
    candidates: Mapping[str, Any], message: str, deeper: list[Any], argv: Sequence[str], as_default: set[str] = frozenset()
) -> Optional[str]:
    """The candidate the message is about: its name in the message (4), its value quoted there (3), its value held
    by the frame nearest to the ``raise`` (2), a number the message reports as got (1), given on the command line
    (+1). Values left at their default do not count as held (``'auto'`` is everywhere). ``None`` when nothing
    points at one."""
    holder = _deepest_holder(deeper, {o: v for o, v in candidates.items() if o not in as_default})
    scores: dict[str, tuple[int, int]] = {}
    for option, value in candidates.items():
        name = option.rsplit(".", 1)[-1]
        score, where = 0, len(message)
        m = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message)
        if m:
            score, where = score + 4, m.start()
        if _mentions(message, value):
            score += 1 if _is_plain_number(value) else 3
        if option == holder:
            score += 2
        if score and option.split("=", 1)[0] in {a.split("=", 1)[0] for a in argv}:
            score += 1
        scores[option] = (score, -where)
    if not scores:
        return None
    best = max(scores, key=lambda o: scores[o])
    return best if scores[best][0] > 1 else None


def _is_plain_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _deepest_holder(frames: list[Any], candidates: Mapping[str, Any]) -> Optional[str]:
    """The candidate whose value a local of the frame nearest to the ``raise`` holds (strings and paths only: small
    numbers are everywhere); the first frame, the constructor or the CLI, does not count."""
    wanted = {o: v for o, v in candidates.items() if isinstance(v, (str, Path)) and len(str(v)) >= 2}
    for frame in reversed(frames[1:]):
        try:
            values = list(frame.f_locals.values())
        except Exception:
            continue
        for option, value in wanted.items():
            for v in values:
                try:
                    if v is value or (type(v) is type(value) and v == value):
                        return option
                except Exception:  # a local with an odd __eq__
                    continue
    return None


# ---- parse errors --------------------------------------------------------------------------------------------------
def describe_parse_failure(failure: ParseFailure, argv: Sequence[str] = ()) -> str:
    """One line for a jsonargparse parse error: the option, the bad value, the valid choices."""
    message = str(failure.message)
    parser = _subcommand_parser(failure.parser, argv)
    m = re.match(r"unrecognized arguments: (.*)", message, re.S)
    if m:
        return _unrecognized(m.group(1).split(), parser, argv)
    m = re.match(r"the following arguments are required: (.*)", message)
    if m:  # "fit.model, fit.data" -> "--model, --data"
        sub = next((a for a in argv if a in RUN_SUBCOMMANDS), None)
        names = [n.strip().removeprefix(f"{sub}.") if sub else n.strip() for n in m.group(1).split(",")]
        return f"missing option{'s' if len(names) > 1 else ''}: {', '.join('--' + n.lstrip('-') for n in names)} (give it on the command line or in a --config file)"

    keys: list[str] = []
    class_path: Optional[str] = None
    texts = [_first_line(str(e)) for e in _chain(failure.cause)] if failure.cause is not None else []
    texts = texts or [_first_line(message)]
    for text in texts:
        k = re.match(r'Parser key "([^"]+)"', text)
        if k and (not keys or keys[-1] != k.group(1)):
            keys.append(k.group(1))
        c = re.match(r"Problem with given class_path '([^']+)'", text)
        if c:
            class_path = c.group(1)
            keys.append("init_args")
    leaf = next((t for t in reversed(texts) if t and not t.startswith("Parser key")), None)
    if leaf is None:  # 'Parser key "x": <message>' on one line
        leaf = re.sub(r'^Parser key "[^"]+":\s*', "", texts[-1]) or _one_line(message)
    option = "--" + ".".join(keys) if keys and keys != ["init_args"] else None

    unknown = re.match(r"Option '([^']+)' is not accepted", leaf)
    if unknown:
        name = unknown.group(1)
        base = option if option else ""
        if base.endswith(".init_args"):
            option = f"{base}.{name}"
        elif base:
            option = f"{base}.init_args.{name}" if class_path else f"{base}.{name}"
        accepted = _class_arguments(class_path)
        cls_name = class_path.rsplit(".", 1)[-1] if class_path else "this class"
        if accepted:
            return f"unknown option {option or name}: {cls_name} has no argument {name!r}; valid: {', '.join(accepted)}{_did_you_mean(name, accepted)}"
        return f"unknown option {option or name}: {cls_name} has no argument {name!r}"

    text = _translate_leaf(leaf)
    if option and option.endswith(".init_args"):
        option = option[: -len(".init_args")]
    if option:
        return f"{option}: {text}"
    return text if "\n" in message.strip() else message.strip()  # a nested report: its innermost line


def _first_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0].strip() if text else ""


def _translate_leaf(leaf: str) -> str:
    m = re.match(r"Expected a <class '([\w.]+)'>\. Got value: (.*)", leaf)
    if m:
        kind = _KINDS.get(m.group(1).rsplit(".", 1)[-1], f"a {m.group(1)}")
        return f"expected {kind}, got {m.group(2)!r}"
    m = re.match(r"Expected a dot import path string: (.*)", leaf)
    if m:
        return f"no class named {m.group(1)!r}: give a class name (e.g. GPT2Module) or a full import path (mypkg.MyModule)"
    return leaf


def _subcommand_parser(parser: Any, argv: Sequence[str]) -> Any:
    action = getattr(parser, "_subcommands_action", None)
    if action is not None:
        for a in argv:
            if a in getattr(action, "_name_parser_map", {}):
                return action._name_parser_map[a]
    return parser


def _unrecognized(tokens: list[str], parser: Any, argv: Sequence[str]) -> str:
    options = sorted({s for a in getattr(parser, "_actions", []) for s in a.option_strings if s.startswith("--")})
    sub = next((a for a in argv if a in RUN_SUBCOMMANDS), None)
    help_hint = f"see 'lit-ortho {sub} --help' for the valid options" if sub else "see 'lit-ortho --help'"
    named = [t for t in tokens if t.startswith("-")]
    if not named:
        return f"unexpected argument{'s' if len(tokens) > 1 else ''} {' '.join(shlex.quote(t) for t in tokens)}; {help_hint}"
    parts = []
    for t in named:
        name = t.split("=", 1)[0]
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return f"unknown option{'s' if len(named) > 1 else ''} {', '.join(parts)}; {help_hint}"


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f". Did you mean {close[0]!r}?" if close else ""


def _class_arguments(class_path: Optional[str]) -> list[str]:
    """The constructor arguments of ``class_path`` (following ``**kwargs`` up the class's bases)."""
    return [p.name for p in _class_parameters(_import_class(class_path))]


# ---- output directories ---------------------------------------------------------------------------------------------
def check_output_dirs(cfg: Any) -> None:
    """Raise :class:`UsageError` naming the directory (and the option) when a directory the run writes cannot be
    written: ``trainer.default_root_dir``, each logger's ``save_dir``, and (``fit``) each checkpoint callback's
    ``dirpath``. Runs on the parsed configuration, before any model or data is built."""
    sub = _get(cfg, "subcommand")
    config = _get(cfg, sub) if sub else cfg
    trainer = _get(config, "trainer")
    if trainer is None:
        return
    for option, path, what in _output_dirs(trainer, fit=sub in (None, "fit")):
        check_writable_dir(path, what, option)


def _output_dirs(trainer: Any, fit: bool) -> Iterator[tuple[str, Any, str]]:
    root = _get(trainer, "default_root_dir")
    if root:
        yield "--trainer.default_root_dir", root, "root directory"
    if _get(trainer, "fast_dev_run"):  # loggers and checkpoints are switched off
        return
    loggers = _get(trainer, "logger")
    loggers = loggers if isinstance(loggers, (list, tuple)) else [loggers]
    for i, logger in enumerate(loggers):
        if logger is None or isinstance(logger, bool):
            continue
        where = "trainer.logger" if len(loggers) == 1 else f"trainer.logger[{i}]"
        for key in ("save_dir", "root_dir"):
            path = _arg(logger, key)
            if isinstance(path, (str, os.PathLike)) and str(path):
                yield f"--{where}.init_args.{key}", path, "log directory"
    if not fit or _get(trainer, "enable_checkpointing") is False:
        return
    callbacks = _get(trainer, "callbacks")
    callbacks = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    for i, callback in enumerate(callbacks):
        path = _arg(callback, "dirpath")
        if isinstance(path, (str, os.PathLike)) and str(path):
            sub = ".init_args" if _get(callback, "class_path") is not None else ""
            yield f"--trainer.callbacks[{i}]{sub}.dirpath", path, "checkpoint directory"


def _get(obj: Any, key: str) -> Any:
    if obj is None or key is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    if hasattr(obj, "__contains__") and hasattr(obj, "get") and not inspect.isclass(obj):
        try:
            return obj.get(key)
        except Exception:
            return None
    return getattr(obj, key, None)


def _arg(obj: Any, key: str) -> Any:
    """``key`` of a class config (``init_args``) or of a built object."""
    init_args = _get(obj, "init_args")
    if init_args is not None:
        return _get(init_args, key)
    if _get(obj, "class_path") is not None:
        return None
    return _get(obj, key)


def _unwritable(path: Path, name_self: bool = False) -> Optional[str]:
    """Why a directory cannot be created or written, or ``None``."""
    p = path
    while not p.exists():
        if p.parent == p:
            return None
        p = p.parent
    if not p.is_dir():
        return f"{str(p)!r} is a file, not a directory" if p != path or name_self else "it is a file, not a directory"
    ok = os.access(p, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
    if not ok:
        return "permission denied" if p == path else f"cannot create it: {str(p)!r} is not writable"
    return None


def check_writable_dir(path: Any, what: str = "directory", option: Optional[str] = None) -> None:
    """Raise :class:`UsageError` when ``path`` (a local directory, existing or not) cannot be created or written."""
    text = os.fspath(path)
    if "://" in text:  # remote (s3://, gs://, hdfs://): its file system says
        return
    reason = _unwritable(Path(text).expanduser())
    if reason:
        given = f" ({option})" if option else ""
        raise UsageError(f"cannot write the {what} {text!r}{given}: {reason}")


def check_writable_file(path: Any, what: str = "output file", option: Optional[str] = None) -> None:
    """Raise :class:`UsageError` when the file ``path`` cannot be written (its directory cannot be created or
    written, or it is a directory)."""
    text = os.fspath(path)
    if "://" in text:
        return
    p = Path(text).expanduser()
    given = f" ({option})" if option else ""
    if p.is_dir():
        raise UsageError(f"cannot write the {what} {text!r}{given}: it is a directory")
    reason = _unwritable(p.parent, name_self=True)
    if reason:
        raise UsageError(f"cannot write the {what} {text!r}{given}: {reason}")
