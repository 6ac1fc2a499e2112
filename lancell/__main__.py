"""``python -m lancell``: the ``lancell`` command (:func:`lancell.cli.main`)."""

from lancell.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
