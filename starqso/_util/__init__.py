"""Plumbing every command shares: the one atomic writer, locks, optional extras, strict
JSON, output-folder ownership and the output-among-inputs checks. No TensorFlow."""
