"""Worker processes for the reliability tests (tests/test_reliability_*.py).

Run as `python tests/reliability_worker.py <command> '<json config>'`. Every command prints
JSON lines on stdout, flushed at once, so that a parent that kills the worker with SIGKILL
still reads every event printed before the kill:

    {"event": "ready"}                                 imports done, session open
    {"event": "start", "name": ..., "counter": ...}    a persist begins
    {"event": "done", "name": ...}                     it committed
    {"event": "error", "type": ..., "mro": [...], "errno": ..., "message": ...}

Config keys shared by every command: `db` (SQLite file path), `datastore`, `archivestore`
(absolute folders), `statcache` (a file path, or null to disable the stat cache), and
optionally `chunks` (option datastore.chunks: where a chunked datastore's writer cuts).

Commands:
- persist-loop: `src`, `prefix`, `count`, `codecs` (cycled), `slots`: before each persist,
  writes `src/counter.txt` = "<prefix>-<i>" so every persist has new content (a new blob),
  and persists it (if_exists="replace") as experiment `slot-<i % slots>` (or `<prefix>-<i>`
  without `slots`).
- persist-jobs: `jobs` = [{name, src, arc_dir, codec, if_exists, delete_after}], after the
  `go` file appears (a start barrier); `ready_file` is touched when ready; with
  `open_after_go` the session (schema creation on a fresh database) is opened after `go`.
- persist-one: `name`, `src`, `codec`, `if_exists`, optional `fsize_limit` (RLIMIT_FSIZE,
  SIGXFSZ ignored): persist once, report an error as an event (exit 0 either way).
- io-extract: `url`, `target`, optional `fsize_limit` (as persist-one): extract the
  ArchiveStoreIO archive `url` into `target`, report an error as an event (exit 0 either way).
- gc-once: one gc.collect(grace_s=`grace`).
- gc-loop: gc.collect(grace_s=`grace`) until the `stop` file appears (at most `max_s`); its
  "done" counts the runs, the blobs and the chunks it deleted.
- migrate: migrate the legacy MLtraq project (`db`, `datastore`) in place; prints a
  "progress" event at each stage of each experiment (stored, committed, cleaned).
- load-loop: load experiment `name` `count` times (after the `go` barrier if given, else
  after printing "ready").
- delete-one: delete experiment `name` (read first; "ready" just before the delete).
- fork-server: import casstore once, then run each command read from stdin (one JSON line
  {"command", "cfg"}) in a forked child, so a campaign of many kills does not pay Python's
  start-up each time (see ForkServer below).

"done" events of persist-one, load-loop, delete-one, gc-once and migrate carry `seconds`, the
duration of the work measured from "ready": a parent aiming kills inside the work calibrates
on it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def emit(event: str, **data) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def error_event(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
            "errno": getattr(exc, "errno", None), "message": str(exc)}


def setup(cfg: dict):
    from casstore import options

    options().set("datastore.url", "file:///" + cfg["datastore"])  # absolute: file:////abs
    options().set("archivestore.url", "file:///" + cfg["archivestore"])
    if cfg.get("chunks"):
        options().set("datastore.chunks", cfg["chunks"])
    if cfg.get("statcache"):
        options().set("statcache.path", cfg["statcache"])
    else:
        options().set("statcache.disable", True)


def session(cfg: dict):
    from casstore import create_session

    return create_session(f"sqlite:///{cfg['db']}")


def wait_for(path: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.002)


def set_codec(codec: str) -> None:
    from casstore import options

    options().set("archivestore.codec", codec)


def cmd_persist_loop(cfg: dict) -> None:
    from casstore import ArchiveStore

    setup(cfg)
    s = session(cfg)
    emit("ready")
    codecs = cfg.get("codecs", ["none"])
    for i in range(cfg["count"]):
        counter = f"{cfg['prefix']}-{i}"
        with open(os.path.join(cfg["src"], "counter.txt"), "w") as f:
            f.write(counter)
        name = f"slot-{i % cfg['slots']}" if cfg.get("slots") else counter
        set_codec(codecs[i % len(codecs)])
        emit("start", name=name, counter=counter, codec=codecs[i % len(codecs)])
        e = s.create_experiment(name, data=ArchiveStore(src_dir=cfg["src"], arc_dir="data"))
        e.persist(if_exists="replace")
        emit("done", name=name, blob=e.fields.data.blob_id)


def cmd_persist_jobs(cfg: dict) -> None:
    from casstore import ArchiveStore

    setup(cfg)
    if cfg.get("open_after_go"):  # several processes opening a fresh database at once
        open(cfg["ready_file"], "w").close()
        wait_for(cfg["go"])
        s = session(cfg)
    else:
        s = session(cfg)
        open(cfg["ready_file"], "w").close()
        wait_for(cfg["go"])
    for job in cfg["jobs"]:
        set_codec(job.get("codec", "none"))
        e = s.create_experiment(job["name"], data=ArchiveStore(src_dir=job["src"], arc_dir=job.get("arc_dir", ".")))
        try:
            e.persist(if_exists=job.get("if_exists", "fail"))
        except Exception as exc:  # reported, the parent decides
            emit("error", name=job["name"], **error_event(exc))
            continue
        emit("done", name=job["name"], blob=e.fields.data.blob_id)
        if job.get("delete_after"):
            e.delete()
            emit("deleted", name=job["name"])


def limit_file_size(cfg: dict) -> None:
    """RLIMIT_FSIZE of `fsize_limit` bytes, if given; SIGXFSZ ignored, so writes get EFBIG."""
    if cfg.get("fsize_limit"):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["fsize_limit"], cfg["fsize_limit"]))


def cmd_persist_one(cfg: dict) -> None:
    from casstore import ArchiveStore

    setup(cfg)
    s = session(cfg)
    limit_file_size(cfg)
    set_codec(cfg.get("codec", "none"))
    emit("ready")
    started = time.perf_counter()
    try:
        e = s.create_experiment(cfg["name"], data=ArchiveStore(src_dir=cfg["src"], arc_dir=cfg.get("arc_dir", "data")))
        e.persist(if_exists=cfg.get("if_exists", "fail"))
    except BaseException as exc:
        emit("error", **error_event(exc))
        return
    emit("done", name=cfg["name"], blob=e.fields.data.blob_id, seconds=time.perf_counter() - started)


def cmd_io_extract(cfg: dict) -> None:
    from casstore import ArchiveStoreIO

    setup(cfg)
    limit_file_size(cfg)
    emit("ready")
    try:
        ArchiveStoreIO(cfg["url"]).extract(cfg["target"])
    except BaseException as exc:
        emit("error", **error_event(exc))
        return
    emit("done")


def _gc_args(cfg: dict):
    from casstore import stores

    s = session(cfg)
    return s.index, stores.content_store()


def cmd_gc_once(cfg: dict) -> None:
    from casstore.cas.gc import collect
    from casstore.session import field_roots

    setup(cfg)
    index, store = _gc_args(cfg)
    emit("ready")
    started = time.perf_counter()
    report = collect(index, store, field_roots=field_roots, grace_s=cfg.get("grace", 0.0))
    emit("done", deleted=len(report.deleted), seconds=time.perf_counter() - started)


def cmd_gc_loop(cfg: dict) -> None:
    from casstore.cas.gc import collect
    from casstore.session import field_roots

    setup(cfg)
    index, store = _gc_args(cfg)
    open(cfg["ready_file"], "w").close()
    wait_for(cfg["go"])
    runs = deleted = chunks_deleted = 0
    deadline = time.monotonic() + cfg.get("max_s", 60)
    while not os.path.exists(cfg["stop"]) and time.monotonic() < deadline:
        try:
            report = collect(index, store, field_roots=field_roots, grace_s=cfg.get("grace", 0.0))
        except Exception as exc:
            emit("error", **error_event(exc))
            raise
        runs += 1
        deleted += sum(1 for d in report.deleted if d.kind == "unreferenced")
        chunks_deleted += sum(1 for d in report.deleted if d.kind == "unreferenced_chunk")
    emit("done", runs=runs, deleted=deleted, chunks_deleted=chunks_deleted)


def cmd_load_loop(cfg: dict) -> None:
    setup(cfg)
    s = session(cfg)
    if cfg.get("go"):
        open(cfg["ready_file"], "w").close()
        wait_for(cfg["go"])
    else:
        emit("ready")
    started = time.perf_counter()
    for _ in range(cfg["count"]):
        try:
            s.load_experiment(cfg["name"])
        except Exception as exc:
            emit("error", **error_event(exc))
            raise
    emit("done", seconds=time.perf_counter() - started)


def cmd_delete_one(cfg: dict) -> None:
    setup(cfg)
    s = session(cfg)
    e = s.read_experiment(cfg["name"])
    emit("ready")
    started = time.perf_counter()
    e.delete()
    emit("done", name=cfg["name"], seconds=time.perf_counter() - started)


def cmd_migrate(cfg: dict) -> None:
    from casstore.mltraq import migrate

    setup(cfg)
    plan = migrate.plan(f"sqlite:///{cfg['db']}", cfg["datastore"])
    emit("ready")
    started = time.perf_counter()
    report = migrate.execute(plan, codec=cfg.get("codec", "none"),
                             progress=lambda ev: emit("progress", stage=ev.stage, experiment=ev.experiment))
    emit("done", exit_code=report.exit_code, seconds=time.perf_counter() - started)


def cmd_fork_server(_cfg: dict) -> None:
    """Import once, then fork a child per command read from stdin. The child shares this
    stdout (each event is one write of a line shorter than PIPE_BUF, so lines never mix)
    and ends with os._exit. Announces each child with "forked" (its pid), and reaps it only
    when the parent writes a line ("reap"): until then a child that ended stays a zombie, so
    its pid cannot be reused and the parent's SIGKILL can only reach it."""
    import traceback

    import alembic.runtime.migration  # noqa: F401  (what the children use, imported once here)
    import casstore.cas.gc  # noqa: F401
    import casstore.mltraq.migrate  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401
    from casstore import ArchiveStore, create_session  # noqa: F401

    emit("ready")
    while line := sys.stdin.readline():
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                COMMANDS[request["command"]](request["cfg"])
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        emit("forked", pid=pid)
        sys.stdin.readline()
        _pid, status = os.waitpid(pid, 0)
        emit("exit", pid=pid, status=status)


