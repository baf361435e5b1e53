"""Files memecap writes for the user: JSON-safe file names, refusing JSON Lines it did not write,
one-line messages for disk errors, messages without secrets or raw control characters."""
