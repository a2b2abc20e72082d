"""The runbook engine and its evidence: papermill runs, `vespa-ops`, manifests, reports, privacy."""
