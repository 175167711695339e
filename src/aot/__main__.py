"""`python -m aot <command> ...`; see aot.cli."""

from .cli import main

if __name__ == "__main__":
    main()
