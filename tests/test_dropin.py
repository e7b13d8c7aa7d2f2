"""The drop-in API where casstore must do what MLtraq 0.1.165 does: the create_experiment
shortcut, MLtraq's error names, Session.persist_experiment, reload, extract(members=...),
ls's table_name, the order run-level archives extract in.

Each side-by-side test runs one script twice, in a fresh process (a child forked from a server
that imported the package once): with `casstore` imports, and with `mltraq` imports under real MLtraq 0.1.165 (helpers.MLTRAQ_PYTHON: this Python,
which the test extra gives mltraq, or the one CASSTORE_MLTRAQ_PYTHON names), and checks both
print the expected JSON. Without mltraq the MLtraq half is skipped and casstore is still
checked against the values MLtraq printed."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from fork_runner import COMMAND_MODULES, CommandServer
from helpers import MLTRAQ_PYTHON, NO_MLTRAQ
from sqlalchemy import insert

from casstore import ArchiveStore, Experiment, create_session
from casstore.cas.index.models import RefRow
from casstore.mltraq import datapak
from casstore.mltraq import migrate as migration
from casstore.utils.bunch import Bunch

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ["casstore", pytest.param("mltraq", marks=pytest.mark.skipif(
    not MLTRAQ_PYTHON, reason=NO_MLTRAQ))]

PRELUDE = """
import json, os, tarfile, io
def tree(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f)).read()
            for d, _, files in os.walk(root) for f in files}
def folder(path, files):
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)) or ".", exist_ok=True)
        open(os.path.join(path, rel), "w").write(text)
folder("src", {"a.txt": "A", "sub/b.txt": "B"})
"""


SERVERS: dict[str, CommandServer] = {}
SERVED = {"casstore": (*COMMAND_MODULES, "casstore.storage.archivestore", "pandas"),
          "mltraq": ("mltraq", "mltraq.storage.archivestore", "pandas", "sqlalchemy.dialects.sqlite")}


@pytest.fixture(scope="module", autouse=True)
def _stop_servers():
    yield
    while SERVERS:
        SERVERS.popitem()[1].close()


def server(impl: str) -> CommandServer:
    """The fork server of `impl`'s scripts: `impl` (and pandas) imported once, each script a
    child forked from it (tests/fork_runner.py), so a script does not pay MLtraq's ~2 s of imports."""
    if impl not in SERVERS:
        python = sys.executable if impl == "casstore" else MLTRAQ_PYTHON
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
        SERVERS[impl] = CommandServer(tempfile.mkdtemp(prefix=f"dropin-{impl}-"), modules=SERVED[impl],
                                      python=python, env=env)
    return SERVERS[impl]


