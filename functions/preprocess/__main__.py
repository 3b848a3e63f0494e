"""`python -m functions.preprocess`: run the preprocess stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["preprocess"])
