"""`python -m functions.chain`: run the chain stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["chain"])