COMMANDS = {
    "delete-one": cmd_delete_one,
    "fork-server": cmd_fork_server,
    "migrate": cmd_migrate,
    "persist-loop": cmd_persist_loop,
    "persist-jobs": cmd_persist_jobs,
    "persist-one": cmd_persist_one,
    "io-extract": cmd_io_extract,
    "gc-once": cmd_gc_once,
    "gc-loop": cmd_gc_loop,
    "load-loop": cmd_load_loop,
}


def main() -> None:
    command, cfg = sys.argv[1], json.loads(sys.argv[2])
    if cfg.get("cwd"):
        os.chdir(cfg["cwd"])
    COMMANDS[command](cfg)


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------------------------
# Parent-side helpers, imported by the tests (`import reliability_worker as rw`). Nothing
# below runs in the worker.

WORKER = os.path.abspath(__file__)

FORMATS = ("whole", "chunked")
"""The two ways a datastore stores blobs; the tests about blob storage run on both."""
TINY_CHUNKS = {"whole_below": 16384, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
               "cdc_max": 16384}
"""Option datastore.chunks of the chunked runs: the default policy scaled down 64x, so that a
test folder of 16 KiB of TAR or more is cut into many chunks."""


def pin_format(datastore: str, fmt: str) -> None:
    """Make `datastore` (a folder) a datastore of format `fmt` before anything uses it."""
    from casstore.cas.backends.local import LocalBlobStore

    blobs = LocalBlobStore(datastore)
    blobs.ensure_format()
    blobs.set_format(fmt)


