"""`python -m functions.planner`: run the planner stage as its own process."""

from runtime.service import main

if __name__ == "__main__":
    main(["planner"])
