"""Results: the metric registry, typed point rows, the run store (atomic, resumable), manifests, merging."""
