"""The `numpygpt` command (main.py) and its subcommands, one file each; nothing in the library
imports from here."""
from .commands import main
