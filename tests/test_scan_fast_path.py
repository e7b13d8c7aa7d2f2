"""`scan`'s fast path (one `os.scandir` walk, used for the default `include="**"`)
gives exactly the entries of the `match.globs` path (`glob("**")`, `os.path.isfile`, one
`lstat` per file), which stays the reference and serves every other `include`.

Compared: every field of every entry (name, kind, mode, size, link name, source path, the
stat facts of the fingerprint and the link count), on random trees with nested and hidden
folders, hidden files, symlinks to files inside, outside and nowhere, symlinked folders
(inside, outside, and one cycle), hardlinks, FIFOs, sockets, empty folders and non-UTF-8
names, with random exclude patterns; then explicit cases."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.cas.tar import scan as scanning
from casstore.cas.store.statcache import listing_key
from casstore.cas.tar.header import FILE, HARDLINK, SYMLINK
from casstore.cas.tar.scan import Entry, _scan_with_globs, check_arc_dir, scan
from casstore.cas.tar.write import tar_bytes
from casstore.errors import InvalidInput, SourceNotFound

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def both(src, arc_dir=".", exclude=None):
    """(fast path, globs path) for the default include."""
    fast = scan(src, arc_dir, "**", exclude)
    reference = _scan_with_globs(src, check_arc_dir(arc_dir), "**", exclude)
    return fast, reference


def assert_same(src, arc_dir=".", exclude=None) -> list[Entry]:
    fast, reference = both(src, arc_dir, exclude)
    assert [tuple(e) for e in fast] == [tuple(e) for e in reference]
    assert [e.fingerprint() for e in fast] == [e.fingerprint() for e in reference]
    for a, b in zip(fast, reference):  # the same files behind the paths
        assert os.path.realpath(a.path) == os.path.realpath(b.path)
    assert tar_bytes(fast) == tar_bytes(reference)
    assert listing_key(arc_dir, fast, "xxh128") == listing_key(arc_dir, reference, "xxh128")
    return fast


def put(path, data: bytes = b"x", mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def names(entries) -> list[bytes]:
    return [e.name for e in entries]


# ---------------------------------------------------------------------------------------
# random trees

SEGMENTS = st.one_of(
    st.lists(st.sampled_from(list("abxyz") + ["-", "_", "*", "?", "[", "]", "!"]), min_size=1, max_size=4)
    .map(lambda cs: "".join(cs).encode()),
    st.sampled_from([b".h", b".hidden", b"..x", b".a.b", b"caf\xe9", b"\xff", b"\x80\xfe", b".\xff", b"sub", b"tmp_1"]),
)
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o4755, 0o2750, 0o1777] + [0o000] * IS_ROOT)
OPS = st.sampled_from(["dir", "dir", "file", "file", "file", "link-file", "link-abs-out", "link-rel-out",
                       "link-dangling", "link-dangling-abs", "link-dir-in", "link-dir-out", "hardlink-in",
                       "hardlink-out", "fifo", "socket", "link-fifo", "hardlinked-symlink", "link-to-link",
                       "link-empty-dir"])
TOKENS = ["*", "*", "?", "a", "b", "x", "/", "**/", ".", "[ab]", "[!a]", "caf", "\udcff", "tmp_", "sub", "-", "["]
PATTERNS = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map("".join)
EXCLUDES = st.one_of(st.none(), PATTERNS, st.lists(PATTERNS, max_size=3))
ARC_DIRS = st.sampled_from([".", "data", "a/b", "./x/", "x/../y"])


def make_outside(outside: bytes) -> dict[str, bytes]:
    """Files and folders outside the tree, for links and hardlinks to point at."""
    os.makedirs(os.path.join(outside, b"odir/inner"))
    put(os.path.join(outside, b"o1"), b"outside one", 0o640)
    put(os.path.join(outside, b"o2"), b"outside two, hardlinked in", 0o600)
    put(os.path.join(outside, b"odir/f"), b"in a linked folder", 0o644)
    put(os.path.join(outside, b"odir/.hid"), b"hidden in a linked folder")
    put(os.path.join(outside, b"odir/inner/g"), b"deeper", 0o755)
    os.symlink(b"f", os.path.join(outside, b"odir/rel-link"))  # relative, stays inside once linked in
    os.symlink(b"../../o1", os.path.join(outside, b"odir/inner/up-link"))
    os.mkfifo(os.path.join(outside, b"ofifo"))
    os.makedirs(os.path.join(outside, b"empty"))
    return {"o1": os.path.join(outside, b"o1"), "o2": os.path.join(outside, b"o2"),
            "odir": os.path.join(outside, b"odir"), "fifo": os.path.join(outside, b"ofifo"),
            "empty": os.path.join(outside, b"empty")}


def build_random_tree(data, root: bytes, outside: bytes) -> None:
    """Draw and run a list of operations, each adding one thing under a random folder.

    Links to folders inside the tree are limited to one per tree (it may be a cycle): with
    two links that lead to each other, glob's walk (and so the fast path) enumerates
    2**40 paths before the kernel's limit of 40 links per path stops it."""
    os.makedirs(root)
    far = make_outside(outside)
    dirs: list[bytes] = [b""]
    files: list[bytes] = []
    links: list[bytes] = []
    dir_link_in_tree = False
    for op in data.draw(st.lists(OPS, min_size=3, max_size=25), label="ops"):
        parent = data.draw(st.sampled_from(dirs), label="parent")
        name = data.draw(SEGMENTS, label="name")
        rel = os.path.join(parent, name) if parent else name
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            continue
        here = os.path.join(root, parent) if parent else root
        if op == "dir":
            os.mkdir(path)
            dirs.append(rel)
        elif op == "file":
            put(path, os.urandom(data.draw(st.integers(0, 1100), label="size")), data.draw(MODES, label="mode"))
            files.append(rel)
        elif op == "link-file" and files:
            target = os.path.join(root, data.draw(st.sampled_from(files), label="target"))
            os.symlink(os.path.relpath(target, here), path)
            links.append(rel)
        elif op == "link-to-link" and links:
            target = os.path.join(root, data.draw(st.sampled_from(links), label="target"))
            os.symlink(os.path.relpath(target, here), path)
        elif op == "link-abs-out":
            os.symlink(far["o1"], path)
        elif op == "link-rel-out":
            os.symlink(os.path.relpath(far["o1"], here), path)
        elif op == "link-dangling":
            os.symlink(b"missing-" + data.draw(SEGMENTS, label="missing"), path)
        elif op == "link-dangling-abs":
            os.symlink(b"/nonexistent/casstore-test/x", path)
        elif op == "link-dir-in" and not dir_link_in_tree:
            target = os.path.join(root, data.draw(st.sampled_from(dirs), label="dir target"))
            os.symlink(os.path.relpath(target, here), path)  # an ancestor: a cycle
            dir_link_in_tree = True
        elif op == "link-dir-out":
            os.symlink(data.draw(st.sampled_from([far["odir"], os.path.relpath(far["odir"], here)])), path)
        elif op == "link-empty-dir":
            os.symlink(far["empty"], path)
        elif op == "hardlink-in" and files:
            os.link(os.path.join(root, data.draw(st.sampled_from(files), label="hardlink of")), path)
            files.append(rel)
        elif op == "hardlink-out":
            os.link(far["o2"], path)
            files.append(rel)
        elif op == "fifo":
            os.mkfifo(path)
        elif op == "socket":
            os.mknod(path, 0o600 | stat.S_IFSOCK)
        elif op == "link-fifo":
            os.symlink(far["fifo"], path)
        elif op == "hardlinked-symlink":
            os.symlink(far["o1"], path)
            second = path + b"-2"
            if not os.path.lexists(second):
                os.link(path, second, follow_symlinks=False)


HSETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])


@HSETTINGS
@given(data=st.data(), exclude=EXCLUDES, arc_dir=ARC_DIRS)
def test_fast_path_gives_the_entries_of_the_globs_path_on_random_trees(data, exclude, arc_dir):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"src")
        build_random_tree(data, root, os.path.join(os.fsencode(tmp), b"outside"))
        src = os.fsdecode(root)
        assert_same(src, arc_dir, exclude)
        assert_same(src + "/", arc_dir, exclude)  # a trailing slash gives the same paths too


# ---------------------------------------------------------------------------------------
# explicit cases


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    outside = tmp_path / "outside"
    put(str(root / "a.txt"), b"alpha", 0o644)
    put(str(root / "sub/b.log"), b"beta", 0o600)
    put(str(root / "sub/deeper/c.txt"), b"c" * 1000, 0o4755)
    put(str(root / ".hidden"), b"h")
    put(str(root / ".git/config"), b"[core]")
    put(str(root / "sub/.env"), b"SECRET=1")
    put(str(root / "tmp_x"), b"t")
    put(str(outside / "o.txt"), b"outside", 0o640)
    put(str(outside / "odir/f"), b"f")
    os.makedirs(root / "empty/deeper")
    os.symlink("a.txt", root / "link-in")
    os.symlink("../a.txt", root / "sub/link-up")
    os.symlink(".hidden", root / "link-to-hidden")
    os.symlink(str(outside / "o.txt"), root / "link-abs-out")
    os.symlink("../outside/o.txt", root / "link-rel-out")
    os.symlink("missing", root / "dangling")
    os.symlink("/nonexistent/x", root / "dangling-abs")
    os.symlink("sub", root / "link-dir")
    os.symlink(str(outside / "odir"), root / "link-dir-out")
    os.symlink(".git", root / "link-to-hidden-dir")
    os.symlink("a.txt", root / ".hidden-link")
    os.mkfifo(root / "fifo")
    os.mknod(root / "socket", 0o600 | stat.S_IFSOCK)
    os.link(root / "a.txt", root / "sub/hard-a")
    os.link(outside / "o.txt", root / "hard-out")
    return root


