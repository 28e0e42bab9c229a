"""The docs cannot drift: every request example in README.md and docs/ is run with curl against a real
gunicorn serving a real export, and its documented answer is checked; relative links must resolve.

The convention (top of docs/api.md): a ```bash block that runs `curl`, then a ```http block holding the
status line, optional headers, a blank line and the body as a template in which `…` elides.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy_files import require_tool
from tests.helpers import REPO, photo_jpeg
from tests.integration.conftest import Server
from tests.integration.extract_helpers import cli

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ELLIPSIS = "…"
DOCUMENTED_SERVER = "localhost:8000"
CURL = re.compile(r"(?:^|[;&|(]\s*)curl\s", re.MULTILINE)  # curl as a command, not a package name
OUTPUT_FILE = re.compile(r"(?:^|\s)(?:-o|--output)\s+(\S+)")
STATUS_LINE = re.compile(r"HTTP/[\d.]+ (\d{3})\b")
PNG_BODY = re.compile(r"\(PNG image, (\d+) × (\d+) pixels\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
URL_PATH = re.compile(r"localhost:8000(/[^\s'\"?]*)")
# Kept in the docs on purpose: each kind of request and answer the API has (a guard against deleting them).
MODEL = "/v1/models/efficientnet_lite0"
COVERED_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/models", MODEL, f"{MODEL}/features",
                 f"{MODEL}/labels", f"{MODEL}/layers/stem/filters.png", f"{MODEL}/layers/stride8/maps.png",
                 f"{MODEL}/search", "/v1/index", "/v2/models/efficientnet_lite0",
                 "/v2/models/efficientnet_lite0/infer"}  # fmt: skip
COVERED_STATUSES = {200, 400, 404, 413, 415, 422}
INDEXED_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # the index docs/search.md's examples search


# ------------------------------------------------------------------------------------------ reading the docs


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it opens, its language, its text (dedented)."""

    path: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: str


@dataclass(frozen=True)
class Example:
    where: str
    command: str
    answer: Answer


def split_markdown(path: Path) -> tuple[list[Block], str]:
    """The fenced blocks of a markdown file, and its prose (the text outside them)."""
    blocks: list[Block] = []
    prose: list[str] = []
    opening: tuple[int, str] | None = None
    lines: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if opening is None and stripped.startswith("```"):
            opening, lines = (number, stripped[3:].split(" ")[0]), []
        elif opening is not None and stripped == "```":
            blocks.append(Block(path, opening[0], opening[1], textwrap.dedent("\n".join(lines))))
            opening = None
        elif opening is not None:
            lines.append(line)
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def parse_answer(text: str) -> Answer:
    head, _, body = text.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    status = STATUS_LINE.match(status_line)
    if not status:
        raise ValueError(f"the answer must start with a status line such as 'HTTP/1.1 200 OK', not {status_line!r}")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a header line: {line!r} (a blank line must separate headers from the body)")
        headers.append((name.strip(), value.strip()))
    return Answer(int(status.group(1)), tuple(headers), body.strip())


def collect() -> tuple[list[Example], list[str]]:
    """Every example of the docs, and what breaks the convention (a curl without its answer, say)."""
    examples: list[Example] = []
    problems: list[str] = []
    for path in DOC_FILES:
        blocks, prose = split_markdown(path)
        for code in re.findall(r"`([^`\n]+)`", prose):
            if CURL.search(code) or code.startswith("curl "):
                problems.append(
                    f"{path.relative_to(REPO)}: inline `{code}`; give a curl a ```bash block and its answer"
                )
        for index, block in enumerate(blocks):
            if block.lang == "http" and (index == 0 or not CURL.search(blocks[index - 1].text)):
                problems.append(f"{block.where}: an ```http answer without a curl ```bash block before it")
            if not CURL.search(block.text):
                continue
            if block.lang != "bash":
                problems.append(f"{block.where}: curl in a ```{block.lang} block; examples are ```bash blocks")
                continue
            if len(CURL.findall(block.text)) != 1 or DOCUMENTED_SERVER not in block.text:
                problems.append(f"{block.where}: an example runs exactly one curl, against {DOCUMENTED_SERVER}")
                continue
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            if following is None or following.lang != "http":
                problems.append(f"{block.where}: this curl needs its answer in an ```http block right after it")
                continue
            try:
                answer = parse_answer(following.text)
            except ValueError as exc:
                problems.append(f"{following.where}: {exc}")
                continue
            examples.append(Example(block.where, block.text, answer))
    return examples, problems


EXAMPLES, PROBLEMS = collect()


# ------------------------------------------------------------------------------------------ answer templates


class _Any:
    def __repr__(self) -> str:
        return ELLIPSIS


ANY = _Any()  # a bare … value
NUMBER = object()  # a number written with a decimal point: any number matches


@dataclass(frozen=True)
class Pattern:
    """A string holding …, which stands for any text."""

    text: str

    def matches(self, actual: str) -> bool:
        regex = ".*".join(re.escape(part) for part in self.text.split(ELLIPSIS))
        return re.fullmatch(regex, actual, re.S) is not None


