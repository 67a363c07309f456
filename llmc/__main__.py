"""`python -m llmc`: the same command line as the `llmc` script."""

from llmc.cli import main

if __name__ == "__main__":
    main()