def test_explicit_tree_same_as_globs_and_what_it_holds(tree):
    entries = {e.name: e for e in assert_same(str(tree))}
    assert sorted(entries) == sorted([
        b"a.txt", b"sub/b.log", b"sub/deeper/c.txt", b"tmp_x", b"link-in", b"sub/link-up", b"link-to-hidden",
        b"link-abs-out", b"link-rel-out", b"link-dir/b.log", b"link-dir/deeper/c.txt", b"link-dir/link-up",
        b"link-dir/hard-a", b"link-dir-out/f", b"link-to-hidden-dir/config", b"sub/hard-a", b"hard-out"])
    assert entries[b"link-in"][:5] == (b"link-in", SYMLINK, 0o777, 0, b"a.txt")
    assert entries[b"link-to-hidden"].kind == SYMLINK
    assert entries[b"link-abs-out"][:5] == (b"link-abs-out", FILE, 0o640, 7, b"")
    assert entries[b"link-rel-out"].kind == FILE
    assert entries[b"sub/deeper/c.txt"].mode == 0o755  # setuid dropped
    assert (entries[b"sub/hard-a"].kind, entries[b"sub/hard-a"].linkname) == (HARDLINK, b"a.txt")
    assert entries[b"a.txt"].nlink == 2 and entries[b"hard-out"].nlink == 2
    assert entries[b"hard-out"].kind == FILE  # its first name inside the tree
    # a symlink "staying inside" through a linked folder is judged on the link's path
    assert entries[b"link-dir/link-up"][:5] == (b"link-dir/link-up", SYMLINK, 0o777, 0, b"../a.txt")