def side_by_side(impl: str, script: str, cwd: Path) -> object:
    """Run `script` with `PKG` replaced by `impl` in a fresh process (a child of `impl`'s fork
    server, as `python -c` with PYTHONPATH on this checkout); the JSON its last line printed."""
    code = (PRELUDE + textwrap.dedent(script)).replace("PKG", impl)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    done = server(impl).run_script(code, cwd=str(cwd), env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def cwd(workdir):
    return workdir


# --------------------------------------------------------------------------- create_experiment


@pytest.mark.parametrize("impl", IMPLS)
def test_create_experiment_shortcut_binds_a_new_session_on_the_url(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_experiment
        e = create_experiment("solo", url="sqlite:///p.db", lr=0.5)
        e.persist()
        print(json.dumps([type(e).__name__, e.name, dict(e.fields), e.reload().fields.lr]))
    """, cwd)
    assert got == ["Experiment", "solo", {"lr": 0.5}, 0.5]


@pytest.mark.parametrize("impl", IMPLS)
def test_create_experiment_shortcut_defaults_to_the_database_url_option(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_experiment, options
        options().set("database.url", "sqlite:///opt.db")
        create_experiment("x").persist()
        print(json.dumps(os.path.exists("opt.db")))
    """, cwd)
    assert got is True


# --------------------------------------------------------------------------- MLtraq's error names


@pytest.mark.parametrize("impl", IMPLS)
def test_experiment_already_exists_is_caught_under_mltraqs_name_and_path(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.experiment import ExperimentAlreadyExists
        s = create_session()
        s.create_experiment("x").persist()
        try:
            s.create_experiment("x").persist()
        except ExperimentAlreadyExists as e:
            print(json.dumps(["x" in e.message, "replace" in e.message]))
    """, cwd)
    assert got == [True, True]


@pytest.mark.parametrize("impl", IMPLS)
def test_experiment_not_found_is_caught_under_mltraqs_name_and_path(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.experiment import ExperimentNotFoundException
        try:
            create_session().load_experiment("missing")
        except ExperimentNotFoundException as e:
            print(json.dumps("missing" in e.message))
    """, cwd)
    assert got is True


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_input_is_caught_under_mltraqs_name_and_path(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.utils.exceptions import InvalidInput, ExceptionWithMessage
        try:
            create_session().load_experiment()
        except InvalidInput as e:
            print(json.dumps([isinstance(e, ExceptionWithMessage), bool(e.message)]))
    """, cwd)
    assert got == [True, True]


@pytest.mark.parametrize("impl", IMPLS)
def test_unsupported_object_type_is_caught_under_mltraqs_name_and_path(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.storage.serializers.datapak import UnsupportedObjectType
        try:
            create_session().create_experiment("x", bad=object()).persist()
        except UnsupportedObjectType as e:
            print(json.dumps("object" in e.message))
    """, cwd)
    assert got is True


@pytest.mark.parametrize("impl", IMPLS)
def test_exception_with_message_catches_every_error_raised_on_purpose(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.utils.exceptions import ExceptionWithMessage
        try:
            create_session().load_experiment("missing")
        except ExceptionWithMessage as e:
            print(json.dumps(type(e).__name__ in ("ExperimentNotFound", "ExperimentNotFoundException")))
    """, cwd)
    assert got is True


# --------------------------------------------------------------------------- persist_experiment


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_experiment_stores_a_copy_under_a_new_id_and_returns_it(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s1, s2 = create_session("sqlite:///one.db"), create_session("sqlite:///two.db")
        e = s1.create_experiment("orig", v=1)
        before = e.id_experiment
        c = s2.persist_experiment(e)
        loaded = s2.load_experiment("orig")
        print(json.dumps([c is e, c.name, c.id_experiment != before, e.id_experiment == before,
                          loaded.id_experiment == c.id_experiment, loaded.fields.v, s1.ls()["name"].tolist()]))
    """, cwd)
    assert got == [False, "orig", True, True, True, 1, []]


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_experiment_second_positional_argument_is_the_name(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s = create_session()
        e = s.create_experiment("orig", v=1)
        e.persist()
        c = s.persist_experiment(e, "copy")
        print(json.dumps([c.name, e.name, sorted(s.ls()["name"].tolist()), s.load_experiment("copy").fields.v]))
    """, cwd)
    assert got == ["copy", "orig", ["copy", "orig"], 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_experiment_without_a_name_keeps_the_name_so_fails_where_it_exists(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s = create_session()
        e = s.create_experiment()  # a default (hash) name: the copy keeps it too
        e.persist()
        try:
            s.persist_experiment(e)
        except Exception as exc:
            print(json.dumps(type(exc).__name__))
    """, cwd)
    assert got == "ExperimentAlreadyExists"


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_experiment_with_replace_overwrites_the_experiment_of_that_name(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s = create_session()
        e = s.create_experiment("orig", v=1)
        e.persist()
        e.fields.v = 2
        c = s.persist_experiment(e, if_exists="replace")
        loaded = s.load_experiment("orig")
        print(json.dumps([loaded.fields.v, loaded.id_experiment == c.id_experiment, len(s.ls())]))
    """, cwd)
    assert got == [2, True, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_persist_experiment_copies_the_archives(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        from PKG.storage.archivestore import ArchiveStore
        s = create_session("sqlite:///p.db")
        e = s.create_experiment("orig", data=ArchiveStore("src", arc_dir="d"))
        c = s.persist_experiment(e, "copy")
        s.load_experiment("copy")
        print(json.dumps(tree(os.path.join("mltraq.archivestore", str(c.id_experiment)))))
    """, cwd)
    assert got == {"d/a.txt": "A", "d/sub/b.txt": "B"}


def test_persist_experiment_copies_a_loaded_experiment_with_its_archives(cwd):
    """MLtraq cannot re-persist a loaded ArchiveStore (AttributeError: src_dir); casstore keeps its blob."""
    (cwd / "src").mkdir()
    (cwd / "src" / "a.txt").write_text("A")
    s = create_session("sqlite:///p.db")
    s.create_experiment("orig", data=ArchiveStore("src", arc_dir="d")).persist()
    copied = s.persist_experiment(s.load_experiment("orig"), "copy")
    s.load_experiment("copy")
    assert (cwd / "mltraq.archivestore" / str(copied.id_experiment) / "d" / "a.txt").read_text() == "A"


def test_persist_experiment_refuses_an_experiment_whose_runs_have_fields(cwd):
    meta = datapak.dumps(Bunch(runs=Bunch(count=2, table_name="experiment_x",
                                          columns=Bunch(types={"lr": "float"}, serialized=[], non_serialized=["lr"]))))
    s = create_session()
    with pytest.raises(ValueError, match="run"):
        s.persist_experiment(Experiment(s, name="x", meta=meta), "copy")
    assert s.ls()["name"].tolist() == []


def test_persist_experiment_copies_an_experiment_with_mltraqs_default_run(cwd):
    meta = datapak.dumps(Bunch(runs=Bunch(count=1, table_name="experiment_x",
                                          columns=Bunch(types={}, serialized=[], non_serialized=[]))))
    s = create_session()
    assert s.persist_experiment(Experiment(s, name="x", meta=meta, fields={"v": 1}), "copy").name == "copy"
    assert s.load_experiment("copy").fields.v == 1


# --------------------------------------------------------------------------- reload


@pytest.mark.parametrize("impl", IMPLS)
def test_reload_follows_the_name(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s = create_session()
        e = s.create_experiment("x", v=1)
        e.persist()
        other = s.create_experiment("x", v=2)
        other.persist(if_exists="replace")
        again = e.reload()
        print(json.dumps([again.fields.v, again.id_experiment == other.id_experiment]))
    """, cwd)
    assert got == [2, True]


# --------------------------------------------------------------------------- extract(members=...)

IO_ARCHIVE = """
    from PKG.storage.archivestore import Archive, ArchiveStoreIO
    arc = ArchiveStoreIO.create("src", arc_dir="x")
    opened = arc.open
"""
MEM_ARCHIVE = """
    from PKG.storage.archivestore import Archive, ArchiveStoreIO
    arc = Archive.create("src", arc_dir="x")
    opened = lambda: tarfile.open(fileobj=io.BytesIO(arc.to_bytes()))
"""
ARCHIVES = {"ArchiveStoreIO": IO_ARCHIVE, "Archive": MEM_ARCHIVE}


@pytest.mark.parametrize("kind", ARCHIVES)
@pytest.mark.parametrize("impl", IMPLS)
def test_extract_takes_the_tarinfo_members_open_returns(impl, kind, cwd):
    got = side_by_side(impl, ARCHIVES[kind] + """
    with opened() as tar:
        chosen = [m for m in tar.getmembers() if m.name.endswith("a.txt")]
    arc.extract("t", members=chosen)
    print(json.dumps(tree("t")))
    """, cwd)
    assert got == {"x/a.txt": "A"}


@pytest.mark.parametrize("kind", ARCHIVES)
@pytest.mark.parametrize("impl", IMPLS)
def test_extract_of_a_member_not_in_the_archive_raises_key_error(impl, kind, cwd):
    got = side_by_side(impl, ARCHIVES[kind] + """
    try:
        arc.extract("t", members=["nope"])
    except KeyError as e:
        print(json.dumps(str(e)))
    """, cwd)
    assert got == "\"filename 'nope' not found\""


@pytest.mark.parametrize("kind", ARCHIVES)
def test_extract_of_a_member_not_in_the_archive_extracts_nothing(kind, cwd):
    """MLtraq (tarfile) raises when it reaches the missing name, after extracting the names
    before it; casstore checks every name first."""
    got = side_by_side("casstore", ARCHIVES[kind] + """
    try:
        arc.extract("t", members=["x/a.txt", "nope"])
    except KeyError:
        print(json.dumps(os.path.exists("t")))
    """, cwd)
    assert got is False


@pytest.mark.parametrize("kind", ARCHIVES)
@pytest.mark.parametrize("impl", IMPLS)
def test_extract_of_no_members_makes_no_target(impl, kind, cwd):
    got = side_by_side(impl, ARCHIVES[kind] + """
    arc.extract("t", members=[])
    print(json.dumps(os.path.exists("t")))
    """, cwd)
    assert got is False


@pytest.mark.parametrize("impl", IMPLS)
def test_extract_of_named_members_extracts_only_those(impl, cwd):
    got = side_by_side(impl, IO_ARCHIVE + """
    arc.extract("t", members=["x/sub/b.txt"])
    print(json.dumps(tree("t")))
    """, cwd)
    assert got == {"x/sub/b.txt": "B"}


def test_open_extractall_of_no_members_makes_no_target(cwd):
    got = side_by_side("casstore", IO_ARCHIVE + """
    with arc.open() as tar:
        tar.extractall("t", members=[])
    print(json.dumps(os.path.exists("t")))
    """, cwd)
    assert got is False


# --------------------------------------------------------------------------- ls


@pytest.mark.parametrize("impl", IMPLS)
def test_ls_has_mltraqs_table_name_column(impl, cwd):
    got = side_by_side(impl, """
        from PKG import create_session
        s = create_session()
        s.create_experiment("My Exp-1.v2").persist()
        print(json.dumps(s.ls()[["name", "table_name"]].values.tolist()))
    """, cwd)
    assert got == [["My Exp-1.v2", "experiment_my_exp_1_v2"]]


def test_ls_table_name_follows_the_table_prefix_option(cwd):
    from casstore import options

    s = create_session()
    s.create_experiment("a").persist()
    options().set("database.experiment_tableprefix", "runs__")
    assert s.ls()["table_name"].tolist() == ["runs_a"]


# --------------------------------------------------------------------------- run-level archives


def _blob_of(session, folder: str, text: str) -> dict:
    os.makedirs(folder)
    Path(folder, "w.txt").write_text(text)
    carrier = session.create_experiment(f"carrier-{folder}", x=ArchiveStore(folder, arc_dir="m"))
    carrier.persist()
    return {"blob": carrier.fields.x.blob_id, "arc_dir": "m", "size": carrier.fields.x.size}


def test_run_level_archives_sharing_an_arc_dir_extract_in_run_table_row_order(cwd):
    """As a migration leaves them: run cells that hold casstore references, and a reference
    row for each. MLtraq extracts them down the table's rows: the last row's file wins."""
    s = create_session("sqlite:///p.db")
    rows = [("ff" * 16, _blob_of(s, "r0", "0")), ("00" * 16, _blob_of(s, "r1", "1")),
            ("88" * 16, _blob_of(s, "r2", "2"))]
    meta = datapak.dumps(Bunch(runs=Bunch(count=3, table_name="experiment_exp", columns=Bunch(
        types={"model": "ArchiveStore"}, serialized=["model"], non_serialized=[]))))
    e = Experiment(s, name="exp", meta=meta)
    e.persist()
    with s.index.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE experiment_exp (id_experiment CHAR(32), id_run CHAR(32), model BLOB)")
        for id_run, ref in rows:
            cell = datapak.dumps(ArchiveStore.from_ref(ref))
            conn.exec_driver_sql("INSERT INTO experiment_exp VALUES (?, ?, ?)", (e.id_experiment.hex, id_run, cell))
        for id_run, ref in sorted(rows, key=lambda r: r[1]["blob"]):
            conn.execute(insert(RefRow).values(id_experiment=e.id_experiment, id_run=id_run, field="model",
                                               blob_id=ref["blob"], arc_dir="m"))
    s.load_experiment("exp")
    assert (cwd / "mltraq.archivestore" / str(e.id_experiment) / "m" / "w.txt").read_text() == "2"


@pytest.mark.skipif(not MLTRAQ_PYTHON, reason=NO_MLTRAQ)
def test_run_level_archives_of_a_migrated_project_extract_as_mltraq_extracted_them(cwd):
    made = side_by_side("mltraq", """
        from mltraq import create_session
        from mltraq.storage.archivestore import ArchiveStore
        for i in range(6):
            folder(f"r{i}", {"w.txt": str(i)})
        s = create_session("sqlite:///mltraq.db")
        e = s.create_experiment("exp")
        e.add_runs(i=list(range(6)))
        def step(run):
            run.fields.model = ArchiveStore(f"r{run.params.i}", arc_dir="m")
            run.fields.other = ArchiveStore(f"r{5 - run.params.i}", arc_dir="m")
        e.execute(step, n_jobs=1)
        e.persist()
        loaded = s.load_experiment("exp")
        print(json.dumps([str(loaded.id_experiment), tree(f"mltraq.archivestore/{loaded.id_experiment}")]))
    """, cwd)
    id_experiment, mltraq_tree = made
    migration.execute(migration.plan("sqlite:///mltraq.db", "mltraq.datastore"))
    shutil.rmtree("mltraq.archivestore")
    create_session("sqlite:///mltraq.db").load_experiment("exp")
    got = {str(p.relative_to(Path("mltraq.archivestore") / id_experiment)): p.read_text()
           for p in (Path("mltraq.archivestore") / id_experiment).rglob("*") if p.is_file()}
    assert got == mltraq_tree
