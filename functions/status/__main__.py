"""`python -m functions.status`: run the status responder as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["status"])
