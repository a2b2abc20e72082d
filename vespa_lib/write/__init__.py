"""The guarded write path: SQL and COPY helpers, schema, migrations, plans, the guard, protection."""
