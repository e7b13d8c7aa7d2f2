"""casstore's version, in a module of its own so that any module may import it without
importing the package root (which imports the whole user API)."""

__version__ = "0.2.0"