class Project:
    """One project: an SQLite file, a datastore and an extraction root under `root`.

    `fmt`: None leaves the datastore as casstore makes it (chunked, default cut sizes);
    "whole" pins its format to whole before first use; "chunked" keeps the new datastore's
    format and has every writer (this process and the workers) cut at TINY_CHUNKS."""

    def __init__(self, root, statcache: bool = False, fmt: str | None = None):
        assert fmt in (None, *FORMATS), fmt
        root = os.path.abspath(os.fspath(root))
        self.root = root
        self.db = os.path.join(root, "project.db")
        self.datastore = os.path.join(root, "datastore")
        self.archivestore = os.path.join(root, "archivestore")
        self.statcache = os.path.join(root, "statcache.sqlite") if statcache else None
        self.fmt = fmt
        self.chunks = TINY_CHUNKS if fmt == "chunked" else None
        os.makedirs(root, exist_ok=True)
        if fmt == "whole":
            pin_format(self.datastore, "whole")

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def cfg(self, **extra) -> dict:
        return {"db": self.db, "datastore": self.datastore, "archivestore": self.archivestore,
                "statcache": self.statcache, "chunks": self.chunks, **extra}

    def configure(self) -> None:
        """Point this (the test's) process's options at the project (and its cut sizes)."""
        from casstore import options

        options().set("datastore.chunks", self.chunks or {})
        setup(self.cfg())

    def session(self):
        self.configure()
        return session(self.cfg())

    def store(self):
        from casstore import stores

        self.configure()
        return stores.content_store()

    def blobs_dir(self) -> str:
        return os.path.join(self.datastore, "casstore", "blobs")

    def blob_files(self) -> list[str]:
        found = []
        for dirpath, _dirs, files in os.walk(self.blobs_dir()):
            found += [os.path.join(dirpath, f) for f in files]
        return sorted(found)

    def blob_path(self, blob_id: str) -> str:
        algorithm, hexdigest = blob_id.split(":", 1)
        folder = os.path.join(self.blobs_dir(), algorithm, hexdigest[:2])
        found = [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(hexdigest[2:] + ".")]
        assert len(found) == 1, found
        return found[0]

    def manifests(self) -> list[str]:
        """The chunked blobs' manifests (`<rest>.chunks`) under blobs/."""
        return [path for path in self.blob_files() if path.endswith(".chunks")]

    def assert_format_used(self) -> None:
        """The blobs are stored as the project's format says: a chunked run wrote manifests
        (its folders were big enough to be cut), a whole run wrote none and no chunk."""
        if self.fmt == "chunked":
            assert self.manifests(), "the chunked run stored no manifest: its folders are too small to be cut"
        elif self.fmt == "whole":
            chunks = os.path.join(self.datastore, "casstore", "chunks")
            assert self.manifests() == [] and not any(files for _d, _s, files in os.walk(chunks)), \
                "the whole run stored chunks"

    def target(self, experiment) -> str:
        return os.path.join(self.archivestore, str(experiment.id_experiment))


