"""spoold: a directory that behaves as a crash-safe batch LLM inference queue."""

__version__ = "0.1.0"
