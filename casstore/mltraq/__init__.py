"""Everything that knows MLtraq: the DataPak codec (datapak.py), how runs are named
(runs.py), legacy TARs (legacy.py), and the migration of a project (migrate/).

Nothing here imports MLtraq at import time: `import casstore` stays light."""
