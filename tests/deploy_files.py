"""Helpers for the deployment tests: read the Dockerfile, render deploy/nginx.conf.template, find system tools.

The tests run the Dockerfile's own commands and the repository's own nginx config outside Docker, so these
helpers read those files instead of repeating what they say.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
NGINX_TEMPLATE = REPO / "deploy" / "nginx.conf.template"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def require_tool(name: str, hint: str) -> str:
    """The path of a system tool; a test without it skips locally but fails in CI (CI=true)."""
    path = shutil.which(name) or shutil.which(name, path=f"{Path(sys.executable).parent}:/usr/sbin:/sbin")
    if path:
        return path
    message = f"{name} not found; {hint}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: dict[str, Stage]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
        args: dict[str, str] = {}
        stages: dict[str, Stage] = {}
        current: Stage | None = None
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            instruction, rest = instruction.upper(), rest.strip()
            if instruction == "FROM":
                words = rest.split()
                base = _expand(words[0], args)
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
                current = stages[name] = Stage(name, base)
            elif current is None:
                if instruction == "ARG":
                    key, _, value = rest.partition("=")
                    args[key] = value
            else:
                current.instructions.append((instruction, rest))
        return cls(args, stages)

    def chain(self, stage: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        stages = [self.stages[stage]]
        while stages[0].base in self.stages:
            stages.insert(0, self.stages[stages[0].base])
        return stages

    def env(self, stage: str) -> dict[str, str]:
        """Every ENV of the stage and its base stages, with $VAR references expanded."""
        env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        for part in self.chain(stage):
            for instruction, rest in part.instructions:
                if instruction == "ENV":
                    for word in shlex.split(rest):
                        key, _, value = word.partition("=")
                        env[key] = _expand(value, env)
        return env

    def last(self, stage: str, instruction: str) -> str:
        found = [rest for name, rest in self.stages[stage].instructions if name == instruction]
        assert found, f"no {instruction} in Dockerfile stage {stage}"
        return found[-1]

    def exec_form(self, stage: str, instruction: str) -> list[str]:
        """CMD/ENTRYPOINT/HEALTHCHECK's command as JSON exec form (options before CMD are dropped)."""
        rest = self.last(stage, instruction)
        if instruction == "HEALTHCHECK":
            rest = rest[rest.index("CMD ") + 4 :]
        return json.loads(rest)

    def healthcheck_options(self, stage: str) -> dict[str, str]:
        rest = self.last(stage, "HEALTHCHECK")
        return dict(re.findall(r"--([a-z-]+)=(\S+)", rest[: rest.index("CMD ")]))

    def runs(self, stage: str) -> list[str]:
        return [rest for name, rest in self.stages[stage].instructions if name == "RUN"]


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def command_with(run: str, program: str) -> list[str]:
    """The one `&&`-separated command of a RUN line that contains `program` (e.g. '-m exporter')."""
    commands = [part.strip() for part in run.split("&&") if program in part]
    assert len(commands) == 1, f"expected one command with {program!r} in RUN {run!r}"
    return shlex.split(commands[0])


# -------------------------------------------------------------------------------------------------------- nginx


def render_nginx(values: dict[str, str], template: Path = NGINX_TEMPLATE) -> str:
    """Fill ${NAME} placeholders like the nginx image's envsubst step; every placeholder outside comments must
    have a value (a typo would otherwise reach nginx as a literal string)."""
    text = template.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    missing = sorted(set(_PLACEHOLDER.findall(code)) - set(values))
    assert not missing, f"no value for {missing} in {template}"
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


class Nginx:
    """A real nginx in the foreground with its prefix, pid, temp files and log in `folder`, running the
    repository's config; only process housekeeping (temp paths, pid, user) is added to it here."""

    def __init__(self, folder: Path, upstreams: list[str], listen_port: int, max_body_bytes: int = 33554432):
        self.binary = require_tool("nginx", "install the Debian package nginx-light")
        self.folder = folder
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}"
        upstream_a, upstream_b = upstreams
        config = render_nginx({"NGINX_LISTEN": f"127.0.0.1:{listen_port}", "UPSTREAM_A": upstream_a,
                               "UPSTREAM_B": upstream_b, "FEATURES_MAX_BODY_BYTES": str(max_body_bytes)})  # fmt: skip
        temp = "\n".join(f"    {kind}_temp_path {folder}/{kind}_temp;" for kind in _TEMP_PATHS)
        config, count = re.subn(r"^http \{\n", lambda m: m.group(0) + temp + "\n", config, flags=re.M)
        assert count == 1, "the template should have one http block"
        (folder / "nginx.conf").write_text(config)
        # As root, workers must be able to enter pytest's private (0700) folders holding the temp files.
        user = "user root;" if os.geteuid() == 0 else ""
        self.command = [self.binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr",
                        "-g", f"daemon off; pid {folder}/nginx.pid; {user}"]  # fmt: skip
        self.log_path = folder / "nginx.log"
        # Append mode: nginx reopens /dev/stdout for its access log, a second file description on this file.
        self.log = open(self.log_path, "a")  # noqa: SIM115
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 15) -> Nginx:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.output()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"nginx not listening after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def access_log(self) -> list[dict]:
        """The JSON access-log lines (log_format upstream_json) written so far."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
