"""qalign-dsl: a declarative rubric language and compiler for aligning language models."""

__version__ = "0.1.0"
