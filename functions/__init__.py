"""The stage functions (prepare, render, …), their model backends, and the routing table."""
