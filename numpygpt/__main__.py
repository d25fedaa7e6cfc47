"""python -m numpygpt: the same as the `numpygpt` command."""
import sys

from .cli import main

sys.exit(main())
