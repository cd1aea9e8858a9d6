"""Model backends used by the stages."""