SERVED = ("reliability_worker", "casstore.cas.gc", "casstore.mltraq.migrate", "casstore.storage.archivestore",
          "alembic.runtime.migration", "alembic.script", "sqlalchemy.dialects.sqlite")
"""What a fork_runner.CommandServer of workers imports once (`start(..., server=)`)."""


def start(command: str, cfg: dict, stderr_path: str | None = None, prefix: list[str] | None = None,
          server=None, **popen):
    """Start a worker; stdout is a text pipe of JSON lines, stderr goes to a file.
    `prefix`: a command to run the worker under (e.g. setpriv dropping capabilities).
    `server`: a fork_runner.CommandServer (modules SERVED) whose child runs the worker, a
    process of its own that starts in milliseconds instead of paying Python's start-up."""
    import subprocess

    if server is not None:
        assert prefix is None and not popen, "a forked worker runs as its server does"
        return server.popen({"argv": [WORKER, command, json.dumps(cfg)], "cwd": os.getcwd(), "env": dict(os.environ),
                             "code": "import reliability_worker\nreliability_worker.main()"}, stderr_path)

    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    try:
        return subprocess.Popen([*(prefix or []), sys.executable, WORKER, command, json.dumps(cfg)],
                                stdout=subprocess.PIPE,
                                stderr=err, text=True, **popen)
    finally:
        if stderr_path:
            err.close()


