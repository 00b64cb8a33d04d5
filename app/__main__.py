"""``python -m app``: the ``renum`` command without its console script (``python -m app serve``),
for process wrappers that start a module."""

from app.cli import main

if __name__ == "__main__":
    main()