@dataclass(frozen=True)
class Obj:
    members: dict
    open: bool  # a … member: more keys may follow


@dataclass(frozen=True)
class Arr:
    head: list
    tail: list
    open: bool  # a … item: the first items are head, the last ones tail, any number between


_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)'
    r"|(?P<literal>true|false|null)|(?P<ellipsis>…)|(?P<punct>[{}\[\]:,]))"
)


def parse_template(text: str):
    """JSON in which … elides (see docs/api.md); ValueError says where it is not."""
    tokens, position = [], 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if not match:
            raise ValueError(f"cannot read the documented body at {text[position : position + 40]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    tokens.append(("end", ""))
    cursor = 0

    def take(*wanted: str) -> tuple[str, str]:
        nonlocal cursor
        kind, token = tokens[cursor]
        if wanted and token not in wanted:
            raise ValueError(f"expected {' or '.join(wanted)} in the documented body, found {token or 'its end'!r}")
        cursor += 1
        return kind, token

    def value():
        kind, token = take()
        if kind == "ellipsis":
            return ANY
        if token == "{":
            return members()
        if token == "[":
            return items()
        if kind == "string":
            string = json.loads(token)
            return Pattern(string) if ELLIPSIS in string else string
        if kind == "number":
            return NUMBER if re.search(r"[.eE]", token) else int(token)
        if kind == "literal":
            return {"true": True, "false": False, "null": None}[token]
        raise ValueError(f"unexpected {token or 'end'!r} in the documented body")

    def members() -> Obj:
        found, open_ = {}, False
        if tokens[cursor][1] == "}":
            take()
            return Obj(found, False)
        while True:
            kind, token = take()
            if kind == "ellipsis":
                open_ = True
            elif kind == "string":
                take(":")
                found[json.loads(token)] = value()
            else:
                raise ValueError(f"expected a key or … in the documented body, found {token!r}")
            if take(",", "}")[1] == "}":
                return Obj(found, open_)

    def items() -> Arr:
        head, tail, open_ = [], [], False
        if tokens[cursor][1] == "]":
            take()
            return Arr(head, tail, False)
        while True:
            if tokens[cursor][0] == "ellipsis":
                if open_:
                    raise ValueError("one … per array in the documented body")
                take()
                open_ = True
            else:
                (tail if open_ else head).append(value())
            if take(",", "]")[1] == "]":
                return Arr(head, tail, open_)

    template = value()
    take("")
    return template


def mismatches(template, actual, where: str = "body") -> list[str]:
    """What in `actual` differs from the documented template; empty when it conforms."""
    if template is ANY:
        return []
    if template is NUMBER:
        ok = isinstance(actual, int | float) and not isinstance(actual, bool)
        return [] if ok else [f"{where}: documented a number, got {actual!r}"]
    if isinstance(template, Pattern):
        ok = isinstance(actual, str) and template.matches(actual)
        return [] if ok else [f"{where}: documented {template.text!r}, got {_short(actual)}"]
    if isinstance(template, Obj):
        if not isinstance(actual, dict):
            return [f"{where}: documented an object, got {_short(actual)}"]
        found = []
        for key, value in template.members.items():
            if key in actual:
                found += mismatches(value, actual[key], f"{where}.{key}")
            else:
                found.append(f"{where}: documented key {key!r} is missing")
        extra = sorted(set(actual) - set(template.members))
        if extra and not template.open:
            found.append(f"{where}: keys {extra} are not documented (add them, or a … member)")
        return found
    if isinstance(template, Arr):
        if not isinstance(actual, list):
            return [f"{where}: documented an array, got {_short(actual)}"]
        shown = len(template.head) + len(template.tail)
        if len(actual) < shown or (len(actual) != shown and not template.open):
            return [f"{where}: {len(actual)} items, documented {shown}{' or more' if template.open else ''}"]
        found = []
        for index, (value, item) in enumerate(zip(template.head, actual, strict=False)):
            found += mismatches(value, item, f"{where}[{index}]")
        start = len(actual) - len(template.tail)
        for index, value in enumerate(template.tail, start):
            found += mismatches(value, actual[index], f"{where}[{index}]")
        return found
    ok = type(actual) is type(template) and actual == template  # strings, integers, booleans, null: equal
    hint = " (write it with a decimal point, e.g. 1.0, to accept any number)" if isinstance(actual, float) else ""
    return [] if ok else [f"{where}: documented {template!r}, got {_short(actual)}{hint}"]


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def body_mismatches(documented: str, body: bytes) -> list[str]:
    if not documented:
        return []
    if documented[0] in "{[":
        try:
            actual = json.loads(body)
        except ValueError:
            return [f"body: documented JSON, got {_short(body[:200])}"]
        return mismatches(parse_template(documented), actual)
    png = PNG_BODY.fullmatch(documented)
    if png:
        if not body.startswith(PNG_SIGNATURE):
            return [f"body: documented a PNG, got {_short(body[:40])}"]
        size = int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")  # the IHDR chunk
        documented_size = int(png.group(1)), int(png.group(2))
        return [] if size == documented_size else [f"body: a PNG of {size}, documented {documented_size}"]
    lines = body.decode(errors="replace").splitlines()
    return [
        f"body: no line matches {line!r}"
        for line in documented.splitlines()
        if line.strip() and not any(Pattern(line.strip()).matches(got.strip()) for got in lines)
    ]


# ------------------------------------------------------------------------------------------ running them


@pytest.fixture(scope="module")
def docs_server(models_dir, tmp_path_factory):
    """The service with its default settings, as the docs describe it, plus the search index that docs/search.md
    builds: four photos (the cat among them) extracted with --index."""
    root = tmp_path_factory.mktemp("docs_index")
    photos = root / "photos"
    photos.mkdir()
    for name in INDEXED_PHOTOS:
        (photos / f"{name}.jpg").write_bytes(photo_jpeg(name))
    result = cli("extract", photos, "--model", "efficientnet_lite0", "--models-dir", models_dir, "--out",
                 root / "features", "--index", root / "search-index", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    instance = Server(models_dir, FEATURES_INDEX=str(root / "search-index")).wait_ready()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder like the reader's: `cat.jpg` made by the README's own command, `.venv/bin/python`, and a curl
    that also dumps the answer's headers for the test."""
    folder = tmp_path_factory.mktemp("docs_examples")
    real_curl = require_tool("curl", "apt-get install curl")
    for name, target in (("bin/curl", f'{shlex.quote(real_curl)} --silent --show-error --dump-header "$DOCS_HEADERS"'),
                         (".venv/bin/python", shlex.quote(sys.executable))):  # fmt: skip
        script = folder / name
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        script.chmod(0o755)
    blocks, _ = split_markdown(REPO / "README.md")
    make_cat = [block for block in blocks if "data.chelsea()" in block.text]
    assert make_cat, "README.md: the command that makes cat.jpg (from skimage's chelsea) is gone"
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", make_cat[0].text], cwd=folder, capture_output=True)
    assert result.returncode == 0 and (folder / "cat.jpg").is_file(), result.stderr.decode()
    return folder


def run_example(example: Example, server: Server, folder: Path) -> tuple[int, dict[str, str], bytes]:
    """Run the documented command as written (against the test server); its status, headers and body."""
    headers_file = folder / "headers.txt"
    headers_file.unlink(missing_ok=True)
    command = example.command.replace(DOCUMENTED_SERVER, f"127.0.0.1:{server.port}")
    env = {**os.environ, "PATH": f"{folder / 'bin'}:{os.environ.get('PATH', '')}", "DOCS_HEADERS": str(headers_file)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=env, capture_output=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, (
        f"{example.where}: the documented command failed (exit {result.returncode}):\n{command}\n"
        f"{result.stderr.decode(errors='replace')}"
    )
    assert headers_file.is_file(), f"{example.where}: the command ran no curl that got an answer:\n{command}"
    responses = [part for part in re.split(r"\r?\n\r?\n", headers_file.read_text(errors="replace")) if part.strip()]
    status_line, *header_lines = responses[-1].strip().splitlines()  # after any 100 Continue
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    output = OUTPUT_FILE.search(command)
    body = (folder / output.group(1)).read_bytes() if output else result.stdout
    return int(status_line.split()[1]), headers, body


@pytest.mark.integration
@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_documented_request_gives_the_documented_answer(example, docs_server, workdir):
    status, headers, body = run_example(example, docs_server, workdir)
    answer = example.answer
    problems = [] if status == answer.status else [f"status {status}, documented {answer.status}"]
    for name, value in answer.headers:
        got = headers.get(name.lower())
        if got is None or not Pattern(value).matches(got):
            problems.append(f"header {name}: {got!r}, documented {value!r}")
    if status == answer.status:
        problems += body_mismatches(answer.body, body)
    assert not problems, (
        f"{example.where} no longer does what the docs say:\n{example.command}\n- " + "\n- ".join(problems)
        + f"\nthe answer was: {_short(body[:600])}"
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ the docs themselves


def test_every_curl_in_the_docs_is_a_checked_example():
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_the_examples_cover_every_kind_of_request_and_answer():
    paths = {path for example in EXAMPLES for path in URL_PATH.findall(example.command)}
    assert paths >= COVERED_PATHS, f"no example requests {sorted(COVERED_PATHS - paths)}"
    statuses = {example.answer.status for example in EXAMPLES}
    assert statuses >= COVERED_STATUSES, f"no example answers {sorted(COVERED_STATUSES - statuses)}"


def test_the_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = [block.text for block in split_markdown(REPO / "README.md")[0] if block.lang == "bash"]
    assert ci in readme, "README.md's test command and .ci/run differ"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    _, prose = split_markdown(path)
    headings = re.findall(r"^#+\s+(.+?)\s*$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_relative_links_resolve():
    broken = []
    for path in DOC_FILES:
        _, prose = split_markdown(path)
        prose = re.sub(r"`[^`\n]*`", "", prose)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
