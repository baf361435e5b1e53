"""memecap: fine-tune image captioners to write detailed Russian descriptions of memes."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use: `import memecap` stays light (no torch) for the CLI's config commands.
    if name == "Captioner":
        from memecap.inference.captioner import Captioner

        return Captioner
    raise AttributeError(f"module 'memecap' has no attribute {name!r}")


__all__ = ["Captioner"]
