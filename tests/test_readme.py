"""The README and the guides under docs/ say what is true: every command they show parses against the real CLI
(or names a script that exists with the options given), every link resolves, the plugin guide works as written.

Every fenced block of a page whose first line is ``# file: RELATIVE/PATH`` is written to that path under a
temporary directory; each extracted folder holding a ``pyproject.toml`` is pip-installed (as the guide says) into a
fresh venv, its robots must be listed by ``pi0 embodiments list``, its tests must pass and the commands the guide
shows for its robot must parse there. ``doc_commands`` finds and parses the commands.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from doc_commands import FENCE, ROOT, Shown, blank_fences, pages, shown_commands
from plugin_helpers import run_pi0

README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDE = DOCS / "add-a-robot.md"
MARKER = re.compile(r"#\s*file:\s*(?P<path>\S+)")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)
README_MAX_LINES = 250

PAGES = pages()
SHOWN = [shown for page in PAGES for shown in shown_commands(page)]
PI0_COMMANDS = [s for s in SHOWN if s.is_pi0 and not s.needs_guide]
GUIDE_COMMANDS = [s for s in SHOWN if s.is_pi0 and s.needs_guide]
OTHER_COMMANDS = [s for s in SHOWN if not s.is_pi0]
WITH_OUTPUT = [s for s in PI0_COMMANDS if s.output]
# Commands the parser must refuse or accept whatever the pages say: proof that the check can fail.
PROBES: list[tuple[list[str], bool, bool]] = [  # words after pi0, complete, accepted
    (["train", "pi0_aloha_sim_tiny", "--dataset", "demos", "--no-such-option"], True, False),
    (["trian", "pi0_aloha_sim_tiny"], True, False),
    (["train", "no_such_preset", "--dataset", "demos"], True, False),
    (["serve", "--embodiment", "aloha", "--port", "eighty"], True, False),
    (["serve", "--embodiment", "aloha", "--fast-decode", "sloppy"], True, False),
    (["serve", "--embodiment", "aloha", "--state-input", "blind"], True, False),
    (["record", "aloha_sim", "--episodes", "3"], True, False),  # --out is required
    (["record", "aloha_sim", "--episodes", "3"], False, True),  # ... but a fragment may leave it out
    (["eval", "no_such_robot", "--checkpoint", "DIR"], False, False),
    (["eval", "aloha_sim", "--checkpoint", "DIR", "--episodes", "N", "--latency-ms", "MS"], False, True),
    (["convert", "dataset", "no-such-converter", "SRC", "--out", "DIR"], True, False),
    (["--install-completion"], False, True),  # it exists; parsing it installs nothing
]


def _ids(commands: list[Shown]) -> list[str]:
    return [f"{s.id} {' '.join(s.words)[:60]}" for s in commands]


def _parse_env(home: Path) -> dict[str, str]:
    # A home of its own: should a parse ever act (install completion, write a cache), it acts there.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI0_")}
    env.update(HOME=str(home), COLUMNS="200")
    return env


def parse_in_subprocess(python: str, requests: list[tuple[list[str], bool]], home: Path) -> list[str | None]:
    """``doc_commands.check_cli`` over ``requests`` in a fresh interpreter (the plugins it has installed, no
    registry a test has changed)."""
    result = subprocess.run([python, str(Path(__file__).with_name("doc_commands.py"))], input=json.dumps(requests),
                            capture_output=True, text=True, env=_parse_env(home), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[tuple[tuple[str, ...], bool], str | None]:
    requests = [(list(s.words[1:]), s.complete) for s in PI0_COMMANDS] + [(w, c) for w, c, _ in PROBES]
    answers = parse_in_subprocess(sys.executable, requests, tmp_path_factory.mktemp("home"))
    return {(tuple(words), complete): answer for (words, complete), answer in zip(requests, answers, strict=True)}


# ------------------------------------------------------------------------------------------ the front door


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines: move detail into a guide under docs/"


def test_every_guide_is_linked_from_the_readme():
    targets = {m["target"].split("#")[0] for m in LINK.finditer(blank_fences(README.read_text()))}
    guides = sorted(DOCS.glob("*.md"))
    assert len(guides) >= 8, guides
    missing = [g.name for g in guides if f"docs/{g.name}" not in targets]
    assert not missing, f"README.md links no guide {missing}"


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    title = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", title).strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(blank_fences(page.read_text())):
        base = slug(match["title"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slugs_follow_github():
    assert slug("Memory: will it fit?") == "memory-will-it-fit"
    assert slug("Export (pi0 export)") == "export-pi0-export"
    assert slug("`pi0 serve`: limits") == "pi0-serve-limits"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    prose = re.sub(r"`[^`\n]*`", "", blank_fences(page.read_text()))
    broken = []
    for match in LINK.finditer(prose):
        target = match["target"]
        if re.match(r"[a-z][a-z+.-]*:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in resolved.parents and resolved != ROOT or not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, broken


def _bash_lines(text: str) -> list[str]:
    return [line for m in FENCE.finditer(text) if m["lang"] == "bash" for line in m["body"].splitlines()]


def test_the_set_up_commands_are_the_ones_ci_runs():
    readme = _bash_lines(README.read_text())
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python -m venv")]
    assert len(ci) == 1 and ci[0] in readme, "README's test command and .ci/run differ"
    main_job = "python -m venv .venv && .venv/bin/pip install -r requirements.txt && bash scripts/aloha_sim_demo.sh"
    assert main_job in readme


def test_the_readme_says_how_long_the_tests_take_and_how_to_run_all():
    text = " ".join(README.read_text().split())
    after = text[text.index(".venv/bin/python -m pytest"):]
    assert re.search(r"quick subset.*about \d+ tests.*took \d+ min", after)
    assert re.search(r"whole suite.*about \d+ tests.*took \d+ min", after)
    assert "`.venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile`" in after


def test_the_main_jobs_training_loss_has_one_value_everywhere():
    """The loss `pi0 train` prints at the end of the main job is one pair of numbers on every page."""
    pairs = {m[0] for page in PAGES for m in re.finditer(r"1\.99 -> \d\.\d\d", page.read_text())}
    assert pairs == {"1.99 -> 1.13"}, pairs


def test_the_plugin_guide_says_where_to_run_its_relative_commands():
    text = " ".join(GUIDE.read_text().split())
    install = text.index(".venv/bin/pip install ./pi0-embodiment-myarm")
    before = text[max(0, install - 400):install]
    assert "the folder that holds `.venv`" in before and "beside `.venv`" in before, before


# ----------------------------------------------------------------------------------- the commands shown


def test_the_pages_show_commands():
    assert len(PI0_COMMANDS) > 40 and GUIDE_COMMANDS and OTHER_COMMANDS and WITH_OUTPUT
    assert {s.page for s in PI0_COMMANDS} >= {"README.md", "docs/train.md", "docs/serve.md", "docs/evaluate.md"}


@pytest.mark.parametrize(("words", "complete", "accepted"), PROBES, ids=[" ".join(p[0]) for p in PROBES])
def test_the_command_check_can_fail(verdicts, words, complete, accepted):
    verdict = verdicts[(tuple(words), complete)]
    assert (verdict is None) == accepted, verdict


@pytest.mark.parametrize("shown", PI0_COMMANDS, ids=_ids(PI0_COMMANDS))
def test_every_pi0_command_parses(verdicts, shown):
    verdict = verdicts[(shown.words[1:], shown.complete)]
    assert verdict is None, f"{shown.id}: `{' '.join(shown.words)}`: {verdict}"


@pytest.mark.parametrize("shown", OTHER_COMMANDS, ids=_ids(OTHER_COMMANDS))
def test_every_script_command_names_a_script_and_options_that_exist(shown):
    from doc_commands import check_script

    assert check_script(shown.words) is None, f"{shown.id}: {check_script(shown.words)}"


def test_the_script_check_can_fail():
    from doc_commands import check_script

    assert check_script(("python", "benchmarks/bench_rtc.py", "--no-such-option", "1")) is not None
    assert check_script(("python", "benchmarks/no_such_bench.py")) is not None
    assert check_script(("NO_SUCH_VAR=1", "bash", "scripts/aloha_sim_demo.sh")) is not None
    assert check_script(("python", "benchmarks/bench_rtc.py", "--merge", "a.json")) is None


@pytest.mark.parametrize("shown", WITH_OUTPUT, ids=_ids(WITH_OUTPUT))
def test_shown_output_is_what_the_command_prints(shown):
    result = run_pi0(*shown.words[1:])
    printed = " ".join((result.stdout + result.stderr).split())
    for line in shown.output:
        assert " ".join(line.split()) in printed, f"{shown.id}: {line!r} not in {printed[-2000:]!r}"
    if shown.output[0].startswith("Error:"):
        assert result.returncode != 0


def test_python_examples_compile_and_import_what_exists():
    checked = 0
    for page in PAGES:
        for match in FENCE.finditer(page.read_text()):
            if match["lang"] != "python":
                continue
            body = textwrap.dedent(match["body"])
            tree = ast.parse(body, filename=page.name)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pi0cli"):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{page.name}: {node.module} has no {alias.name}"
                        checked += 1
    assert checked > 10


# ------------------------------------------------------------------------------------------ the plugin guide


def guide_files(text: str) -> dict[str, str]:
    """``{relative path: content}`` of a page's blocks marked with a ``# file:`` first line."""
    files = {}
    for match in FENCE.finditer(text):
        body = textwrap.dedent(match["body"])
        first, _, rest = body.partition("\n")
        marker = MARKER.fullmatch(first.strip())
        if marker is None:
            continue
        path = marker["path"]
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
        assert path not in files, f"two blocks are marked as {path}"
        files[path] = rest
    return files


