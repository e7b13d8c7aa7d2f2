from os import mkdir

import pandas as pd

from casstore.opts import options
from casstore.storage.archivestore import ArchiveStoreIO
from casstore.utils.fs import glob, tmpdir_ctx

with tmpdir_ctx():
    mkdir("datasets")
    pd.Series([1, 2, 3]).to_csv("datasets/first.csv")
    pd.Series([4, 5, 6]).to_csv("datasets/second.csv")

    with options().ctx({"datastore.relative_path_prefix": "archives",
                        "archivestore.relative_path_prefix": "all"}):
        # Create an archive and extract it
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        archive.extract()

    print("Contents of current directory:")
    for idx, name in enumerate(glob("**", root_dir=".", recursive=True)):
        print(f"[{idx:2d}] {name}")