def parse_events(text: str) -> list[dict]:
    """The complete JSON lines of a worker's stdout (a line cut by a kill is dropped)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_ready(proc, limit_s: float = 30.0) -> dict:
    """Read the worker's first event (blocks; EOF means the worker died)."""
    line = proc.stdout.readline()
    if not line:
        proc.wait(limit_s)
        raise AssertionError(f"worker exited ({proc.returncode}) before it was ready")
    return json.loads(line)


def wait_files(paths, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    for path in paths:
        while not os.path.exists(path):
            assert time.monotonic() < deadline, f"{path} did not appear within {limit_s}s"
            time.sleep(0.005)


def tree(root) -> dict[bytes, tuple[str, bytes]]:
    """{relative path as bytes: ("file", content) | ("link", target)} of a folder (bytes
    paths, so non-UTF-8 names compare exactly). Folders are not listed."""
    root = os.fsencode(os.fspath(root))
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


def check_every_blob(store) -> int:
    """Every file under blobs/ is a complete blob whose content hashes to its id (no half
    blob is ever visible under an id) and nothing else lies there. Returns the count."""
    from casstore.cas.backends.layout import parse_blob_key

    root = os.path.join(store.blobs.root, "casstore", "blobs")
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            key = os.path.relpath(os.path.join(dirpath, name), store.blobs.root).replace(os.sep, "/")
            parsed = parse_blob_key(key)
            assert parsed is not None, f"stray file under blobs/: {key}"
            store.check(parsed[0])
            n += 1
    return n


def check_every_chunk(store) -> int:
    """Every file under chunks/ is a complete chunk whose bytes (uncompressed) hash to its
    id: no half chunk is ever visible under an id, named by a manifest or not. Returns the count."""
    import zstandard

    from casstore.cas.backends.layout import CHUNKS
    from casstore.cas.digest import digest_bytes, parse_id

    n = 0
    for copy in store.blobs.view(CHUNKS).iter_blobs():
        with open(os.path.join(store.blobs.root, *copy.key.split("/")), "rb") as f:
            data = f.read()
        if copy.codec == "zstd":
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=16 << 20)
        assert digest_bytes(data, parse_id(copy.blob_id)[0]) == copy.blob_id, f"half chunk under {copy.key}"
        n += 1
    return n


def named_chunks(store) -> set[str]:
    """The chunks the manifests under blobs/ name."""
    from casstore.cas.chunks.manifest import iter_manifest

    named: set[str] = set()
    for copy in store.blobs.iter_blobs():
        if copy.codec == "chunked":
            with store.blobs.open_copy(copy.blob_id, "chunked")[0] as f:
                named.update(ref.chunk_id for ref in iter_manifest(f, copy.blob_id))
    return named


