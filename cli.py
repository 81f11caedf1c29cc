"""Run the starqso command line from a source checkout: ``python cli.py --help``."""
from starqso.cli import main

if __name__ == "__main__":
    main()
