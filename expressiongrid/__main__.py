"""`python -m expressiongrid` (also what `accelerate launch -m expressiongrid` runs)."""

from expressiongrid.cli import main

if __name__ == "__main__":
    main()
