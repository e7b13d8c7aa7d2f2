"""Everything that knows MLtraq: the DataPak codec, legacy TARs, migration.

Nothing here imports MLtraq at import time: `import casstore` stays light."""
