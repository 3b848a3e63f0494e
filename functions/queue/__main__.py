"""`python -m functions.queue`: run the queue-position tracker as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["queue"])
