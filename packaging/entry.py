"""The frozen binary's entry point: the same as the ``arrowport`` console script."""

from arrowport.cli import main

main()
