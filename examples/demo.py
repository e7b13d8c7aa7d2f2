"""casstore demo: two experiments attach the same folder; the datastore keeps it once.

Run from anywhere: `python examples/demo.py [WORKDIR]` (default: a new temp folder)."""

from __future__ import annotations

import os
import sys
import tempfile

from casstore import ArchiveStore, create_session, options
from casstore.cas.stats import project_stats


def make_dataset(path: str) -> None:
    os.makedirs(os.path.join(path, "images"), exist_ok=True)
    with open(os.path.join(path, "train.csv"), "w") as f:
        f.writelines(f"{i},{i * i % 97},{'cat' if i % 3 else 'dog'}\n" for i in range(200_000))
    for i in range(20):
        with open(os.path.join(path, "images", f"img_{i:03d}.bin"), "wb") as f:
            f.write(os.urandom(256 * 1024))


def main(workdir: str) -> None:
    os.chdir(workdir)
    make_dataset("datasets")
    print(f"working in {workdir}; dataset: 'datasets' (one CSV, 20 binary files)")

    session = create_session("sqlite:///runs.db")
    first = session.create_experiment("baseline", lr=0.1)
    first.fields.data = ArchiveStore(src_dir="datasets", arc_dir="data")
    first.persist()
    print(f"persisted 'baseline'      -> blob {first.fields.data.blob_id}")

    second = session.create_experiment("rerun", lr=0.01, data=ArchiveStore(src_dir="datasets", arc_dir="data"))
    second.persist()
    print(f"persisted 'rerun'         -> blob {second.fields.data.blob_id} (same folder: no new blob)")

    with options().ctx({"archivestore.codec": "zstd"}):
        third = session.create_experiment("compressed", data=ArchiveStore(src_dir="datasets", arc_dir="data"))
        third.persist()
    print(f"persisted 'compressed'    -> blob {third.fields.data.blob_id} (zstd on: same id, already stored)")

    stats = project_stats(session.index, session.content_store())  # what `casstore stats` reports
    print(f"datastore: {stats.blobs} blob(s), {stats.stored_bytes / 1e6:.1f} MB stored for "
          f"{stats.logical_bytes / 1e6:.1f} MB of archives (dedup ratio {stats.dedup_ratio:.1f}x)")

    loaded = session.load_experiment("rerun")
    target = loaded.fields.data.get_target()
    files = sorted(os.path.relpath(os.path.join(d, f), target) for d, _, fs in os.walk(target) for f in fs)
    print(f"loaded 'rerun' into {target}: {len(files)} files, e.g. {files[0]}, {files[-1]}")

    report = session.verify(deep=True)
    print(f"verify --deep: {report.blobs_checked} blob(s) checked, {len(report.problems)} problem(s)")
    casstore = os.path.join(os.path.dirname(sys.executable), "casstore")
    print(f"try: {casstore} stats --db sqlite:///{os.path.abspath('runs.db')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="casstore-demo-"))
