"""Pydantic models at every boundary of videostudio: briefs, events, manifests, webhooks.

This package imports nothing else from the project; everything else imports it.
"""

SCHEMA_VERSION = 1
