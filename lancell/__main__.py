"""``python -m lancell``: the ``lancell`` command (:func:`lancell.cli.main`)."""

from lancell.cli import main

raise SystemExit(main())
