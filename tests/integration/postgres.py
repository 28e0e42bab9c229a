"""A real PostgreSQL with pgvector for the index tests, from the binaries the `pgserver` wheel ships.

pgserver's own API listens on a Unix socket only, so this runs its bundled initdb and postgres directly: TCP on
127.0.0.1 at a free port, password (scram) authentication so the URL carries a password that messages must hide,
the data folder under the test's tmp folder. postgres refuses to run as root; like pgserver, root runs it as the
system user `pgserver` (created if missing) after opening the folders on the way for it to traverse.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.helpers import free_port

USER = "features"
PASSWORD = "pw-never-shown-7Q"
DATABASE = "features"
SYSTEM_USER = "pgserver"  # the one pgserver itself creates and runs as under root
READY_WITHIN = 60.0  # seconds; a slow shared machine initialises and starts in a few
# Found without importing pgserver, whose import sets up runtime folders and locks for its own server handles.
BIN = Path(importlib.util.find_spec("pgserver").submodule_search_locations[0]) / "pginstall" / "bin"


@contextlib.contextmanager
def running_postgres(tmp_path: Path) -> Iterator[str]:
    """A started server with an empty database `features`; yields its postgresql:// URL, stops it on exit."""
    data = tmp_path / "pgdata"
    system_user = _system_user(data)
    _initdb(data, system_user)
    server, address = _start(data, system_user, tmp_path / "postgres.log")
    try:
        with psycopg.connect(f"postgresql://{USER}:{PASSWORD}@{address}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql://{USER}:{PASSWORD}@{address}/{DATABASE}"
    finally:
        stop(server)


def _start(data: Path, system_user: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """postgres ready on 127.0.0.1:PORT; a port taken between its choice and postgres' bind is chosen again."""
    for _ in range(3):
        address = f"127.0.0.1:{free_port()}"
        with log.open("wb") as log_file:
            server = subprocess.Popen(
                [BIN / "postgres", "-D", data, "-c", "listen_addresses=127.0.0.1", "-p", address.split(":")[1],
                 "-c", "unix_socket_directories="],
                user=system_user, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if _wait_ready(server, f"postgresql://{USER}:{PASSWORD}@{address}/postgres", log):
            return server, address
    raise RuntimeError(f"postgres exited with status {server.returncode}:\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT: sessions end, no checkpoint wait beyond the final one); SIGKILL if it hangs."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(READY_WITHIN)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _system_user(data: Path) -> str | None:
    """None when not root; as root, the `pgserver` user, owning an empty `data` it can reach."""
    data.mkdir()
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    for folder in data.parents:  # pytest's tmp folders are 0700 root: postgres must traverse them
        folder.chmod(folder.stat().st_mode | 0o055)
    os.chown(data, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def _initdb(data: Path, system_user: str | None) -> None:
    """A cluster whose superuser USER logs in with PASSWORD (the password file must be readable by postgres)."""
    password_file = data.parent / "password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o644)
    command = [BIN / "initdb", "-D", data, "-U", USER, f"--pwfile={password_file}", "--auth=scram-sha-256",
               "--encoding=UTF8", "--no-sync"]  # fmt: skip
    try:
        result = subprocess.run(command, user=system_user, cwd=data, capture_output=True, text=True)
    finally:
        password_file.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed with status {result.returncode}:\n{result.stdout}{result.stderr}")


def _wait_ready(server: subprocess.Popen, url: str, log: Path) -> bool:
    """Poll a connection up to READY_WITHIN seconds (a started postmaster still recovers or starts up); False when
    postgres exited instead."""
    deadline = time.monotonic() + READY_WITHIN
    while server.poll() is None:
        try:
            psycopg.connect(url, connect_timeout=5).close()
            return True
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"postgres not ready within {READY_WITHIN}s:\n{log.read_text()}") from None
            time.sleep(0.05)
    return False
