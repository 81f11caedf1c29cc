"""``python -m starqso``: the command line, as the ``starqso`` command runs it."""

from starqso.cli import main

if __name__ == "__main__":
    main()
