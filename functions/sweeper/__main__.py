"""`python -m functions.sweeper`: run the sweeper stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["sweeper"])