def manifest_holes(store) -> list[str]:
    """What is wrong with each manifest under blobs/ that does not read, or names a chunk
    that is not stored (a manifest published before its chunks): "<blob id>: <why>"."""
    from casstore.cas.store.chunk_io import chunk_store, manifest_damage

    holes = []
    chunks = chunk_store(store.blobs)
    for copy in store.blobs.iter_blobs():
        if copy.codec != "chunked":
            continue
        f, found = store.blobs.open_copy(copy.blob_id, "chunked")
        with f:
            why = manifest_damage(f, found, None, chunks)
        if why is not None:
            holes.append(f"{copy.blob_id}: {why}")
    return holes


def problems(project, deep: bool = False) -> list:
    from casstore.cas.verify import verify
    from casstore.session import field_roots

    s = project.session()
    report = verify(s.index, project.store(), field_roots=field_roots, deep=deep)
    s.index.dispose()
    return report.problems


def read_until(proc, count: int, event: str = "progress") -> int:
    """Read the worker's events until `count` of kind `event` were seen (or it exited);
    returns how many were seen."""
    seen = 0
    while seen < count:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            seen += json.loads(line)["event"] == event
        except ValueError:
            break
    return seen


def kill_and_read(proc, sig=None) -> list[dict]:
    """SIGKILL the worker and return every complete event it printed. Reads through the
    pipe's text buffer (wait_ready may have buffered lines already; communicate() would
    skip them)."""
    import signal as _signal

    proc.send_signal(sig or _signal.SIGKILL)
    proc.wait(30)
    out = proc.stdout.read()
    proc.stdout.close()
    return parse_events(out)


def finish(proc, limit_s: float = 120.0) -> tuple[int, list[dict]]:
    """Wait for a worker to exit; its return code and events."""
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(limit_s), parse_events(out)


class ForkServer:
    """A fork-server worker (command fork-server): each `run` forks a child of a process that
    has imported casstore already, so starting one costs milliseconds, not Python's start-up.
    The child is a real process: `kill` sends it SIGKILL. Use as a context manager."""

    def __init__(self, stderr_path: str):
        import subprocess

        with open(stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, WORKER, "fork-server", "{}"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err)
        self._buffer = b""
        self.pid: int | None = None  # the current child, until reaped
        assert self.next_event()["event"] == "ready", "the fork server did not start"

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *_exc) -> None:
        if self.pid is not None:
            self.kill()
            self.reap()
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def next_event(self, limit_s: float = 120.0) -> dict:
        """The next event on the server's stdout (its own or its child's)."""
        import select

        deadline = time.monotonic() + limit_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no event from the worker within {limit_s}s")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the fork server exited ({self.proc.wait(30)})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, command: str, cfg: dict) -> None:
        """Start `command` in a new child."""
        assert self.pid is None, "reap the previous child first"
        self.proc.stdin.write(json.dumps({"command": command, "cfg": cfg}).encode() + b"\n")
        self.proc.stdin.flush()
        event = self.next_event()
        assert event["event"] == "forked", event
        self.pid = event["pid"]

    def until(self, *kinds: str, limit_s: float = 120.0) -> list[dict]:
        """The child's events up to and including the first of kind in `kinds`."""
        events = []
        while not events or events[-1]["event"] not in kinds:
            events.append(self.next_event(limit_s))
            assert events[-1]["event"] != "exit", f"the child exited before {kinds}: {events}"
        return events

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # not reaped yet: the pid is still our child's

    def close(self) -> None:
        self.__exit__()

    def kill_and_reap(self) -> list[dict]:
        """SIGKILL the child (if it still runs), reap it; the events it printed since the last read."""
        self.kill()
        return self.reap()[1]

    def reap(self) -> tuple[int, list[dict]]:
        """Let the server reap the child (after it ended or was killed); its wait status
        and the events it printed since the last read."""
        self.proc.stdin.write(b"reap\n")
        self.proc.stdin.flush()
        events = []
        while True:
            event = self.next_event()
            if event["event"] == "exit":
                self.pid = None
                return event["status"], events
            events.append(event)
