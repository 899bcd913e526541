"""The README and the docs site cannot rot: the site builds strictly, the Python examples run as
written, and every command line names flags and config keys that exist.

A Python block runs unless the line before its fence is `<!-- no-run: REASON -->` (used for
examples that download weights or need files a reader has, such as a folder of photos). A page's
blocks run in order in one namespace, in a folder next to a link to `../shared`, as a reader runs them
in the repository's root.
"""

import contextlib
import importlib
import inspect
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import require_shared

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<marker><!-- no-run: (?P<reason>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```$",
                   re.DOTALL | re.MULTILINE)  # fmt: skip
# What each page's examples leave in the folder they run in, and nothing else.
WRITTEN = {"docs/models.md": ["my_model"], "docs/weights.md": ["squeezenet1_1_hub"],
           "docs/compression.md": ["paper.sqz"]}  # fmt: skip
CLI_PARSERS = {"squeezenet-predict": "flax_squeezenet.cli.predict", "squeezenet-export": "flax_squeezenet.cli.export",
               "squeezenet-info": "flax_squeezenet.cli.info", "squeezenet-compress": "flax_squeezenet.cli.compress",
               "flax_squeezenet.cli.compress": "flax_squeezenet.cli.compress", "train.compress": "train.compress"}  # fmt: skip


def blocks(page: pathlib.Path, lang: str) -> list[re.Match]:
    return [match for match in FENCE.finditer(page.read_text()) if match["lang"] == lang]


def runnable_blocks(page: pathlib.Path) -> list[tuple[int, str]]:
    """The page's Python blocks to run, each with the number of lines before it (for tracebacks)."""
    text = page.read_text()
    return [(text.count("\n", 0, match.start("code")), match["code"])
            for match in blocks(page, "python") if not match["marker"]]  # fmt: skip


def test_every_no_run_marker_precedes_a_python_block_and_gives_a_reason():
    for page in PAGES:
        text = page.read_text()
        marked = [match for match in blocks(page, "python") if match["marker"]]
        assert text.count("<!-- no-run") == len(marked), f"{page}: a no-run marker not right before a ```python fence"
        assert all(match["reason"].strip() for match in marked), f"{page}: a no-run marker without a reason"


def test_the_pages_with_runnable_examples_are_the_listed_ones():
    runnable = {str(page.relative_to(ROOT)) for page in PAGES if runnable_blocks(page)}
    assert runnable == set(WRITTEN)


@pytest.mark.parametrize("page", sorted(WRITTEN))
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    (tmp_path / "shared").symlink_to(require_shared().resolve())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))  # nothing downloaded, nothing shared
    namespace = {}
    for line, code in runnable_blocks(ROOT / page):
        exec(compile("\n" * line + code, str(ROOT / page), "exec"), namespace)  # noqa: S102 (our own docs)
    assert sorted(os.listdir(work)) == WRITTEN[page]
    if page == "docs/weights.md":
        assert (work / "squeezenet1_1_hub" / "model.safetensors").is_file()
    if page == "docs/models.md":
        assert "fire9" in capsys.readouterr().out  # the summary table was printed


def command_lines(page: pathlib.Path) -> list[list[str]]:
    """Each command of the page's bash blocks as argv, without environment assignments and `$(...)`."""
    commands = []
    for match in blocks(page, "bash"):
        for line in match["code"].replace("\\\n", " ").splitlines():
            argv, in_substitution = [], False
            for token in [*shlex.split(line, comments=True), "&&"]:
                if token in ("&&", "||", "|", ";"):
                    commands.append(argv)
                    argv, in_substitution = [], False
                elif token.startswith("$("):
                    in_substitution = True
                elif not in_substitution and (argv or not re.fullmatch(r"[A-Z_]+=\S*", token)):
                    argv.append(token)
    return [argv for argv in commands if argv]


