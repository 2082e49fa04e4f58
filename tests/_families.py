"""The built-in learnable families, read from the records (a test's toy family is not among them)."""

from lit_ortho.activations import FAMILIES

BUILTIN_FAMILIES = tuple(name for name, record in FAMILIES.items() if record.eager.__module__.startswith("lit_ortho."))
