"""jaxalign."""