def program(argv: list[str]) -> tuple[str, list[str]]:
    """('squeezenet-export', args), ('train.evaluate', args), ... or ('', []) for other programs."""
    if os.path.basename(argv[0]) in CLI_PARSERS:
        return os.path.basename(argv[0]), argv[1:]
    if os.path.basename(argv[0]).startswith("python") and argv[1:2] == ["-m"]:
        return argv[2], argv[3:]
    return "", []


def check_train_flags(module: str, args: list[str]) -> None:
    from train.configs import default

    keys = set(default.get_config())
    if module == "train":
        flags = {"--workdir", "--config"}  # train/__main__.py: absl-style flags, the config's keys checked below
    else:  # train.evaluate, train.save_model: their parsers are built inside main()
        flags = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", inspect.getsource(importlib.import_module(module))))
    for token in args:
        flag = token.split("=")[0]
        if flag.startswith("--config."):
            assert module == "train" and flag.removeprefix("--config.").split(".")[0] in keys, token
        elif flag.startswith("--"):
            assert flag in flags, f"{module}: no flag {flag}"
    if module == "train" and "--config" in args:
        preset = args[args.index("--config") + 1]
        assert (ROOT / "train" / "configs" / f"{preset}.py").is_file(), f"no preset {preset}"


def check_command(argv: list[str]) -> bool:
    """Whether argv runs one of our programs; fails if it names a flag, config key or preset that does not exist."""
    name, args = program(argv)
    if name in CLI_PARSERS:
        parser = importlib.import_module(CLI_PARSERS[name]).build_parser()
        with contextlib.redirect_stderr(sys.stdout):
            _, rest = parser.parse_known_args(args)  # SystemExit on an unknown choice or a missing argument
        overrides_allowed = name.endswith("compress")
        assert all(overrides_allowed and token.startswith("--config.") for token in rest), (argv, rest)
        return True
    if name == "train" or name.startswith("train."):
        check_train_flags(name, args)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_commands_name_existing_flags_and_config_keys(page):
    for argv in command_lines(page):
        check_command(argv)


def test_the_readme_commands_are_checked():
    checked = [argv for argv in command_lines(ROOT / "README.md") if check_command(argv)]
    assert {program(argv)[0] for argv in checked} >= {"train", "train.evaluate", "squeezenet-predict",
                                                      "squeezenet-export", "squeezenet-compress"}  # fmt: skip


@pytest.mark.parametrize("line", [
    "squeezenet-export --format onnx --no-such-flag --output x.onnx",
    "squeezenet-export --format pdf --output x.pdf",
    "python -m train --workdir w --config fashion_mnist --config.no_such_key=1",
    "python -m train --workdir w --config no_such_preset",
    "python -m train.evaluate --workdir w --no-such-flag",
])  # fmt: skip
def test_the_command_check_refuses_what_does_not_exist(line):
    with pytest.raises((AssertionError, SystemExit)):
        check_command(shlex.split(line))


@pytest.fixture(scope="module")
def mkdocs():
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")

    def build(config: pathlib.Path, site: pathlib.Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                              capture_output=True, text=True, env=env, cwd=config.parent)  # fmt: skip

    return build


def test_site_builds_strictly_with_api_pages_from_the_docstrings(mkdocs, tmp_path):
    result = mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    api = (tmp_path / "site" / "api" / "weights" / "index.html").read_text()
    assert "load_pretrained" in api and "The module and its variables" in api  # rendered from the docstring


@pytest.mark.parametrize(("breakage", "complaint"), [
    ("[a section](models.md#no-such-section)", "no-such-section"),
    ("[a page](no-such-page.md)", "no-such-page.md"),
    ("::: flax_squeezenet.no_such_module", "no_such_module"),
])  # fmt: skip
def test_strict_build_fails_on_a_broken_link_or_a_missing_name(mkdocs, tmp_path, breakage, complaint):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "flax_squeezenet").symlink_to(ROOT / "flax_squeezenet")
    with (tmp_path / "docs" / "index.md").open("a") as index:
        index.write(f"\n{breakage}\n")
    result = mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and complaint in result.stderr, result.stderr
