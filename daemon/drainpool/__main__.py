"""`python -m drainpool ...` is the same as the `drainpool` command."""

from drainpool.cli import main

main()