@pytest.mark.parametrize("exclude", [
    "*.log", "**/*.log", "**/tmp_*", "tmp_*", "sub", "sub*", "sub/*", "*", ["*.txt", "link*"], [], "link-dir/*",
    "*/deeper/*", "[al]*", "[!a]*", "?.txt", "a.txt", ["sub/hard-a", "hard-*"],
])
def test_exclude_patterns_act_as_in_the_globs_path(tree, exclude):
    assert_same(str(tree), "data", exclude)


def test_exclude_matches_the_whole_relative_path_with_star_crossing_folders(tree):
    entries = names(scan(str(tree), exclude="*.txt"))
    assert b"a.txt" not in entries and b"sub/deeper/c.txt" not in entries and b"sub/b.log" in entries
    assert b"tmp_x" in names(scan(str(tree), exclude="**/tmp_*"))  # "**/" needs a "/"
    assert b"sub/b.log" in names(scan(str(tree), exclude="sub"))  # a folder's name alone excludes nothing


def test_cycle_of_symlinked_folders_is_followed_as_glob_does(tmp_path):
    root = tmp_path / "src"
    put(str(root / "a/f"), b"f")
    put(str(root / "a/b/g"), b"g")
    os.symlink("..", root / "a/b/up")  # a/b/up -> a: a cycle
    entries = assert_same(str(root))
    deepest = max(e.name.count(b"/") for e in entries)
    assert deepest > 40  # followed until the kernel refuses the path (40 links, ELOOP)
    assert b"a/b/up/b/up/f" in names(entries)


def test_link_to_the_folder_itself(tmp_path):
    root = tmp_path / "src"
    put(str(root / "f"), b"f")
    os.symlink(".", root / "self")
    entries = assert_same(str(root), "data")
    assert b"data/self/self/f" in names(entries)


def test_symlinked_src_dir_and_relative_src_dir(tree, tmp_path, monkeypatch):
    os.symlink(tree, tmp_path / "alias")
    assert_same(str(tmp_path / "alias"))
    monkeypatch.chdir(tmp_path)
    assert_same("src")
    assert_same("./src/")
    monkeypatch.chdir(tree)
    assert_same(".")


def test_non_utf8_names_and_excludes_on_them(tmp_path):
    root = os.fsencode(tmp_path / "src")
    put(os.path.join(root, b"caf\xe9.txt"), b"latin-1")
    put(os.path.join(root, b"\xff\xfe-dir/inner \x80.bin"), bytes(range(256)))
    os.symlink(b"caf\xe9.txt", os.path.join(root, b"l\xe9"))
    src = os.fsdecode(root)
    assert names(assert_same(src)) == [b"caf\xe9.txt", b"l\xe9", b"\xff\xfe-dir/inner \x80.bin"]
    assert names(assert_same(src, exclude="*\udce9*")) == [b"\xff\xfe-dir/inner \x80.bin"]


def test_hardlinked_symlink_stored_as_its_file_turns_into_a_hardlink_member(tmp_path):
    """Two names of one symlink inode (nlink 2) that both lead out: as in the globs path,
    the link count of the listed name decides, so the second becomes a hardlink member."""
    put(str(tmp_path / "outside/o"), b"outside")
    root = tmp_path / "src"
    root.mkdir()
    os.symlink(str(tmp_path / "outside/o"), root / "l1")
    os.link(root / "l1", root / "l2", follow_symlinks=False)
    entries = assert_same(str(root))
    assert [(e.name, e.kind) for e in entries] == [(b"l1", FILE), (b"l2", HARDLINK)]


def test_symlink_to_a_file_outside_that_is_also_inside_is_a_separate_file(tmp_path):
    root = tmp_path / "src"
    put(str(root / "a.txt"), b"a")
    os.link(root / "a.txt", tmp_path / "second-name-outside")  # nlink 2
    os.symlink(str(root / "a.txt"), root / "abs")
    entries = assert_same(str(root))
    assert [(e.name, e.kind) for e in entries] == [(b"a.txt", FILE), (b"abs", FILE)]


