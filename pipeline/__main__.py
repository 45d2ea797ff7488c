import sys

from pipeline.cli_fast import main

if __name__ == "__main__":
    sys.exit(main())
