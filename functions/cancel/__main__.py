"""`python -m functions.cancel`: run the cancel stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["cancel"])