_COMPARE = """
import json, sys
from casstore.cas.tar.scan import scan, _scan_with_globs
fast, reference = scan(sys.argv[1]), _scan_with_globs(sys.argv[1], ".")
print(json.dumps({"same": fast == reference, "names": [e.name.decode() for e in fast]}))
"""


def compare_without_privileges(src: str) -> dict:
    """Both paths in a child process for which permission bits apply (for root, setpriv
    drops the capabilities that bypass them, as in test_reliability_faults.py)."""
    prefix: list[str] = []
    if IS_ROOT:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permission bits cannot be enforced")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    proc = subprocess.run([*prefix, sys.executable, "-c", _COMPARE, src], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_unreadable_folders_are_skipped_as_glob_skips_them(tmp_path):
    root = tmp_path / "src"
    put(str(root / "a.txt"), b"a")
    put(str(root / "closed/x"), b"x")
    put(str(root / "listable-only/y"), b"y")
    put(str(root / "listable-only/sub/z"), b"z")
    os.symlink("closed/x", root / "link-through-closed")
    os.symlink("listable-only", root / "link-to-listable")
    os.chmod(root / "closed", 0)
    os.chmod(root / "listable-only", 0o444)  # names can be read, not stat'ed or entered
    try:
        assert compare_without_privileges(str(root)) == {"same": True, "names": ["a.txt"]}
    finally:
        os.chmod(root / "closed", 0o755)
        os.chmod(root / "listable-only", 0o755)


def test_unreadable_src_dir_gives_no_entries_in_both(tmp_path):
    root = tmp_path / "src"
    put(str(root / "a.txt"), b"a")
    os.chmod(root, 0o311)  # can be entered, not listed
    try:
        assert compare_without_privileges(str(root)) == {"same": True, "names": []}
    finally:
        os.chmod(root, 0o755)


def test_tree_deeper_than_the_recursion_limit_is_listed(tmp_path):
    """glob's recursive generators need one Python frame per folder level, so a tree deeper
    than the recursion limit (about 1000 levels by default) raised RecursionError in the
    globs path; the walk keeps a stack and has no such limit. Shown with a lowered limit
    and a tree of 300 levels (a tree over 1000 deep would also break shutil.rmtree)."""
    import inspect

    limit = sys.getrecursionlimit()
    path = str(tmp_path / "src")
    os.mkdir(path)
    for _ in range(300):
        path = os.path.join(path, "d")
        os.mkdir(path)
    put(os.path.join(path, "f"), b"deep")
    sys.setrecursionlimit(len(inspect.stack()) + 150)
    try:
        [entry] = scan(str(tmp_path / "src"))
        with pytest.raises(RecursionError):
            _scan_with_globs(str(tmp_path / "src"), ".")
    finally:
        sys.setrecursionlimit(limit)
    assert entry.name == b"d/" * 300 + b"f" and entry.size == 4


def test_errors_are_the_same_as_the_globs_path(tmp_path):
    put(str(tmp_path / "file"), b"x")
    for exclude in (5, [1], {"a": 1}):
        with pytest.raises(InvalidInput):
            scan(str(tmp_path), exclude=exclude)
        with pytest.raises(InvalidInput):
            _scan_with_globs(str(tmp_path), ".", "**", exclude)
    for make in (scan, lambda s: _scan_with_globs(s, ".")):
        with pytest.raises(SourceNotFound):
            make(str(tmp_path / "missing"))
        with pytest.raises(InvalidInput):
            make(str(tmp_path / "file"))
    with pytest.raises(InvalidInput):
        scan(str(tmp_path), "../up")


