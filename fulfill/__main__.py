"""``python -m fulfill`` is the same as the ``fulfill`` command."""

from fulfill.cli import main

if __name__ == "__main__":
    main()
