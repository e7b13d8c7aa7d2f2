"""Run the `casstore` command, or a Python script, in a fresh process without paying Python's
start-up for each: a server imports what they need once, then forks a child per request.

A process running a command costs ~1.5 s here, nearly all of it imports (sqlalchemy, alembic,
casstore; MLtraq's ~2 s more); a child forked from a server that imported them already starts
in milliseconds. Each request is still a process of its own, started from a process that ran
nothing of casstore but its imports: it gets the client's stdin, stdout and stderr (the file
descriptors themselves, passed over a Unix socket), its working folder, its environment
(time.tzset() applied) and its argv, and its exit code is the client's.

- `CommandServer(folder, ...)`: a server, and in `folder/bin` a `casstore` script that asks
  it to run `casstore ARGS` (put that folder first on PATH: shell scripts then run the
  command through the server). `run(argv, ...)` runs one command from Python.
- `prefix` starts the server under a command (setpriv dropping capabilities): its children
  run under it too.
- `modules`: what the server imports before it serves (the command's by default).
- `run_script(code, cwd, env)`: a child that exec()s `code` (as `python -c` would);
  `start(script_request(...), fds)` starts one and returns its `Child` (pid, wait()).

The tests of the console script itself (tests/test_cli.py, tests/test_house.py) still start
the real one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

COMMAND_MODULES = ("casstore.cli", "sqlalchemy.dialects.sqlite", "alembic.runtime.migration",
                   "alembic.script", "casstore.cas.gc", "casstore.cas.verify")

CLIENT = """\
#!{python} -S
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({socket!r})
message = json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(message).to_bytes(8, "big") + message], [0, 1, 2])
reply = b""
while chunk := s.recv(64):
    reply += chunk
lines = reply.split()
sys.exit(int(lines[1]) if len(lines) == 2 else 1)
"""


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(data[:8], "big")
    data = data[8:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    return json.loads(data), fds


def _child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the requested process, run it, return its exit code."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    sys.argv = list(request["argv"])
    try:
        if "code" in request:
            sys.path[0] = ""  # as `python -c` has it: the working folder
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
        else:
            from casstore.cli import main

            main()
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def serve(path: str, modules: list[str]) -> None:
    """The server: import `modules`, then fork a child per connection on the socket `path`."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = listener.accept()
        request, fds = _recv_request(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.sendall(b"%d\n" % os.getpid())
            code = 1
            try:
                code = _child(request, fds)
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except BaseException:
                        pass
                try:
                    conn.sendall(b"%d\n" % code)
                finally:
                    os._exit(code if 0 <= code < 256 else 1)
        for fd in fds:
            os.close(fd)
        conn.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


class CommandServer:
    """A server of `casstore` commands (or scripts), and its client script in `folder/bin`."""

    def __init__(self, folder: str, prefix: list[str] | None = None, modules=COMMAND_MODULES,
                 python: str = sys.executable, env: dict | None = None):
        os.makedirs(os.path.join(folder, "bin"), exist_ok=True)
        # A socket's path has at most ~107 bytes: a short one of its own.
        self._socket_dir = tempfile.mkdtemp(prefix="cas-fork-")
        os.chmod(self._socket_dir, 0o755)
        self.socket = os.path.join(self._socket_dir, "s")
        self.bin = os.path.join(folder, "bin")
        client = os.path.join(self.bin, "casstore")
        with open(client, "w") as f:
            f.write(CLIENT.format(python=sys.executable, socket=self.socket))
        os.chmod(client, 0o755)
        self._log = open(os.path.join(folder, "server.err"), "w")
        self.proc = subprocess.Popen([*(prefix or []), python, os.path.abspath(__file__), self.socket,
                                      json.dumps(list(modules))], stdout=subprocess.PIPE, stderr=self._log,
                                     env=env, text=True)
        assert self.proc.stdout.readline() == "ready\n", f"the fork server did not start: see {self._log.name}"

    def __enter__(self) -> "CommandServer":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        import shutil

        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def path_env(self, env: dict | None = None) -> dict:
        """`env` (default os.environ) with the client script's folder first on PATH."""
        env = dict(os.environ if env is None else env)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        return env

    def start(self, request: dict, fds: list[int], timeout: float = 120) -> "Child":
        """Start one request in a child with `fds` as its stdin, stdout and stderr."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(self.socket)
        message = json.dumps(request).encode()
        socket.send_fds(s, [len(message).to_bytes(8, "big") + message], fds)
        return Child(s)

    def popen(self, request: dict, stderr_path: str | None = None) -> "ForkedProcess":
        """Start one request in a child, its stdout a pipe (text), its stderr the file
        `stderr_path` (or nothing): as subprocess.Popen(stdout=PIPE, text=True) would."""
        out, into = os.pipe()
        try:
            with open(stderr_path or os.devnull, "wb") as err, open(os.devnull, "rb") as null:
                child = self.start(request, [null.fileno(), into, err.fileno()])
        finally:
            os.close(into)
        return ForkedProcess(child, os.fdopen(out))

    def request(self, request: dict, stdin: bytes = b"", timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one request in a child; its exit code, stdout and stderr (text)."""
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            fin.write(stdin)
            fin.seek(0)
            code = self.start(request, [fin.fileno(), out.fileno(), err.fileno()], timeout).wait()
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(request["argv"], 1 if code is None else code,
                                               out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))

    def run(self, argv: list[str], cwd: str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """`casstore ARGV` in a child, as a console script started in `cwd` with `env` would run."""
        return self.request({"argv": [os.path.join(self.bin, "casstore"), *argv], "cwd": cwd or os.getcwd(),
                             "env": dict(os.environ if env is None else env)}, timeout=timeout)

    def run_script(self, code: str, cwd: str, env: dict | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
        """`python -c CODE` in a child (sys.path: the server's, plus `env`'s PYTHONPATH as it
        was when the server started)."""
        return self.request(self.script_request(code, cwd, env), timeout=timeout)

    def script_request(self, code: str, cwd: str, env: dict | None = None) -> dict:
        return {"argv": ["-c"], "code": code, "cwd": cwd, "env": dict(os.environ if env is None else env)}


class Child:
    """A request running in a child of the server: its pid (a real process: SIGKILL it), and
    its exit code once it ended (None if it was killed)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._reply = b""
        while b"\n" not in self._reply:
            chunk = sock.recv(64)
            assert chunk, "the fork server did not start the child"
            self._reply += chunk
        self.pid = int(self._reply.split(b"\n", 1)[0])

    def wait(self, timeout: float | None = None) -> int | None:
        self._sock.settimeout(timeout)
        with self._sock:
            while chunk := self._sock.recv(64):
                self._reply += chunk
        lines = self._reply.split()
        return int(lines[1]) if len(lines) == 2 else None



class ForkedProcess:
    """A Child with the part of subprocess.Popen's interface the tests use: stdout, pid,
    send_signal, kill, wait and returncode (-signal if it was signalled through here)."""

    def __init__(self, child: Child, stdout):
        self.child = child
        self.pid = child.pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._signal: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self._signal = sig
            os.kill(self.pid, sig)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self.child.wait(timeout)
            self.returncode = code if code is not None else -(self._signal or 9)
        return self.returncode
if __name__ == "__main__":
    serve(sys.argv[1], json.loads(sys.argv[2]))
