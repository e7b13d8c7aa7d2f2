"""`python -m casstore.cli`."""

from casstore.cli import main

main()
