"""Pydantic models at every boundary of videostudio: briefs, events, manifests, webhooks.

This package imports nothing else from the project; everything else imports it.
"""

SCHEMA_VERSION = 2  # 2: `request` is the brief alone; stage records carry a typed `handoff`
