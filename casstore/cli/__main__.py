"""`python -m casstore.cli`."""

from casstore.cli.app import main

main()
