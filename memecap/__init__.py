"""memecap: fine-tune image captioners to write detailed Russian descriptions of memes."""

__version__ = "0.1.0"
