"""Captioning with an exported model: the Python `Captioner`, `memecap caption` over a folder,
and `memecap eval` on a table."""