def all_guide_files() -> dict[str, str]:
    """The ``# file:`` blocks of every page; no path is marked on two pages."""
    files: dict[str, str] = {}
    for page in PAGES:
        for path, content in guide_files(page.read_text()).items():
            assert path not in files, f"{path} is marked on two pages"
            files[path] = content
    return files


def test_the_guide_marks_the_files_of_a_complete_plugin():
    files = guide_files(GUIDE.read_text())
    names = {Path(p).name for p in files}
    assert {"pyproject.toml", "__init__.py"} <= names, sorted(files)
    assert any(Path(p).parts[-2] == "tests" for p in files), sorted(files)
    pyproject = next(content for path, content in files.items() if path.endswith("pyproject.toml"))
    for required in ("[build-system]", "version =", "[project.entry-points.pi0]"):
        assert required in pyproject
    assert set(all_guide_files()) == set(files), "a page other than the plugin guide marks files"


def test_extraction_dedents_list_item_blocks():
    text = "1. one\n\n   ```toml\n   # file: x/pyproject.toml\n   [a]\n   b = 1\n   ```\n\n```\nplain\n```\n"
    assert guide_files(text) == {"x/pyproject.toml": "[a]\nb = 1\n"}


def test_commands_are_found_in_blocks_and_prose(tmp_path):
    import doc_commands

    page = tmp_path / "page.md"
    page.write_text("Run `pi0 train X [--lora] --model pi0|pi05`.\n\n```console\n$ pi0 doctor  # ready?\n"
                    "ok\n$ pi0 eval aloha_sim \\\n    --episodes 2 && echo done\n```\n")
    found = [(s.line, s.words, s.complete, s.output) for s in doc_commands.shown_commands(page, root=tmp_path)]
    assert found == [
        (4, ("pi0", "doctor"), True, ("ok",)),
        (6, ("pi0", "eval", "aloha_sim", "--episodes", "2"), True, ()),
        (6, ("echo", "done"), True, ()),
        (1, ("pi0", "train", "X", "--lora", "--model", "pi0"), False, ()),
        (1, ("pi0", "train", "X", "--lora", "--model", "pi05"), False, ()),
    ]


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guide")
    for path, content in all_guide_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv seeing this environment's packages through a .pth file (no network, no JAX reinstall)."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site_packages = next((path / "lib").glob("python*/site-packages"))
    (site_packages / "_pi0_test_base.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return path


@pytest.mark.slow
def test_the_plugin_guide_installs_lists_and_passes_its_conformance_test(guide_dir, venv, tmp_path):
    python = str(venv / "bin" / "python")
    packages = sorted(p.parent for p in guide_dir.rglob("pyproject.toml"))
    assert packages
    for package in packages:
        # As the guide says (pip install DIR), minus the network: pi0 and hatchling are already installed.
        result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                                 str(package)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    listed = run_pi0("embodiments", "list", "--json", python=python)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["myarm"]["distribution"] == "pi0-embodiment-myarm", sorted(rows)
    shown = run_pi0("embodiments", "show", "myarm", python=python)
    assert shown.returncode == 0, shown.stderr
    for package in packages:
        tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                               capture_output=True, text=True, cwd=package)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert " passed" in tests.stdout and "failed" not in tests.stdout
    # The commands the guide shows for its robot parse once its plugins are installed.
    answers = parse_in_subprocess(python, [(list(s.words[1:]), s.complete) for s in GUIDE_COMMANDS], tmp_path)
    problems = [f"{s.id} `{' '.join(s.words)}`: {a}" for s, a in zip(GUIDE_COMMANDS, answers, strict=True) if a]
    assert not problems, problems
