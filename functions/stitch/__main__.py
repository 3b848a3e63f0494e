"""`python -m functions.stitch`: run the stitch stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["stitch"])
