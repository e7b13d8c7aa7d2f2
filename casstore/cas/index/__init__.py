"""The SQL index: engines, models, schema, and the queries casstore runs."""
