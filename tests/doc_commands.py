"""The commands the documentation shows (README.md and docs/*.md), found in its markdown and checked.

``shown_commands(page)`` finds every command a page shows: each line of a ``bash``/``console`` block (a
``console`` block's ``$`` lines, with the output lines under them) and each inline code span that starts with
``pi0 ``. ``check_cli(words)`` parses the words after ``pi0`` with the CLI's own click parser, exactly as a
run would, without running anything: unknown commands and options, bad choices and malformed numbers fail;
placeholders (``DIR``, ``N``, ``a|b``, ``[--opt X]``, ``...``) stand for any valid value.

Run as a script, it reads ``[[words, complete], ...]`` as JSON on stdin and prints one verdict per command
(``null`` or the reason), so the test suite parses in a fresh process that sees exactly the installed plugins.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
SHELL_LANGS = {"bash", "console", "sh", "shell"}
# A word that stands for a value the reader supplies: DIR, CKPT, N, MS, PI0_STEP_DIR ...
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")
PI0 = ("pi0", ".venv/bin/pi0")
HELP = ("--help", "-h")


@dataclass(frozen=True)
class Shown:
    """One command as a page shows it."""

    page: str  # path relative to the repository root
    line: int  # 1-based line of the page
    words: tuple[str, ...]  # the command's words (shell-split, comments dropped)
    complete: bool  # a whole command (code block) rather than a fragment quoted in prose
    output: tuple[str, ...] = field(default=())  # the output lines a console block shows under it

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def needs_guide(self) -> bool:
        """Whether it drives the robot the plugin guide (docs/add-a-robot.md) builds: checked once that is
        installed."""
        return any("myarm" in word for word in self.words)

    @property
    def is_pi0(self) -> bool:
        return bool(self.words) and self.words[0] in PI0


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blank_fences(text: str) -> str:
    """``text`` with every fenced block's lines emptied (line numbers kept): what prose is left."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _simple_commands(line: str) -> list[list[str]]:
    """A shell line split into its simple commands (at ``&&``, ``||``, ``;`` and ``|``), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word and set(word) <= set("&|;()<>"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [words for words in commands if words]


def _logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """Lines of a block with backslash continuations joined, each with its page line number."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, raw in enumerate(body.splitlines()):
        number = first_line + offset
        text = raw if pending is None else pending[1] + " " + raw.strip()
        start = number if pending is None else pending[0]
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
            continue
        pending = None
        joined.append((start, text))
    return joined


def shown_commands(page: Path, root: Path = ROOT) -> list[Shown]:
    """Every command ``page`` shows: those of its code blocks in order, then those quoted in its prose."""
    text = page.read_text()
    name = page.relative_to(root).as_posix()
    found: list[Shown] = []
    for match in FENCE.finditer(text):
        if match["lang"] not in SHELL_LANGS:
            continue
        first_line = text.count("\n", 0, match.start("body")) + 1
        lines = _logical_lines(match["body"], first_line)
        console = match["lang"] == "console"
        for index, (number, line) in enumerate(lines):
            stripped = line.strip()
            if console:
                if not stripped.startswith("$ "):
                    continue
                stripped = stripped[2:]
                output = []
                for _, after in lines[index + 1:]:
                    if after.strip().startswith("$ "):
                        break
                    if not after.strip().startswith("#"):  # a comment continuing the one above
                        output.append(after.strip())
            else:
                output = []
            if not stripped or stripped.startswith("#"):
                continue
            for words in _simple_commands(stripped):
                found.append(Shown(name, number, tuple(words), complete=True, output=tuple(o for o in output if o)))
    prose = blank_fences(text)
    for match in INLINE.finditer(prose):
        span = re.split(r" (?:>|\||&&|;) ", match[1].strip())[0]  # `pi0 train > log`: the command only
        if not span.startswith(tuple(f"{p} " for p in PI0)):
            continue
        number = prose.count("\n", 0, match.start()) + 1
        for words in expand_placeholders(span):
            found.append(Shown(name, number, tuple(words), complete=False))
    return found


def expand_placeholders(span: str) -> list[list[str]]:
    """The concrete word lists a prose fragment stands for: ``[...]`` optional parts kept, ``...`` dropped,
    each alternative of ``a|b`` and ``--x/--no-x`` tried in turn (the others at their first)."""
    words = [w for w in shlex.split(span.replace("[", " ").replace("]", " ")) if w not in ("...", "…")]
    choices = []
    for word in words:
        if "|" in word:
            choices.append(word.split("|"))
        elif word.startswith("--") and "/--" in word:
            choices.append(word.split("/"))
        else:
            choices.append([word])
    variants = []
    for position, options in enumerate(choices):
        for option in options[1:]:
            variants.append([option if i == position else opts[0] for i, opts in enumerate(choices)])
    return [[opts[0] for opts in choices], *variants]


# --------------------------------------------------------------------------------------------- the CLI


def _option_param(command: Any, word: str) -> Any:
    name = word.split("=", 1)[0]
    for param in command.params:
        if name in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
            return param
    return None


CHOICES = re.compile(r"[\w-]+(\|[\w-]+)+")


def _sample(param: Any, placeholder: str) -> str:
    """A valid value for ``param`` where the page shows ``placeholder``."""
    if param.metavar and CHOICES.fullmatch(param.metavar):
        return param.metavar.split("|")[0]
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    low = getattr(param, "min", None)
    if annotation is int:
        return str(max(1, low or 1))
    if annotation is float:
        return str(max(1.0, low or 1.0))
    return placeholder


