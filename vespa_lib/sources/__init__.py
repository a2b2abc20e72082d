"""Reading inputs and targets: snapshots, the Knack API, DuckDB / PostgreSQL / Supabase REST."""
