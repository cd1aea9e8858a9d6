"""Everything around a stage: storage, queue, manifests, job state, webhooks, video I/O, settings.

`core` imports `schemas` only; it never imports `functions` or `triggers`.
"""
