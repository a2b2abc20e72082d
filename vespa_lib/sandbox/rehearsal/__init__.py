"""A school year rehearsed night by night on a production-shaped PostgreSQL (``make rehearse-year``).

Modules: ``world`` (Knack's state), ``changes`` (one day of change), ``calendar`` (the nights),
``setup`` (world and database on the import night), ``ops`` (``vespa-ops`` runs), ``night`` (the
night loop), ``invariants`` (the rehearsal's own SQL checks), ``report`` (chart and HTML),
``__main__`` (the command).
"""
