"""`python -m functions.webhook`: run the webhook stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["webhook"])