def test_default_include_spellings_take_the_fast_path_and_others_the_globs_path(tree, monkeypatch):
    calls = []
    real = scanning._walk
    monkeypatch.setattr(scanning, "_walk", lambda *a: calls.append(1) or real(*a))
    expected = scan(str(tree))
    for include in ("**", ["**"], ("**",)):
        assert scan(str(tree), ".", include) == expected
    assert len(calls) == 4
    with_hidden = scan(str(tree), ".", ["**", ".*", "**/.*", ".*/**"])
    assert len(calls) == 4
    assert b".hidden" in names(with_hidden) and b".hidden" not in names(expected)


def test_pathlike_src_dir(tree):
    assert scan(tree) == scan(str(tree))


def test_bytes_src_dir_still_goes_through_globs(tree, tmp_path):
    """Not supported (ArchiveStore refuses it), and unchanged: whatever globs made of it."""
    def outcome(f, src):
        try:
            return f(src, "data")
        except Exception as exc:  # noqa: BLE001
            return type(exc)

    plain = tmp_path / "plain"
    put(str(plain / "sub/a"), b"a")
    for src in (os.fsencode(tree), os.fsencode(plain)):
        assert outcome(scan, src) == outcome(_scan_with_globs, src)


def test_entry_keeps_its_api():
    e = Entry(b"n", FILE, 0o644, 5, b"", "/p", 1, 2, 3, 4)
    assert (e.name, e.kind, e.mode, e.size, e.linkname, e.path) == (b"n", FILE, 0o644, 5, b"", "/p")
    assert (e.mtime_ns, e.ctime_ns, e.ino, e.dev, e.nlink) == (1, 2, 3, 4, 1)
    assert e.fingerprint() == (b"n", FILE, 0o644, 5, b"", 1, 2, 3, 4)
    assert Entry(b"n", SYMLINK, 0o777).size == 0 and Entry(b"n", SYMLINK, 0o777).linkname == b""
    assert e._replace(kind=HARDLINK, size=0).fingerprint()[1:4] == (HARDLINK, 0o644, 0)
    with pytest.raises(AttributeError):
        e.size = 6  # immutable, as the frozen dataclass was


# ---------------------------------------------------------------------------------------
# the stat cache key


def test_listing_key_changes_with_every_fingerprint_fact_and_nothing_else():
    base = Entry(b"data/a", FILE, 0o644, 5, b"", "/src/a", 10, 20, 30, 40, 1)
    key = listing_key("data", [base], "xxh128")
    assert listing_key("data", [base], "xxh128") == key
    assert listing_key("data", [base._replace(path="/elsewhere", nlink=3)], "xxh128") == key
    changed = [base._replace(name=b"data/b"), base._replace(kind=SYMLINK), base._replace(mode=0o600),
               base._replace(size=6), base._replace(linkname=b"x"), base._replace(mtime_ns=11),
               base._replace(ctime_ns=21), base._replace(ino=31), base._replace(dev=41)]
    keys = {listing_key("data", [e], "xxh128") for e in changed}
    assert len(keys) == len(changed) and key not in keys
    assert listing_key("other", [base], "xxh128") != key
    assert listing_key("data", [base], "sha256") != key
    assert listing_key("data", [], "xxh128") != key


def test_listing_key_takes_values_out_of_the_packed_range():
    """An mtime after 2262 does not fit 64 signed bits of nanoseconds: still a key, and
    still a different one per value."""
    far = Entry(b"a", FILE, 0o644, 5, b"", "/a", 2**63 + 5, 0, 1, 2)
    keys = {listing_key(".", [far._replace(mtime_ns=t)], "xxh128") for t in (2**63, 2**63 + 1, 2**64 + 7)}
    assert len(keys) == 3
    assert listing_key(".", [far._replace(mtime_ns=5)], "xxh128") not in keys


def test_listing_key_separates_name_and_link_target():
    a = Entry(b"ab", SYMLINK, 0o777, 0, b"c")
    b = Entry(b"a", SYMLINK, 0o777, 0, b"bc")
    assert listing_key(".", [a], "xxh128") != listing_key(".", [b], "xxh128")