def _prepare(command: Any, words: list[str], is_group: bool, complete: bool) -> tuple[list[str], str | None]:
    """Drop the options that act while parsed (--help, --version, --install-completion), known to exist,
    give an option a valid value where the page shows a placeholder, and check the values of options whose
    choices are only in their metavar (``strict|lenient``; the command checks them when it runs). A fragment
    may end with an option that takes a value (prose naming ``--from``): it is checked to exist."""
    out: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if is_group and not word.startswith("-"):
            out.extend(words[index:])  # the sub-command and its words: checked at the next level
            break
        param = _option_param(command, word) if word.startswith("-") else None
        if word in HELP or (param is not None and (param.is_eager or param.callback or not param.expose_value)):
            index += 1  # it would act (print, exit, install) while parsing: that it exists is the check
            continue
        out.append(word)
        takes_value = param is not None and not param.is_flag and "=" not in word
        if takes_value and index + 1 == len(words) and not complete:
            out.pop()
            break
        if param is not None and takes_value and index + 1 < len(words):
            value = words[index + 1]
            if PLACEHOLDER.fullmatch(value):
                value = _sample(param, value)
            elif (param.metavar and CHOICES.fullmatch(param.metavar) and value not in param.metavar.split("|")
                  and not any(alt.isupper() for alt in param.metavar.split("|"))):  # TASK|shifted: open
                return out, f"{word} {value!r} is not one of {param.metavar}"
            out.append(value)
            index += 2
            continue
        index += 1
    return out, None


def _check_values(path: tuple[str, ...], params: dict[str, Any]) -> str | None:
    """Names the CLI resolves only when it runs: presets and robots must exist."""
    from pi0cli.plugins.manager import get_registry

    registry = get_registry()
    preset = params.get("preset")
    if isinstance(preset, str) and not PLACEHOLDER.fullmatch(preset) and preset not in registry.presets:
        return f"no training preset {preset!r}"
    robot = params.get("embodiment")
    robots = {*registry.embodiments, *registry.simulators}
    if isinstance(robot, str) and not PLACEHOLDER.fullmatch(robot) and robot not in robots:
        return f"no robot or simulator {robot!r} ({' '.join(path)})"
    return None


@functools.cache
def _root() -> Any:
    """The CLI's click command tree (typer builds it from the function signatures: once is enough)."""
    import typer.main

    from pi0cli.cli.app import app

    return typer.main.get_command(app)


def check_cli(words: list[str], complete: bool) -> str | None:
    """``None`` when ``pi0 WORDS`` parses as a real run would parse it, else the reason it does not.

    A fragment (``complete=False``) may leave out required arguments and options."""
    from typer._click.exceptions import MissingParameter, NoArgsIsHelpError, UsageError
    from typer.core import TyperGroup

    command: Any = _root()
    name, ctx = "pi0", None
    path: tuple[str, ...] = ()
    args = list(words)
    while True:
        is_group = isinstance(command, TyperGroup)
        args, problem = _prepare(command, args, is_group, complete)
        if problem is not None:
            return problem
        try:
            ctx = command.make_context(name, args, parent=ctx)
        except NoArgsIsHelpError:
            return None  # a group named alone (`pi0 convert`): its help
        except MissingParameter as error:
            return None if not complete else error.format_message()
        except UsageError as error:
            return error.format_message()
        if not is_group:
            return _check_values(path, ctx.params)
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return None
        sub = rest[0]
        if PLACEHOLDER.fullmatch(sub):
            return None  # `pi0 COMMAND --help`: any command
        subcommand = command.get_command(ctx, sub)
        if subcommand is None:
            return f"no command {' '.join((*path, sub))!r}"
        command, name, path, args = subcommand, sub, (*path, sub), rest[1:]


# ---------------------------------------------------------------------------------------- other scripts


def check_script(words: tuple[str, ...]) -> str | None:
    """A ``python SCRIPT.py`` or ``bash SCRIPT.sh`` command of this repository: the script exists and
    declares every option and environment variable the page gives it. Other programs are not checked."""
    words = tuple(words)
    env = [w.split("=", 1)[0] for w in itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_]+=.*", w), words)]
    words = words[len(env):]
    if len(words) < 2 or Path(words[0]).name not in ("python", "bash"):
        return None
    if words[1] == "-m":
        module = words[2] if len(words) > 2 else ""
        if module.startswith("pi0cli"):
            candidates = [ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__main__.py"]
            if not any(c.exists() for c in candidates):
                return f"no module {module}"
        return None
    script = ROOT / words[1]
    if not script.is_file():
        return f"no script {words[1]}"
    source = script.read_text()
    for word in words[2:]:
        option = word.split("=", 1)[0]
        if option.startswith("--") and not re.search(rf"[\"']{re.escape(option)}[\"'=]", source):
            return f"{words[1]} has no option {option}"
    for variable in env:
        if not re.search(rf"\b{variable}\b", source):
            return f"{words[1]} does not read {variable}"
    return None


def main() -> None:
    requests = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the verdicts only
        verdicts = [check_cli(words, complete) for words, complete in requests]
    json.dump(verdicts, sys.stdout)


if __name__ == "__main__":
    main()
